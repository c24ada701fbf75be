"""The supervisor: crashed tasks restart with backoff; signals stop things in order."""

from __future__ import annotations

import os
import signal

import pytest
import trio
import trio.testing

from tests import conftest
from zai_proxy.supervisor import run_until_signalled, supervised


async def test_crashing_task_is_restarted_with_doubling_backoff(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    starts: list[float] = []
    crashes: list[str] = []

    async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        starts.append(trio.current_time())
        task_status.started()
        if len(starts) <= 3:
            raise RuntimeError("boom")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(supervised("flaky", flaky, on_crash=crashes.append))
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert [round(t - t0, 6) for t in starts] == [0.0, 1.0, 3.0, 7.0]
    assert crashes == ["flaky"] * 3
    assert sum("task crashed" in r.getMessage() for r in caplog.records) == 3


async def test_sibling_keeps_running_while_a_task_crashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ticks: list[float] = []

    async def crasher(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(0.5)
        raise ValueError("always")

    async def steady(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(1)
            ticks.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await nursery.start(supervised("crasher", crasher))
        await nursery.start(supervised("steady", steady))
        await trio.sleep(10.5)
        nursery.cancel_scope.cancel()
    assert len(ticks) == 10


async def test_cancellation_is_never_swallowed(autojump_clock: trio.testing.MockClock) -> None:
    runs = 0

    async def sleeper(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        await trio.sleep_forever()

    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervised("sleeper", sleeper))
    assert runs == 1


async def test_first_signal_sets_stop_and_body_finishes() -> None:
    seen: list[str] = []

    async def body(stop: trio.Event) -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        with trio.fail_after(5):
            await stop.wait()
        seen.append("drained")

    await run_until_signalled(body, signals=(signal.SIGUSR1,))
    assert seen == ["drained"]


def test_missing_tool_skips_locally_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception):
        conftest.require_tool("no-such-tool-zai")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.require_tool("no-such-tool-zai")
    assert conftest.require_tool("sh").endswith("/sh")
