"""`zai-proxy loadtest` against proxies in front of simulated upstreams on 127.0.0.1
port 0: the table's figures cross-checked with what the upstream saw, and the canary's
go/no-go (a sound canary is GO, one whose upstream fails half its requests is NO-GO).

The command runs as an operator runs it (`cli.main`, its own `trio.run`), in a worker
thread while the servers run in the test's loop."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.conftest import UPSTREAM_KEY, StartProxy, StartUpstream
from zai_proxy.cli import main
from zai_proxy.ops.loadtest import run_load
from zai_proxy.sim.upstream import Fault


async def loadtest(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        code = await trio.to_thread.run_sync(main, ["loadtest", *argv])
    captured = capsys.readouterr()
    assert UPSTREAM_KEY not in captured.out + captured.err
    return code, captured.out, captured.err


async def test_a_canary_like_production_is_go(
    start_upstream: StartUpstream, start_proxy: StartProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    # Latency well above a busy machine's jitter, so the p95 ratio judges the code.
    upstream = await start_upstream(latency=0.3)
    # Room to spare: a worker slot is freed a moment after its answer ends, and on a busy
    # machine an agent's next request can find all MAX_WORKERS still held (a 503).
    production = await start_proxy(upstream, MAX_WORKERS="32")
    canary = await start_proxy(upstream, DEPLOYMENT_VARIANT="canary", MAX_WORKERS="32")

    code, out, err = await loadtest(
        capsys,
        production.url,
        "--compare",
        canary.url,
        "--agents",
        "8",
        "--requests",
        "48",
        "--json",
    )

    report: dict[str, Any] = json.loads(out)
    assert report["verdict"]["go"] is True, report["verdict"]
    assert code == 0
    for side in ("production", "canary"):
        assert report[side]["requests"] == 48
        assert report[side]["statuses"] == {"200": 48}
        assert report[side]["latency_p50"] >= 0.3
    assert upstream.total_requests == 96
    assert err == ""  # no progress line: stderr is not a terminal and --progress not given
    tokens = next(c for c in report["verdict"]["criteria"] if c["name"] == "token counts")
    assert tokens["ok"] and tokens["detail"].startswith("X-Token-Input apart by 0.0 %")


async def test_a_canary_failing_half_its_requests_is_no_go(
    start_upstream: StartUpstream, start_proxy: StartProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    production = await start_proxy(await start_upstream(latency=0.02))
    faulty = await start_upstream(
        latency=0.02, fault_rate=0.5, fault_mix=((Fault.status(500), 1.0),)
    )
    canary = await start_proxy(faulty, DEPLOYMENT_VARIANT="canary")

    code, out, _ = await loadtest(
        capsys, production.url, "--compare", canary.url, "--agents", "4", "--requests", "40"
    )

    assert code == 1
    assert "verdict: NO-GO" in out
    failed = {line.split("  ")[2].strip() for line in out.splitlines() if line.startswith("  FAIL")}
    assert {"error rate", "errors vs production"} <= failed
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["500"][0] == "0" and int(rows["500"][1]) == faulty.status_counts[500] > 0


async def test_the_table_counts_what_the_upstream_saw_429s_and_retries_included(
    start_upstream: StartUpstream, start_proxy: StartProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = await start_upstream(
        latency=0.02, hidden_limit=10.0, hidden_limit_burst=1.0, retry_after_share=1.0
    )
    # No retries in the proxy: each upstream 429 reaches the load test.
    proxy = await start_proxy(upstream, MAX_RETRIES="0")

    code, out, err = await loadtest(
        capsys, proxy.url, "--agents", "3", "--requests", "15", "--progress", "--json"
    )

    s = json.loads(out)["target"]
    assert code == 0
    assert s["requests"] == upstream.total_requests == 15
    assert s["rate_limited"] == s["statuses"]["429"] == upstream.status_counts[429] > 0
    assert s["statuses"]["200"] == upstream.status_counts[200]
    # Each 429 was sent again (as long as the budget allowed).
    assert 0 < s["retries"] <= s["rate_limited"]
    assert s["errors"] == 0 and s["proxy_retries"] == 0
    assert s["tokens_per_s"] > 0 and s["latency_p99"] >= s["latency_p50"] > 0
    assert "\r" in err and "15 sent" in err and "in flight" in err


async def test_a_run_for_a_duration_stops_sending_when_it_is_over(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(await start_upstream(latency=0.05))
    with trio.fail_after(10):
        result = await run_load(proxy.url, agents=2, duration=1.0)
    assert len(result.samples) > 4
    assert 1.0 <= result.elapsed < 2.0
    summary = result.summary()
    assert summary.statuses == {"200": len(result.samples)}
    streams = [s for s in result.samples if s.stream]
    assert streams and all(s.ttft is not None and s.ttft <= s.latency for s in streams)


def test_bad_arguments_exit_2_with_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["loadtest", "http://127.0.0.1:1", "--agents", "0"])
    assert exited.value.code == 2
    assert "argument --agents: '0' must be above 0" in capsys.readouterr().err
