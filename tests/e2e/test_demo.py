"""`zai-proxy demo` as a user runs it: a subprocess, its dashboard's API, its exit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from tests.conftest import require_tool

DURATION = 25.0
PORTS = ["--dashboard-port", "0", "--proxy-port", "0", "--canary-port", "0"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ZAI_API_KEY", None)  # with a key the demo would go to the real API
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Demo:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.dashboard: str | None = None
        self.seen_dashboard = trio.Event()
        self.seen_canary = trio.Event()  # the last of the machine-readable lines

    async def pump_stdout(self) -> None:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self.stdout += chunk
            match = re.search(rb"^dashboard: (http://\S+)$", bytes(self.stdout), re.M)
            if match and self.dashboard is None:
                self.dashboard = match.group(1).decode()
                self.seen_dashboard.set()
            if re.search(rb"^canary: \S+$", bytes(self.stdout), re.M):
                self.seen_canary.set()

    async def pump_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk


@asynccontextmanager
async def _demo(*extra: str, new_session: bool = False) -> AsyncIterator[Demo]:
    """The demo in a subprocess (in a session of its own, as a terminal would run it,
    with `new_session`); killed if the test leaves early."""
    async with trio.open_nursery() as nursery:
        demo = await _start(nursery, *extra, new_session=new_session)
        try:
            yield demo
        finally:
            if demo.process.returncode is None:
                demo.process.kill()
                with trio.move_on_after(5, shield=True):
                    await demo.process.wait()


async def _start(nursery: trio.Nursery, *extra: str, new_session: bool = False) -> Demo:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "zai_proxy", "demo", *PORTS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        start_new_session=new_session,
    )
    demo = Demo(process)
    nursery.start_soon(demo.pump_stdout)
    nursery.start_soon(demo.pump_stderr)
    try:
        with trio.fail_after(15):
            await demo.seen_dashboard.wait()
    except BaseException:
        process.kill()
        raise
    return demo


def _total(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(row.get(key) or 0.0) for row in rows)


def _satisfied(rows: list[dict[str, Any]]) -> list[str]:
    """What is still missing from the dashboard's history (empty: all there)."""
    missing: list[str] = []
    for variant in ("production", "canary"):
        if not any((r.get("req_rate") or 0) > 0 for r in rows if r["variant"] == variant):
            missing.append(f"req_rate of {variant}")
    if _total(rows, "rate_limit_adj_decrease") + _total(rows, "rate_limit_adj_increase") <= 0:
        missing.append("a limiter adjustment")
    for key in ("tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write"):
        if _total(rows, key) <= 0:
            missing.append(key)
    return missing


async def test_demo_shows_everything_and_exits_by_itself() -> None:
    started = trio.current_time()
    async with _demo("--duration", str(DURATION), "--agents", "12", "--hidden-limit", "4") as demo:
        assert demo.dashboard is not None
        missing: list[str] = ["nothing fetched yet"]
        async with httpx.AsyncClient(base_url=demo.dashboard, trust_env=False) as client:
            # Everything should show within the run; stop looking 3 s before it ends.
            while missing and trio.current_time() - started < DURATION - 3:
                await trio.sleep(1)
                response = await client.get("/api/metrics", params={"range": "5m"})
                assert response.status_code == 200
                missing = _satisfied(response.json())
            status = (await client.get("/api/status")).json()
        assert not missing, f"not on the dashboard: {missing}"
        assert {"production", "canary"} <= set(status["variants"])

        with trio.fail_after(DURATION + 15 - (trio.current_time() - started)):
            code = await demo.process.wait()
    assert code == 0, demo.stderr.decode(errors="replace")[-3000:]
    assert b"Traceback" not in demo.stderr, demo.stderr.decode(errors="replace")[-3000:]
    assert b"demo stopped" in demo.stdout


async def test_sigint_stops_the_demo_cleanly() -> None:
    async with _demo("--agents", "6") as demo:
        assert demo.dashboard is not None
        async with httpx.AsyncClient(base_url=demo.dashboard, trust_env=False) as client:
            assert (await client.get("/healthz")).status_code == 200
        await trio.sleep(2)  # let the agents get requests in flight
        demo.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            code = await demo.process.wait()
    assert code == 0, demo.stderr.decode(errors="replace")[-3000:]
    assert b"Traceback" not in demo.stderr, demo.stderr.decode(errors="replace")[-3000:]
    assert b"demo stopped" in demo.stdout


