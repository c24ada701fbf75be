"""`zai-proxy demo` with ZAI_API_KEY set: proxies and dashboard only, to ZAI_TARGET_URL."""

from __future__ import annotations

import re

import httpx
import pytest
import trio

from zai_proxy.cli import build_parser
from zai_proxy.demo import run_demo
from zai_proxy.sim.upstream import SimUpstream, UpstreamConfig

KEY = "sk-zai-demo-real-mode-test"


async def test_with_a_key_the_demo_runs_no_simulator_and_no_agents(
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = SimUpstream(UpstreamConfig(api_key=KEY))
    args = build_parser().parse_args(
        ["demo", "--dashboard-port", "0", "--proxy-port", "0", "--canary-port", "0"]
        + ["--duration", "3"]
    )
    env = {"ZAI_API_KEY": KEY}
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        env["ZAI_TARGET_URL"] = upstream.url
        done = trio.Event()

        async def demo() -> None:
            await run_demo(args, env)
            done.set()

        nursery.start_soon(demo)
        out = ""
        with trio.fail_after(10):
            while "canary: " not in out:
                await trio.sleep(0.05)
                out += capsys.readouterr().out
        assert "ZAI_API_KEY is set" in out
        assert "simulated upstream:" not in out
        assert "simulated agents:" not in out
        match = re.search(r"^production: (\S+)$", out, re.M)
        assert match is not None
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(
                match.group(1) + "/v1/messages",
                json={
                    "model": "glm-4.6",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"x-api-key": "anything"},
            )
        assert response.status_code == 200
        with trio.fail_after(15):
            await done.wait()
        # Only our request reached the upstream: no agents ran.
        assert upstream.total_requests == 1
        nursery.cancel_scope.cancel()
