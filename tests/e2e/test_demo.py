"""`zai-proxy demo` as a user runs it: a subprocess, its dashboard's API, its exit."""

from __future__ import annotations

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

    async def pump_stdout(self) -> None:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self.stdout += chunk
            match = re.search(rb"^dashboard: (http://\S+)$", bytes(self.stdout), re.M)
            if match and self.dashboard is None:
                self.dashboard = match.group(1).decode()
                self.seen_dashboard.set()

    async def pump_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk


@asynccontextmanager
async def _demo(*extra: str) -> AsyncIterator[Demo]:
    """The demo in a subprocess; killed if the test leaves early."""
    async with trio.open_nursery() as nursery:
        demo = await _start(nursery, *extra)
        try:
            yield demo
        finally:
            if demo.process.returncode is None:
                demo.process.kill()
                with trio.move_on_after(5, shield=True):
                    await demo.process.wait()


async def _start(nursery: trio.Nursery, *extra: str) -> Demo:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "zai_proxy", "demo", *PORTS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
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
