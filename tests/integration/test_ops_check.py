"""`zai-proxy check` against running parts: a simulated upstream, a production and a
canary proxy in front of it, and a dashboard scraping them, all on 127.0.0.1 port 0.

The command runs as an operator runs it (`cli.main`, its own `trio.run`), in a worker
thread while the servers run in the test's loop."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import UPSTREAM_KEY, ProxyHandle, StartProxy, StartUpstream
from zai_proxy.cli import main
from zai_proxy.dashboard.server import RunningDashboard, serve_dashboard
from zai_proxy.ops.check import run_checks
from zai_proxy.settings import DashboardSettings
from zai_proxy.sim.upstream import Fault

CHECKS = ["health", "messages", "stream", "x-token-input", "metrics", "limiter", "dashboard"]


async def start_dashboard(
    nursery: trio.Nursery, tmp_path: Path, *proxies: ProxyHandle
) -> RunningDashboard:
    settings = DashboardSettings(
        scrape_targets=tuple(f"{p.origin}/metrics" for p in proxies),
        # Slow enough that a busy machine does not make a snapshot stale between scrapes.
        scrape_interval=0.5,
        scrape_timeout=0.4,
        listen_host="127.0.0.1",
        listen_port=0,
        db_path=str(tmp_path / "dashboard.db"),
    )
    running: RunningDashboard = await nursery.start(serve_dashboard, settings, trio.Event())
    return running


async def wait_for_variants(dashboard: RunningDashboard, *variants: str) -> None:
    """Until /api/status holds a fresh snapshot of each variant."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        with trio.fail_after(10):
            while True:
                seen = (await client.get(dashboard.url + "/api/status")).json()["variants"]
                if all(seen.get(v, {}).get("snapshot") and not seen[v]["stale"] for v in variants):
                    return
                await trio.sleep(0.05)


async def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with trio.fail_after(30):
        code = await trio.to_thread.run_sync(main, ["check", *argv])
    out = capsys.readouterr().out
    assert UPSTREAM_KEY not in out
    return code, out


async def test_check_passes_on_healthy_proxies_and_a_dashboard_seeing_both(
    nursery: trio.Nursery,
    start_proxy: StartProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    production = await start_proxy()
    canary = await start_proxy(DEPLOYMENT_VARIANT="canary")
    dashboard = await start_dashboard(nursery, tmp_path, production, canary)
    await wait_for_variants(dashboard, "production", "canary")

    code, out = await check(capsys, canary.url, "--dashboard", dashboard.url)

    lines = out.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == CHECKS
    assert all(line.startswith("ok ") for line in lines[:-1]), out
    assert lines[-1] == f"{len(CHECKS)} of {len(CHECKS)} checks passed"
    assert "variant canary" in lines[0]
    assert code == 0
    # The requests were real: the upstream answered both, through the canary.
    assert (
        canary.sample(
            "zai_proxy_requests_total", method="POST", path="/v1/messages", status_code="200"
        )
        == 2
    )


async def test_a_broken_upstream_fails_the_request_checks_and_exits_1(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = await start_upstream(fault_rate=1.0, fault_mix=((Fault.status(500), 1.0),))
    proxy = await start_proxy(broken)

    code, out = await check(capsys, proxy.url, "--json")

    report = json.loads(out)
    verdicts = {c["name"]: c for c in report["checks"]}
    assert code == 1 and report["ok"] is False
    assert verdicts["health"]["ok"] is True
    for name in ("messages", "stream"):
        assert verdicts[name]["ok"] is False
        assert verdicts[name]["detail"].startswith("HTTP 500"), verdicts[name]


async def test_a_dashboard_that_sees_one_variant_fails_the_dashboard_check(
    nursery: trio.Nursery,
    start_proxy: StartProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    production = await start_proxy()
    dashboard = await start_dashboard(nursery, tmp_path, production)
    await wait_for_variants(dashboard, "production")

    code, out = await check(capsys, production.url, "--dashboard", dashboard.url)

    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1, out
    assert failed[0].split()[1] == "dashboard"
    assert "canary not seen" in failed[0]
    assert out.splitlines()[-1] == f"{len(CHECKS) - 1} of {len(CHECKS)} checks passed"


async def test_an_unreachable_proxy_fails_every_check_quickly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A port nobody listens on: bound, then closed.
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(10):
        code, out = await check(capsys, f"http://127.0.0.1:{port}/api/anthropic", "--timeout", "2")
    assert code == 1
    assert out.splitlines()[0].startswith("FAIL  health          ConnectError")


async def test_openai_requests_are_checked_on_request(proxy: ProxyHandle) -> None:
    checks = {c.name: c for c in await run_checks(proxy.url, model="glm-4.6", openai=True)}
    assert checks["openai"].ok, checks["openai"]
    assert checks["openai-stream"].ok, checks["openai-stream"]
    assert (
        proxy.sample(
            "zai_proxy_requests_total",
            method="POST",
            path="/v1/chat/completions",
            status_code="200",
        )
        == 2
    )


def test_bad_arguments_exit_2_with_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check", "not-a-url"])
    assert exited.value.code == 2
    assert "'not-a-url' is not an http:// or https:// URL" in capsys.readouterr().err
