"""The limiter's window loop (`limiter_loop.run_limiter`) and what it reports: exact virtual
times on the MockClock, the adjustments counter, and the log line of each decision."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from zai_proxy.proxy import Adjustment, ProxyApp, run_limiter
from zai_proxy.proxy.limiter import Direction, Reason
from zai_proxy.settings import ProxySettings

WINDOW = 10.0


def proxy_app() -> ProxyApp:
    env = {"ZAI_API_KEY": "k", "RATE_LIMIT_WINDOW": "10s", "TOKEN_COUNTING_ENABLED": "false"}
    return ProxyApp(ProxySettings.from_env(env))


def adjustment(direction: Direction, reason: Reason, new_rate: float) -> Adjustment:
    return Adjustment(
        at=WINDOW,
        direction=direction,
        reason=reason,
        old_rate=10.0,
        new_rate=new_rate,
        ceiling=8.4567,
        observed=8.4567,
        throttled_fraction=0.123456,
        answers=81,
        seconds=WINDOW,
    )


async def run_windows(app: ProxyApp, count: int) -> None:
    """Run the loop from now until half a window after its `count`-th tick."""
    with trio.move_on_at(trio.current_time() + (count + 0.5) * WINDOW):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_limiter, app.limiter.limiter, app.metrics)


def counted(app: ProxyApp, direction: str) -> float | None:
    labels = {"direction": direction, "variant": app.settings.variant}
    return app.metrics.registry.get_sample_value("zai_proxy_rate_limit_adjustments_total", labels)


async def test_run_limiter_judges_every_window_on_schedule_though_adjust_is_slow(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = proxy_app()
    calls: list[float] = []

    def slow_adjust(now: float) -> Adjustment | None:
        calls.append(now)
        autojump_clock.jump(2.5)  # a quarter of a window spent judging it
        return None

    monkeypatch.setattr(app.limiter.limiter, "adjust", slow_adjust)
    start = trio.current_time()
    await run_windows(app, 3)
    assert [t - start for t in calls] == [10.0, 20.0, 30.0]


async def test_run_limiter_counts_each_adjustment_by_direction(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = proxy_app()
    decisions = iter([adjustment("increase", "search", 20.0), None])
    monkeypatch.setattr(app.limiter.limiter, "adjust", lambda now: next(decisions))
    await run_windows(app, 2)
    assert counted(app, "increase") == 1
    assert (counted(app, "decrease"), counted(app, "probe")) == (0, 0)


async def test_an_adjustment_is_logged_with_its_figures(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="zai_proxy.limiter")
    app = proxy_app()
    monkeypatch.setattr(
        app.limiter.limiter, "adjust", lambda now: adjustment("decrease", "throttled", 8.28756)
    )
    await run_windows(app, 1)
    [record] = [r for r in caplog.records if r.name == "zai_proxy.limiter"]
    assert (record.levelno, record.getMessage()) == (logging.INFO, "rate limit adjusted")
    fields = (
        "direction",
        "reason",
        "old_rate",
        "new_rate",
        "ceiling",
        "throttled_fraction",
        "answers",
    )
    assert {name: getattr(record, name) for name in fields} == {
        "direction": "decrease",
        "reason": "throttled",
        "old_rate": 10.0,
        "new_rate": 8.288,
        "ceiling": 8.457,
        "throttled_fraction": 0.1235,
        "answers": 81,
    }


async def test_a_hold_is_logged_at_debug_and_not_counted(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="zai_proxy.limiter")
    app = proxy_app()
    monkeypatch.setattr(
        app.limiter.limiter, "adjust", lambda now: adjustment("hold", "steady", 10.0)
    )
    await run_windows(app, 1)
    [record] = [r for r in caplog.records if r.name == "zai_proxy.limiter"]
    assert (record.levelno, record.getMessage()) == (logging.DEBUG, "rate limit held")
    assert [counted(app, d) for d in ("increase", "decrease", "probe")] == [0, 0, 0]