async def _pong(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    async with stream:
        await stream.send_all(b"PING\r\n")
        return (await stream.receive_some(64)).startswith(b"+PONG")


def _redis_pid(stderr: bytes) -> int | None:
    """The demo's redis-server, from its log line (to clean up after a failed test)."""
    for line in stderr.splitlines():
        if b"shared limiter" in line:
            pid: int = json.loads(line)["pid"]
            return pid
    return None


async def test_ctrl_c_leaves_the_shared_limiter_up_until_the_replicas_have_drained() -> None:
    """A terminal's Ctrl-C signals the demo's whole process group; its redis-server, in a
    session of its own, outlives the proxies' drain and is then stopped by the demo."""
    require_tool("redis-server")
    async with _demo("--replicas", "2", "--no-agents", new_session=True) as demo:
        try:
            with trio.fail_after(5):
                await demo.seen_canary.wait()
            out = bytes(demo.stdout)
            limiter = re.search(rb"^limiter: redis://127\.0\.0\.1:(\d+)/0$", out, re.M)
            production = re.search(rb"^production: (\S+)$", out, re.M)
            assert limiter is not None and production is not None, out.decode()
            port = int(limiter.group(1))
            assert await _pong(port)
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                # A stream in flight (the simulator takes most of a second) keeps the
                # proxy draining after the signal.
                async with client.stream(
                    "POST",
                    production.group(1).decode() + "/v1/messages",
                    json={
                        "model": "glm-4.6",
                        "max_tokens": 64,
                        "stream": True,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                ) as response:
                    assert response.status_code == 200
                    lines = response.aiter_lines()
                    await lines.__anext__()
                    os.killpg(demo.process.pid, signal.SIGINT)
                    rest = [line async for line in lines]
            assert "event: message_stop" in rest
            with trio.fail_after(15):
                code = await demo.process.wait()
        finally:
            pid = _redis_pid(bytes(demo.stderr))
            if pid is not None and demo.process.returncode != 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert code == 0, demo.stderr.decode(errors="replace")[-3000:]
    assert b"Traceback" not in demo.stderr, demo.stderr.decode(errors="replace")[-3000:]
    assert b"exited on its own" not in demo.stderr, demo.stderr.decode(errors="replace")[-3000:]
    assert b"demo stopped" in demo.stdout
    assert not await _pong(port)


async def _tool(*args: str) -> tuple[int, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "zai_proxy", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=_env(),
    )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


async def test_the_operator_tools_run_against_the_demos_proxies() -> None:
    """What an SRE runs after a deploy, against `zai-proxy demo` as a user starts it."""
    async with _demo("--no-agents") as demo:
        with trio.fail_after(10):
            await demo.seen_canary.wait()
        out = bytes(demo.stdout).decode()
        production = re.search(r"^production: (\S+)$", out, re.M)
        canary = re.search(r"^canary: (\S+)$", out, re.M)
        assert production is not None and canary is not None and demo.dashboard, out
        with trio.fail_after(90):
            # The dashboard needs a scrape of each variant before check can see both.
            code, text = await _tool("check", production.group(1), "--dashboard", demo.dashboard)
            for _ in range(10):
                if code == 0 or "dashboard" not in text:
                    break
                await trio.sleep(1)
                code, text = await _tool(
                    "check", production.group(1), "--dashboard", demo.dashboard
                )
            assert code == 0, text
            assert re.search(r"^ok +x-token-input", text, re.M), text
            assert re.search(r"^ok +dashboard +production fresh.*canary fresh", text, re.M), text

            code, text = await _tool(
                "loadtest", production.group(1), "--compare", canary.group(1),
                "--agents", "3", "--requests", "6",
            )  # fmt: skip
            # The demo's simulator draws faults at random: GO or NO-GO, but a verdict.
            assert code in (0, 1), text
            assert re.search(r"^verdict: (GO|NO-GO)$", text, re.M), text
            assert "p95" in text, text

            code, text = await _tool("evaluate", production.group(1))
            assert code == 0, text
            for kind in ("text", "code", "cjk", "tool"):
                assert re.search(rf"^\s*{kind}", text, re.M | re.I), text
