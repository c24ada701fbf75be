"""The adaptive limiter: its bucket, its rules, and a trio task loop around it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio

from zai_proxy.proxy import AdaptiveLimiter, Adjustment, Learned, LimiterConfig, Ticket

# Mid-window decisions off, small windows: each rule test judges one window at a time.
WINDOWED = LimiterConfig(
    initial=10.0, window=10.0, measure_time=0.0, min_answers=10, upstream_burst=0.0
)


def limiter(**changes: Any) -> AdaptiveLimiter:
    return AdaptiveLimiter(dataclasses.replace(WINDOWED, **changes), now=0.0)


def take(lim: AdaptiveLimiter, now: float) -> Ticket:
    ticket = lim.reserve(now)
    assert ticket is not None
    return ticket


def send(lim: AdaptiveLimiter, start: float, count: int) -> None:
    """Queue `count` attempts at `start` and let each go when its turn comes."""
    tickets = [take(lim, start) for _ in range(count)]
    for ticket in tickets:
        assert lim.delay(start + ticket.wait, ticket) == 0.0


def answer(lim: AdaptiveLimiter, now: float, ok: int, throttled: int) -> None:
    for _ in range(throttled):
        assert lim.record(now, throttled=True) is None
    for _ in range(ok):
        assert lim.record(now, throttled=False) is None


def window(lim: AdaptiveLimiter, start: float, sends: int, ok: int, throttled: int) -> Adjustment:
    """One window of `lim.config.window` seconds: sends, answers, then the judgement."""
    send(lim, start, sends)
    end = start + lim.config.window
    answer(lim, end, ok, throttled)
    adjustment = lim.adjust(end)
    assert adjustment is not None
    return adjustment


def throttled_to_ceiling_9(lim: AdaptiveLimiter) -> None:
    """From the initial 10 req/s: 10 of 100 answers throttled, so 9 req/s were admitted."""
    window(lim, 0.0, sends=100, ok=90, throttled=10)
    assert lim.ceiling == 9.0


# ---------------------------------------------------------------------------- the bucket


def test_tickets_are_paced_one_token_apart() -> None:
    lim = limiter(initial=4.0)
    assert [take(lim, 0.0).wait for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]


def test_burst_lets_that_many_through_at_once() -> None:
    lim = limiter(initial=4.0, burst=3.0)
    assert [take(lim, 0.0).wait for _ in range(4)] == [0.0, 0.0, 0.0, 0.25]


def test_reserve_past_max_wait_returns_none_and_takes_nothing() -> None:
    lim = limiter(initial=4.0)
    waits = [take(lim, 0.0).wait for _ in range(5)]
    assert waits[-1] == 1.0
    assert lim.reserve(0.0, max_wait=1.0) is None
    assert lim.queued == 5
    assert take(lim, 0.0).wait == 1.25


def test_reserve_uses_config_max_wait_by_default() -> None:
    lim = limiter(initial=4.0, max_wait=0.5)
    assert [take(lim, 0.0).wait for _ in range(3)] == [0.0, 0.25, 0.5]
    assert lim.reserve(0.0) is None


def test_retry_after_is_the_wait_a_new_caller_would_get() -> None:
    lim = limiter(initial=4.0)
    assert lim.retry_after(0.0) == 0.0
    for _ in range(5):
        take(lim, 0.0)
    assert lim.retry_after(0.0) == 1.25
    assert lim.retry_after(1.0) == 0.25


def test_delay_is_zero_once_the_turn_has_come() -> None:
    lim = limiter(initial=4.0)
    first, second = take(lim, 0.0), take(lim, 0.0)
    assert lim.delay(0.0, first) == 0.0
    assert lim.delay(0.0, second) == 0.25
    assert lim.delay(0.25, second) == 0.0
    assert lim.queued == 0


def test_delay_never_asks_for_more_than_recheck() -> None:
    lim = limiter(initial=4.0, recheck=1.0)
    tickets = [take(lim, 0.0) for _ in range(9)]
    assert tickets[-1].wait == 2.0
    assert lim.delay(0.0, tickets[-1]) == 1.0
    assert lim.delay(1.0, tickets[-1]) == 1.0
    assert lim.delay(2.0, tickets[-1]) == 0.0


def test_queued_tickets_follow_a_rate_drop() -> None:
    lim = limiter(initial=4.0, search_factor=2.0)
    window(lim, 0.0, sends=40, ok=40, throttled=0)  # clean and saturated: 4 -> 8 req/s
    assert lim.rate == 8.0
    tickets = [take(lim, 10.0) for _ in range(3)]
    assert [t.wait for t in tickets] == [0.0, 0.125, 0.25]
    lim.reset(10.0)  # back to 4 req/s: the queue slows down at once
    assert lim.delay(10.0, tickets[2]) == 0.5


def test_cancel_moves_everyone_behind_up_one_turn() -> None:
    lim = limiter(initial=4.0)
    first, second, third = take(lim, 0.0), take(lim, 0.0), take(lim, 0.0)
    assert lim.delay(0.0, first) == 0.0
    lim.cancel(0.0, second)
    assert lim.delay(0.0, third) == 0.25
    assert lim.queued == 1


def test_cancel_of_a_spent_ticket_gives_nothing_back() -> None:
    lim = limiter(initial=4.0)
    first, second = take(lim, 0.0), take(lim, 0.0)
    assert lim.delay(0.0, first) == 0.0
    lim.cancel(0.0, first)
    lim.cancel(0.0, first)
    assert lim.delay(0.0, second) == 0.25


# ---------------------------------------------------------------------------- the rules


def test_throttled_window_takes_admitted_rate_as_ceiling_and_drops_to_hold_point() -> None:
    lim = limiter()
    adjustment = window(lim, 0.0, sends=100, ok=90, throttled=10)
    assert adjustment == Adjustment(
        at=10.0,
        direction="decrease",
        reason="throttled",
        old_rate=10.0,
        new_rate=9.0 * 0.98,
        ceiling=9.0,
        observed=9.0,
        throttled_fraction=0.1,
        answers=100,
        seconds=10.0,
    )
    assert lim.rate == lim.hold_point == 9.0 * 0.98


def test_close_observation_moves_ceiling_by_ewma() -> None:
    lim = limiter(shift_tolerance=0.2)
    throttled_to_ceiling_9(lim)
    # 88 sends (8.82 req/s for 10 s), 8 throttled: 8.0 req/s admitted, 11 % below 9.
    adjustment = window(lim, 10.0, sends=88, ok=80, throttled=8)
    assert adjustment.observed == 8.0
    assert lim.ceiling == pytest.approx(0.3 * 8.0 + 0.7 * 9.0)
    assert lim.rate == pytest.approx(8.0 * 0.98)  # min(ceiling, observation) x 0.98


def test_observation_beyond_shift_tolerance_replaces_ceiling() -> None:
    lim = limiter(shift_tolerance=0.05)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=80, throttled=8)
    assert lim.ceiling == 8.0
    assert lim.rate == pytest.approx(8.0 * 0.98)


def test_window_between_one_and_five_percent_holds() -> None:
    lim = limiter()
    adjustment = window(lim, 0.0, sends=100, ok=97, throttled=3)
    assert (adjustment.direction, adjustment.reason) == ("hold", "slightly throttled")
    assert lim.rate == 10.0
    assert lim.ceiling is None


def test_window_with_exactly_five_percent_429s_holds() -> None:
    # The rule is "above 5 %": 5 of 100 is not above it.
    lim = limiter()
    adjustment = window(lim, 0.0, sends=100, ok=95, throttled=5)
    assert (adjustment.direction, adjustment.reason) == ("hold", "slightly throttled")
    assert (lim.rate, lim.ceiling) == (10.0, None)


def test_window_with_exactly_one_percent_429s_is_not_clean() -> None:
    # The rule is "below 1 %": 1 of 100 is not below it, so a busy window that would
    # search upwards if clean holds instead.
    lim = limiter()
    adjustment = window(lim, 0.0, sends=100, ok=99, throttled=1)
    assert (adjustment.direction, adjustment.reason) == ("hold", "slightly throttled")
    assert lim.rate == 10.0


def test_window_with_just_under_one_percent_429s_is_clean() -> None:
    lim = limiter()
    adjustment = window(lim, 0.0, sends=101, ok=100, throttled=1)
    assert (adjustment.direction, adjustment.reason) == ("increase", "search")
    assert lim.rate == 20.0


def test_hold_windows_in_a_row_drop_the_rate() -> None:
    lim = limiter(hold_windows=2)
    window(lim, 0.0, sends=100, ok=97, throttled=3)
    adjustment = window(lim, 10.0, sends=100, ok=97, throttled=3)
    assert (adjustment.direction, adjustment.reason) == ("decrease", "persistently throttled")
    assert lim.ceiling == 9.7
    assert lim.rate == pytest.approx(9.7 * 0.98)


def test_the_hold_streak_starts_again_after_a_persistent_decrease() -> None:
    # After the streak's decrease, one more window in the 1-5 % band is a first one
    # again: it holds, and only a full new streak decreases once more.
    lim = limiter(hold_windows=2)
    window(lim, 0.0, sends=100, ok=97, throttled=3)
    window(lim, 10.0, sends=100, ok=97, throttled=3)
    after_decrease = lim.rate
    sends = int(lim.rate * 10)
    adjustment = window(lim, 20.0, sends=sends, ok=sends - 2, throttled=2)
    assert (adjustment.direction, adjustment.reason) == ("hold", "slightly throttled")
    assert lim.rate == after_decrease
    adjustment = window(lim, 30.0, sends=sends, ok=sends - 2, throttled=2)
    assert (adjustment.direction, adjustment.reason) == ("decrease", "persistently throttled")


def test_clean_windows_close_half_the_gap_to_the_hold_point() -> None:
    lim = limiter(shift_tolerance=0.2, probe_interval=10)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=80, throttled=8)  # rate 7.84, ceiling 8.79
    hold = (0.3 * 8.0 + 0.7 * 9.0) * 0.98
    rate = 8.0 * 0.98
    expected = []
    for _ in range(3):
        rate += (hold - rate) / 2
        expected.append(rate)
    expected.append(hold)  # the last gap, under 1 % of the hold point, closes at once
    rates = []
    for n in range(4):
        start = 20.0 + 10.0 * n
        sends = int(lim.rate * 10)
        adjustment = window(lim, start, sends=sends, ok=sends, throttled=0)
        assert adjustment.reason == "converge"
        rates.append(lim.rate)
    assert rates == pytest.approx(expected)
    assert rates[-1] == lim.hold_point


def test_clean_busy_window_without_ceiling_multiplies_rate() -> None:
    lim = limiter(search_factor=2.0)
    adjustment = window(lim, 0.0, sends=100, ok=100, throttled=0)
    assert (adjustment.direction, adjustment.reason) == ("increase", "search")
    assert lim.rate == 20.0


def test_clean_window_with_idle_demand_changes_nothing() -> None:
    lim = limiter()
    adjustment = window(lim, 0.0, sends=50, ok=50, throttled=0)
    assert (adjustment.direction, adjustment.reason) == ("hold", "idle")
    assert lim.rate == 10.0


def test_window_with_too_few_answers_changes_nothing() -> None:
    lim = limiter(min_answers=10, probe_interval=3)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert lim.clean_windows == 1
    send(lim, 20.0, 88)
    answer(lim, 30.0, ok=0, throttled=9)
    assert lim.adjust(30.0) is None
    assert (lim.rate, lim.ceiling, lim.clean_windows) == (9.0 * 0.98, 9.0, 1)


def test_a_rate_too_low_to_fill_a_window_is_judged_over_several() -> None:
    # 1 req/s in 10 s windows gives 10 answers a window, under min_answers=20: the
    # first window runs on into the second, which is then judged over both (20 s).
    lim = limiter(initial=1.0, minimum=0.5, min_answers=20)
    send(lim, 0.0, 10)
    answer(lim, 10.0, ok=10, throttled=0)
    assert lim.adjust(10.0) is None
    send(lim, 10.0, 10)
    answer(lim, 20.0, ok=10, throttled=0)
    judged = lim.adjust(20.0)
    assert judged is not None
    assert (judged.reason, judged.answers, judged.seconds) == ("search", 20, 20.0)
    assert lim.rate == 2.0


def test_probe_follows_probe_interval_clean_windows() -> None:
    lim = limiter(probe_interval=2, probe_step=0.08)
    throttled_to_ceiling_9(lim)
    first = window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert (first.reason, lim.clean_windows) == ("steady", 1)
    second = window(lim, 20.0, sends=88, ok=88, throttled=0)
    assert (second.direction, second.new_rate) == ("probe", 9.0 * 1.08)
    assert lim.probing


def test_probe_ends_at_probe_abort_429s_back_to_the_rate_before() -> None:
    lim = limiter(probe_interval=1, probe_abort=3)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert lim.probing
    send(lim, 20.0, 50)
    answer(lim, 25.0, ok=50, throttled=0)
    assert lim.record(25.0, throttled=True) is None
    assert lim.record(25.0, throttled=True) is None
    failed = lim.record(25.0, throttled=True)
    assert failed is not None
    assert (failed.direction, failed.reason) == ("decrease", "probe failed")
    assert (failed.old_rate, failed.new_rate) == (9.0 * 1.08, 9.0 * 0.98)
    assert (lim.ceiling, lim.probing, lim.clean_windows) == (9.0, False, 0)


def test_clean_busy_probe_forgets_ceiling_and_searches_upwards() -> None:
    lim = limiter(probe_interval=1, search_factor=2.0)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    probe_rate = lim.rate
    adjustment = window(lim, 20.0, sends=97, ok=97, throttled=0)
    assert (adjustment.direction, adjustment.reason) == ("increase", "probe passed")
    assert lim.ceiling is None
    assert lim.rate == probe_rate * 2


def test_quiet_probe_returns_to_the_rate_before_and_keeps_the_streak() -> None:
    lim = limiter(probe_interval=1)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    adjustment = window(lim, 20.0, sends=40, ok=40, throttled=0)
    assert (adjustment.direction, adjustment.reason) == ("decrease", "probe idle")
    assert (lim.rate, lim.ceiling, lim.clean_windows) == (9.0 * 0.98, 9.0, 1)


def test_rate_is_clamped_to_maximum() -> None:
    lim = limiter(initial=40.0, maximum=50.0)
    window(lim, 0.0, sends=400, ok=400, throttled=0)
    assert lim.rate == 50.0


def test_rate_is_clamped_to_minimum() -> None:
    lim = limiter(initial=10.0, minimum=2.0)
    window(lim, 0.0, sends=100, ok=5, throttled=95)
    assert lim.ceiling == 2.0  # 0.5 req/s admitted, but never below the minimum
    assert lim.rate == 2.0


def test_reset_restores_the_initial_rate_and_forgets_the_ceiling() -> None:
    lim = limiter(probe_interval=1)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert lim.probing
    lim.reset(20.0)
    assert (lim.rate, lim.ceiling, lim.hold_point) == (10.0, None, None)
    assert (lim.probing, lim.clean_windows) == (False, 0)


def test_reset_forgets_the_background_of_stray_429s() -> None:
    lim = limiter()
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=199, throttled=1)
    assert lim.learned().background == pytest.approx(0.3 * 0.005)
    lim.reset(20.0)
    assert lim.learned().background == 0.0


# ------------------------------------------------------------------ the upstream's burst
# Above its limit, the upstream's own bucket answers from its burst for a while before
# the first 429, so a clean window proves less than the rate it ran at.


def test_a_search_multiplies_the_rate_the_window_proved() -> None:
    lim = limiter(initial=10.0, upstream_burst=1.0, search_factor=2.0)
    adjustment = window(lim, 0.0, sends=100, ok=100, throttled=0)
    # 10 s clean at 10 req/s proves 10 x 10 / (10 + 1) req/s.
    assert adjustment.reason == "search"
    assert lim.rate == pytest.approx(10.0 * 10 / 11 * 2)


def test_a_search_never_lowers_the_rate() -> None:
    lim = limiter(initial=10.0, upstream_burst=30.0, search_factor=2.0)
    adjustment = window(lim, 0.0, sends=100, ok=100, throttled=0)
    # 10 x 10 / 40 x 2 = 5: below the rate the window ran at, which it did prove safe
    # for a while; the rate stays.
    assert (adjustment.reason, lim.rate) == ("search", 10.0)


def test_a_clean_probe_runs_on_until_it_outlasts_the_upstreams_burst() -> None:
    lim = limiter(probe_interval=1, upstream_burst=1.0)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert lim.probing and lim.rate == pytest.approx(9.72)
    # 10 s clean at 9.72 proves 9.72 x 10 / 11 = 8.84, under the ceiling of 9: the
    # upstream may still be answering from its burst. Not judged; the probe goes on.
    send(lim, 20.0, 97)
    answer(lim, 30.0, ok=97, throttled=0)
    assert lim.adjust(30.0) is None
    assert lim.probing and lim.rate == pytest.approx(9.72) and lim.ceiling == 9.0
    # 20 s clean proves 9.72 x 20 / 21 = 9.26 > 9: the limit rose.
    send(lim, 30.0, 97)
    answer(lim, 40.0, ok=97, throttled=0)
    passed = lim.adjust(40.0)
    assert passed is not None and passed.reason == "probe passed"
    assert (passed.seconds, passed.answers) == (20.0, 194)
    assert lim.ceiling is None
    assert lim.rate == pytest.approx(9.72 * 20 / 21 * 2)


def test_a_probe_that_ran_on_still_fails_at_its_first_429() -> None:
    lim = limiter(probe_interval=1, upstream_burst=1.0)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    send(lim, 20.0, 97)
    answer(lim, 30.0, ok=97, throttled=0)
    assert lim.adjust(30.0) is None
    failed = lim.record(33.0, throttled=True)
    assert failed is not None and failed.reason == "probe failed"
    assert (lim.rate, lim.ceiling, lim.probing) == (pytest.approx(8.82), 9.0, False)


def test_a_probe_at_the_maximum_passes_without_outlasting_the_burst() -> None:
    # The rate cannot go higher anyway: waiting for proof would only stall the probe.
    lim = limiter(probe_interval=1, upstream_burst=1.0, initial=9.5, maximum=9.5)
    window(lim, 0.0, sends=95, ok=89, throttled=6)
    assert lim.ceiling == pytest.approx(8.9)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert lim.probing and lim.rate == 9.5  # 8.9 x 1.08 = 9.61, clamped
    passed = window(lim, 20.0, sends=95, ok=95, throttled=0)  # proves only 8.64
    assert passed.reason == "probe passed"
    assert (lim.rate, lim.ceiling, lim.probing) == (9.5, None, False)


# ---------------------------------------------------------------------------- mid-window


def _stream(lim: AdaptiveLimiter, count: int, throttle: set[int], lag: float) -> list[Adjustment]:
    """Attempt k leaves at k/rate; its answer comes `lag` later, a 429 when k in throttle.
    Calls reach the limiter in time order, as they would in the proxy, until the first
    decision (after which the queued turns would move)."""
    tickets = [take(lim, 0.0) for _ in range(count)]
    events = []
    for k, ticket in enumerate(tickets):
        events.append((ticket.wait, 0, k))
        events.append((ticket.wait + lag, 1, k))
    for at, kind, k in sorted(events):
        if kind == 0:
            assert lim.delay(at, tickets[k]) == 0.0
        else:
            decision = lim.record(at, k in throttle, sent_at=tickets[k].wait)
            if decision is not None:
                return [decision]
    return []


def test_a_window_throttled_late_reads_the_limit_from_its_episode() -> None:
    lim = limiter(initial=10.0, measure_time=3.0, min_answers=20)
    # Clean until 7 s (the upstream's burst answering), then every other attempt is
    # refused: 5 req/s get through. Too late for a mid-window decision by 10 s.
    throttle = {k for k in range(70, 100) if k % 2 == 0}
    assert _stream(lim, 100, throttle, lag=0.1) == []
    decision = lim.adjust(10.0)
    assert decision is not None and decision.reason == "throttled"
    # The episode, from attempt 70's send at 7.0 to 9.9 (the answers known): 30 sends,
    # 15 refused, in 2.9 s. The whole window would have read (100 - 15) / 10 = 8.5.
    assert decision.observed == pytest.approx(15 / 2.9)
    assert lim.ceiling == pytest.approx(15 / 2.9)


def test_a_window_whose_episode_is_too_short_reads_the_whole_window() -> None:
    lim = limiter(initial=10.0, measure_time=3.0, min_answers=20)
    # Refused from 9 s on: 10 answers after the first 429, fewer than min_answers.
    throttle = {k for k in range(90, 100)}
    assert _stream(lim, 100, throttle, lag=0.1) == []
    decision = lim.adjust(10.0)
    assert decision is not None and decision.observed == pytest.approx((100 - 10) / 10)


def test_throttle_storm_drops_the_rate_mid_window_by_send_time() -> None:
    lim = limiter(initial=16.0, measure_time=3.0, min_answers=20)
    # From 1 s on, every other attempt is refused: 8 req/s get through.
    throttle = {k for k in range(16, 100) if k % 2}
    [first] = _stream(lim, 100, throttle, lag=0.125)
    # Opened by attempt 17's 429 (sent 1.0625); judged by the answer at 4.1875, over the
    # attempts sent from 1.0625 to 4.0625: 49 sends, 25 of them refused, in 3 s.
    assert (first.at, first.reason, first.observed) == (4.1875, "throttled", 8.0)
    assert (lim.ceiling, first.new_rate) == (8.0, 8.0 * 0.98)


def test_scattered_429s_leave_the_rate_alone() -> None:
    lim = limiter(initial=16.0, measure_time=3.0, min_answers=20)
    assert _stream(lim, 100, {20}, lag=0.125) == []
    assert lim.rate == 16.0


def test_answers_sent_before_the_rate_changed_are_ignored() -> None:
    lim = limiter()
    throttled_to_ceiling_9(lim)  # the rate changed at 10 s
    for _ in range(10):
        assert lim.record(10.0, throttled=True, sent_at=9.9) is None
    send(lim, 10.0, 88)
    answer(lim, 20.0, ok=88, throttled=0)
    adjustment = lim.adjust(20.0)
    assert adjustment is not None
    assert (adjustment.throttled_fraction, adjustment.answers) == (0.0, 88)


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "changes",
    [
        {"minimum": 0.0},
        {"minimum": 5.0, "maximum": 4.0},
        {"initial": 60.0},
        {"initial": float("nan")},
        {"ceiling_alpha": 0.0},
        {"hold_margin": 1.0},
        {"probe_interval": 0},
        {"window": 0.0},
        {"max_wait": -1.0},
        {"burst": 0.5},
        {"recheck": 0.0},
        {"min_answers": 0},
        {"clean_below": 0.1, "decrease_above": 0.05},
        {"hold_windows": -1},
        {"probe_step": 0.0},
        {"probe_abort": 0},
        {"search_factor": 1.0},
        {"measure_time": -1.0},
        {"shift_tolerance": -0.1},
        {"saturation": 1.5},
        {"upstream_burst": -0.5},
    ],
)
def test_config_rejects_bad_values(changes: dict[str, Any]) -> None:
    name = next(iter(changes))
    with pytest.raises(ValueError, match=name):
        dataclasses.replace(LimiterConfig(), **changes)


def test_config_defaults_are_the_seed_settings() -> None:
    config = LimiterConfig()
    seed = (10.0, 1.0, 50.0, 0.3, 0.02, 10, 30.0)
    assert (
        config.initial,
        config.minimum,
        config.maximum,
        config.ceiling_alpha,
        config.hold_margin,
        config.probe_interval,
        config.window,
    ) == seed


# ---------------------------------------------------------------------------- under trio


async def wait_turn(lim: AdaptiveLimiter, ticket: Ticket) -> None:
    """The proxy's side of a ticket: sleep, then ask again, until the turn has come."""
    while True:
        wait = lim.delay(trio.current_time(), ticket)
        if wait == 0:
            return
        await trio.sleep(wait)


async def test_trio_tasks_already_queued_follow_a_rate_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    # A clean, busy window before the tasks start has doubled the rate from 2 to 4 req/s.
    lim = AdaptiveLimiter(dataclasses.replace(WINDOWED, initial=2.0), now=start - 10.0)
    window(lim, start - 10.0, sends=20, ok=20, throttled=0)
    assert lim.rate == 4.0
    granted: dict[int, float] = {}

    async def attempt(name: int, ticket: Ticket) -> None:
        await wait_turn(lim, ticket)
        granted[name] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        for name in range(6):
            ticket = lim.reserve(trio.current_time())
            assert ticket is not None
            nursery.start_soon(attempt, name, ticket)
        # Turns 0.25 s apart until the reset at 0.375 s halves the rate: from then on the
        # bucket fills at 2 req/s, and the attempts still queued go 0.5 s apart.
        await trio.sleep(0.375)
        lim.reset(trio.current_time())
        assert lim.rate == 2.0

    assert granted == {0: 0.0, 1: 0.25, 2: 0.625, 3: 1.125, 4: 1.625, 5: 2.125}


async def test_adjust_loop_keeps_its_schedule_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = AdaptiveLimiter(dataclasses.replace(WINDOWED, initial=4.0), now=trio.current_time())
    decisions: list[tuple[float, str, float]] = []

    async def adjuster() -> None:
        tick = trio.current_time()
        while True:
            tick += lim.config.window
            await trio.sleep_until(tick)
            adjustment = lim.adjust(trio.current_time())
            if adjustment is not None:
                decisions.append((adjustment.at, adjustment.reason, adjustment.new_rate))

    async def client() -> None:
        # Always another attempt waiting, every answer clean: the rate doubles each window.
        while True:
            ticket = lim.reserve(trio.current_time())
            assert ticket is not None
            await wait_turn(lim, ticket)
            lim.record(trio.current_time(), throttled=False)

    with trio.move_on_after(35.0):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(adjuster)
            nursery.start_soon(client)

    assert decisions == [(10.0, "search", 8.0), (20.0, "search", 16.0), (30.0, "search", 32.0)]


# ---------------------------------------------------------------------------- more pins


def test_a_new_limiter_runs_at_the_initial_rate_with_nothing_learnt() -> None:
    lim = AdaptiveLimiter()
    assert lim.config == LimiterConfig()
    assert (lim.rate, lim.ceiling, lim.hold_point) == (10.0, None, None)
    assert (lim.clean_windows, lim.probing, lim.queued) == (0, False, 0)


def test_a_limiter_built_without_a_time_starts_its_clock_at_zero() -> None:
    lim = AdaptiveLimiter(dataclasses.replace(WINDOWED, initial=4.0))
    first, second = take(lim, 0.0), take(lim, 0.0)
    assert lim.delay(0.0, first) == 0.0
    assert lim.delay(0.25, second) == 0.0


def test_a_cancelled_tickets_turn_goes_to_the_next_new_caller() -> None:
    lim = limiter(initial=4.0)
    first, second = take(lim, 0.0), take(lim, 0.0)
    assert lim.delay(0.0, first) == 0.0
    lim.cancel(0.0, second)
    assert take(lim, 0.0).wait == 0.25


def test_a_window_without_traffic_is_not_judged() -> None:
    lim = limiter()
    assert lim.adjust(10.0) is None
    window(lim, 10.0, sends=100, ok=100, throttled=0)
    assert lim.adjust(30.0) is None
    lim.reset(30.0)
    assert lim.adjust(40.0) is None


def test_a_windows_clock_starts_at_its_first_request() -> None:
    lim = limiter()
    adjustment = window(lim, 5.0, sends=100, ok=90, throttled=10)
    assert (adjustment.seconds, adjustment.observed) == (10.0, 9.0)


def test_answers_all_at_the_instant_the_window_began_are_not_judged_yet() -> None:
    lim = limiter()
    answer(lim, 0.0, ok=20, throttled=0)
    assert lim.adjust(0.0) is None
    judged = lim.adjust(1.0)
    assert judged is not None and (judged.answers, judged.seconds) == (20, 1.0)


def test_a_window_shorter_than_measure_time_runs_on() -> None:
    lim = limiter(measure_time=3.0)
    answer(lim, 0.0, ok=20, throttled=0)
    assert lim.adjust(2.0) is None
    judged = lim.adjust(3.0)
    assert judged is not None and judged.seconds == 3.0


def test_a_slightly_throttled_window_is_reported_in_full() -> None:
    lim = limiter()
    assert window(lim, 0.0, sends=100, ok=97, throttled=3) == Adjustment(
        at=10.0,
        direction="hold",
        reason="slightly throttled",
        old_rate=10.0,
        new_rate=10.0,
        ceiling=None,
        observed=None,
        throttled_fraction=0.03,
        answers=100,
        seconds=10.0,
    )


def test_a_persistent_decrease_is_reported_in_full() -> None:
    lim = limiter(hold_windows=2)
    window(lim, 0.0, sends=100, ok=97, throttled=3)
    assert window(lim, 10.0, sends=100, ok=97, throttled=3) == Adjustment(
        at=20.0,
        direction="decrease",
        reason="persistently throttled",
        old_rate=10.0,
        new_rate=9.7 * 0.98,
        ceiling=9.7,
        observed=9.7,
        throttled_fraction=0.03,
        answers=100,
        seconds=10.0,
    )


def test_a_search_step_is_reported_in_full() -> None:
    lim = limiter()
    assert window(lim, 0.0, sends=100, ok=100, throttled=0) == Adjustment(
        at=10.0,
        direction="increase",
        reason="search",
        old_rate=10.0,
        new_rate=20.0,
        ceiling=None,
        observed=None,
        throttled_fraction=0.0,
        answers=100,
        seconds=10.0,
    )


def test_an_idle_window_is_reported_in_full() -> None:
    lim = limiter()
    assert window(lim, 0.0, sends=50, ok=50, throttled=0) == Adjustment(
        at=10.0,
        direction="hold",
        reason="idle",
        old_rate=10.0,
        new_rate=10.0,
        ceiling=None,
        observed=None,
        throttled_fraction=0.0,
        answers=50,
        seconds=10.0,
    )


def test_an_idle_window_at_the_hold_point_is_idle_not_steady() -> None:
    lim = limiter()
    throttled_to_ceiling_9(lim)
    assert window(lim, 10.0, sends=40, ok=40, throttled=0) == Adjustment(
        at=20.0,
        direction="hold",
        reason="idle",
        old_rate=9.0 * 0.98,
        new_rate=9.0 * 0.98,
        ceiling=9.0,
        observed=None,
        throttled_fraction=0.0,
        answers=40,
        seconds=10.0,
    )
    assert lim.clean_windows == 0


def test_a_busy_window_at_the_hold_point_is_steady_and_counts_towards_a_probe() -> None:
    lim = limiter()
    throttled_to_ceiling_9(lim)
    assert window(lim, 10.0, sends=88, ok=88, throttled=0) == Adjustment(
        at=20.0,
        direction="hold",
        reason="steady",
        old_rate=9.0 * 0.98,
        new_rate=9.0 * 0.98,
        ceiling=9.0,
        observed=None,
        throttled_fraction=0.0,
        answers=88,
        seconds=10.0,
    )
    assert lim.clean_windows == 1


def test_a_convergence_step_is_reported_in_full() -> None:
    lim = limiter(shift_tolerance=0.2)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=80, throttled=8)  # ceiling 8.7, rate 7.84
    adjustment = window(lim, 20.0, sends=78, ok=78, throttled=0)
    hold = (0.3 * 8.0 + 0.7 * 9.0) * 0.98
    assert adjustment == Adjustment(
        at=30.0,
        direction="increase",
        reason="converge",
        old_rate=8.0 * 0.98,
        new_rate=8.0 * 0.98 + (hold - 8.0 * 0.98) / 2,
        ceiling=0.3 * 8.0 + 0.7 * 9.0,
        observed=None,
        throttled_fraction=0.0,
        answers=78,
        seconds=10.0,
    )


def test_a_probe_is_reported_in_full() -> None:
    lim = limiter(probe_interval=1)
    throttled_to_ceiling_9(lim)
    assert window(lim, 10.0, sends=88, ok=88, throttled=0) == Adjustment(
        at=20.0,
        direction="probe",
        reason="probe",
        old_rate=9.0 * 0.98,
        new_rate=9.0 * 1.08,
        ceiling=9.0,
        observed=None,
        throttled_fraction=0.0,
        answers=88,
        seconds=10.0,
    )


def test_a_passed_probe_is_reported_in_full_and_ends_the_probe() -> None:
    lim = limiter(probe_interval=1)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert window(lim, 20.0, sends=97, ok=97, throttled=0) == Adjustment(
        at=30.0,
        direction="increase",
        reason="probe passed",
        old_rate=9.0 * 1.08,
        new_rate=9.0 * 1.08 * 2,
        ceiling=None,
        observed=None,
        throttled_fraction=0.0,
        answers=97,
        seconds=10.0,
    )
    assert (lim.probing, lim.clean_windows) == (False, 0)


def test_an_idle_probe_is_reported_in_full_and_ends_the_probe() -> None:
    lim = limiter(probe_interval=1)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert window(lim, 20.0, sends=40, ok=40, throttled=0) == Adjustment(
        at=30.0,
        direction="decrease",
        reason="probe idle",
        old_rate=9.0 * 1.08,
        new_rate=9.0 * 0.98,
        ceiling=9.0,
        observed=None,
        throttled_fraction=0.0,
        answers=40,
        seconds=10.0,
    )
    assert lim.probing is False


def test_a_probe_window_with_a_few_429s_fails_at_its_end() -> None:
    # Two 429s are fewer than probe_abort, so the probe runs to the window's end; 2 %
    # is not clean, so it failed.
    lim = limiter(probe_interval=1, probe_abort=3)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert window(lim, 20.0, sends=97, ok=95, throttled=2) == Adjustment(
        at=30.0,
        direction="decrease",
        reason="probe failed",
        old_rate=9.0 * 1.08,
        new_rate=9.0 * 0.98,
        ceiling=9.0,
        observed=None,
        throttled_fraction=2 / 97,
        answers=97,
        seconds=10.0,
    )
    assert (lim.probing, lim.clean_windows) == (False, 0)


@pytest.mark.parametrize("sends", [100, 50])
def test_a_probe_window_with_exactly_one_percent_429s_failed(sends: int) -> None:
    lim = limiter(probe_interval=1, probe_abort=3)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    adjustment = window(lim, 20.0, sends=sends, ok=99, throttled=1)
    assert adjustment.reason == "probe failed"


def test_a_probe_ended_mid_window_is_reported_in_full() -> None:
    lim = limiter(probe_interval=1, probe_abort=3)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    send(lim, 20.0, 48)
    answer(lim, 25.0, ok=48, throttled=0)
    lim.record(25.0, throttled=True)
    lim.record(25.0, throttled=True)
    assert lim.record(25.0, throttled=True) == Adjustment(
        at=25.0,
        direction="decrease",
        reason="probe failed",
        old_rate=9.0 * 1.08,
        new_rate=9.0 * 0.98,
        ceiling=9.0,
        observed=None,
        throttled_fraction=3 / 51,
        answers=51,
        seconds=5.0,
    )


def test_a_probe_ends_at_its_first_429_when_clean_windows_drew_none() -> None:
    lim = limiter(probe_interval=1)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert lim.probing
    answer(lim, 25.0, ok=300, throttled=0)
    ended = lim.record(25.0, throttled=True)
    assert ended is not None and ended.reason == "probe failed"


def test_a_probe_is_not_failed_by_the_429s_clean_windows_draw_anyway() -> None:
    lim = limiter(probe_interval=2)
    throttled_to_ceiling_9(lim)
    # Two clean windows with 1 stray 429 in 200 answers: a background of 0.5 %.
    window(lim, 10.0, sends=88, ok=199, throttled=1)
    window(lim, 20.0, sends=88, ok=199, throttled=1)
    assert lim.probing
    background = lim.learned().background
    assert background == pytest.approx(0.3 * 0.005 + 0.7 * 0.3 * 0.005)
    # 400 answers: the background explains 400 x 0.00255 = 1.02 429s, so one more
    # than that (probe_abort = 1) ends the probe: the second 429 does not, the third does.
    answer(lim, 35.0, ok=397, throttled=0)
    assert lim.record(35.0, throttled=True) is None
    assert lim.record(35.0, throttled=True) is None
    ended = lim.record(35.0, throttled=True)
    assert ended is not None and ended.reason == "probe failed"


def test_an_observation_exactly_shift_tolerance_away_is_averaged_in() -> None:
    lim = limiter(initial=12.0, shift_tolerance=0.1)
    window(lim, 0.0, sends=120, ok=100, throttled=20)
    assert lim.ceiling == 10.0
    # 98 sends, 8 refused: 9 req/s admitted, exactly 10 % below the ceiling.
    adjustment = window(lim, 10.0, sends=98, ok=90, throttled=8)
    assert adjustment.observed == 9.0
    assert lim.ceiling == 0.3 * 9.0 + 0.7 * 10.0


def test_a_window_that_used_exactly_the_saturation_share_is_busy() -> None:
    # 8 req/s for 10 s made 80 tokens; 72 of them used is exactly saturation=0.9.
    lim = limiter(initial=8.0)
    assert window(lim, 0.0, sends=72, ok=72, throttled=0).reason == "search"
    lim = limiter(initial=8.0)
    assert window(lim, 0.0, sends=71, ok=71, throttled=0).reason == "idle"


def test_one_answer_in_one_second_at_one_request_per_second_is_busy() -> None:
    lim = limiter(initial=1.0, minimum=0.5, min_answers=1)
    send(lim, 0.0, 1)
    answer(lim, 1.0, ok=1, throttled=0)
    judged = lim.adjust(1.0)
    assert judged is not None
    assert (judged.reason, judged.seconds, lim.rate) == ("search", 1.0, 2.0)


def test_hold_windows_zero_never_drops_the_rate_for_slight_throttling() -> None:
    lim = limiter(hold_windows=0)
    for n in range(5):
        adjustment = window(lim, 10.0 * n, sends=100, ok=97, throttled=3)
        assert adjustment.reason == "slightly throttled"
    assert lim.rate == 10.0


def test_hold_windows_one_drops_the_rate_at_the_first_slightly_throttled_window() -> None:
    lim = limiter(hold_windows=1)
    adjustment = window(lim, 0.0, sends=100, ok=97, throttled=3)
    assert (adjustment.reason, lim.ceiling) == ("persistently throttled", 9.7)


def test_a_clean_window_breaks_the_hold_streak() -> None:
    lim = limiter(hold_windows=2)
    window(lim, 0.0, sends=100, ok=97, throttled=3)
    window(lim, 10.0, sends=50, ok=50, throttled=0)
    assert window(lim, 20.0, sends=100, ok=97, throttled=3).reason == "slightly throttled"


def test_reset_breaks_the_hold_streak() -> None:
    lim = limiter(hold_windows=2)
    window(lim, 0.0, sends=100, ok=97, throttled=3)
    lim.reset(10.0)
    assert window(lim, 10.0, sends=100, ok=97, throttled=3).reason == "slightly throttled"


def test_a_slightly_throttled_window_restarts_the_clean_streak() -> None:
    lim = limiter(probe_interval=2)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=88, ok=88, throttled=0)
    assert lim.clean_windows == 1
    window(lim, 20.0, sends=88, ok=86, throttled=2)
    assert lim.clean_windows == 0
    assert window(lim, 30.0, sends=88, ok=88, throttled=0).reason == "steady"


def test_a_limiter_pinned_at_its_maximum_never_probes() -> None:
    lim = limiter(initial=10.0, minimum=10.0, maximum=10.0, hold_margin=0.0, probe_interval=1)
    window(lim, 0.0, sends=100, ok=90, throttled=10)
    assert (lim.ceiling, lim.rate) == (10.0, 10.0)
    for n in range(1, 4):
        assert window(lim, 10.0 * n, sends=100, ok=100, throttled=0).reason == "steady"
    assert not lim.probing


def test_answers_sent_before_a_reset_are_ignored_and_those_sent_at_it_count() -> None:
    lim = limiter()
    lim.reset(10.0)
    assert lim.record(11.0, throttled=True, sent_at=9.5) is None
    assert lim.record(11.0, throttled=False, sent_at=10.0) is None
    answer(lim, 11.0, ok=9, throttled=0)
    judged = lim.adjust(12.0)
    assert judged is not None and judged.answers == 10


# ------------------------------------------------------------------ mid-window, measured


def stream(
    lim: AdaptiveLimiter,
    count: int,
    throttle: set[int],
    lag: Any,
    timed: Any = True,
) -> Adjustment | None:
    """Like _stream, with each answer's lag given per attempt (`lag(k, refused)`) and
    `timed(k)` saying whether the answer carries its send time."""
    tickets = [take(lim, 0.0) for _ in range(count)]
    events = []
    for k, ticket in enumerate(tickets):
        events.append((ticket.wait, 0, k))
        events.append((ticket.wait + lag(k, k in throttle), 1, k))
    for at, kind, k in sorted(events):
        if kind == 0:
            assert lim.delay(at, tickets[k]) == 0.0
            continue
        sent_at = tickets[k].wait if (timed(k) if callable(timed) else timed) else None
        decision = lim.record(at, k in throttle, sent_at=sent_at)
        if decision is not None:
            return decision
    return None


EVERY_OTHER_FROM_1S = {k for k in range(16, 200) if k % 2}


def slowing_429s(k: int, refused: bool) -> float:
    # Answers take 0.125 s; a 429 takes k/64 s more for attempt k (the upstream's queue
    # of refusals grows).
    return 0.125 + (k / 64 if refused else 0.0)


def test_a_mid_window_decrease_is_reported_in_full() -> None:
    lim = limiter(initial=16.0, measure_time=3.0, min_answers=20)
    decision = stream(lim, 100, EVERY_OTHER_FROM_1S, lambda k, refused: 0.125)
    # 48 answers after the opening 429, 24 of them refused, 3 s after it.
    assert decision == Adjustment(
        at=4.1875,
        direction="decrease",
        reason="throttled",
        old_rate=16.0,
        new_rate=8.0 * 0.98,
        ceiling=8.0,
        observed=8.0,
        throttled_fraction=0.5,
        answers=48,
        seconds=3.0,
    )


def test_slowing_429s_are_measured_by_send_time() -> None:
    lim = limiter(initial=16.0, measure_time=3.0, min_answers=20)
    decision = stream(lim, 200, EVERY_OTHER_FROM_1S, slowing_429s)
    assert decision is not None and decision.at == 4.5
    # From the opening 429's send (1.0625) to 4.5 less the slowest 429's lag so far
    # (0.984375): 40 sends, 20 of them refused.
    assert decision.observed == 20 / (4.5 - 0.984375 - 1.0625)


def test_without_send_times_an_episode_is_measured_by_answer_time() -> None:
    lim = limiter(initial=16.0, measure_time=3.0, min_answers=20)
    decision = stream(lim, 200, EVERY_OTHER_FROM_1S, slowing_429s, timed=False)
    assert decision is not None and decision.at == 4.5
    # 3.046875 s from the opening 429's answer: 49 sends since it, 19 429s after it.
    assert decision.observed == (49 - 19) / 3.046875


def test_one_429_without_its_send_time_makes_the_episode_measured_by_answer_time() -> None:
    lim = limiter(initial=16.0, measure_time=3.0, min_answers=20)
    decision = stream(lim, 200, EVERY_OTHER_FROM_1S, slowing_429s, timed=lambda k: k != 31)
    assert decision is not None and decision.observed == (49 - 19) / 3.046875


def test_measure_time_zero_turns_mid_window_decisions_off() -> None:
    lim = limiter(measure_time=0.0, min_answers=1)
    for t in range(20):
        assert lim.record(float(t), throttled=True) is None


def test_a_one_second_measure_time_decides_after_one_second() -> None:
    lim = limiter(initial=16.0, measure_time=1.0, min_answers=10)
    decision = stream(lim, 100, EVERY_OTHER_FROM_1S, lambda k, refused: 0.125)
    assert decision is not None and (decision.reason, decision.seconds) == ("throttled", 1.0)


def test_an_episode_is_judged_once_it_has_exactly_min_answers() -> None:
    lim = limiter(measure_time=3.0, min_answers=20)
    assert lim.record(0.0, throttled=True) is None  # opens the episode
    answer(lim, 1.0, ok=18, throttled=1)
    decision = lim.record(3.0, throttled=False)
    assert decision is not None
    assert (decision.answers, decision.throttled_fraction) == (20, 0.05)


def test_while_searching_one_percent_of_429s_in_an_episode_is_a_storm() -> None:
    lim = limiter(measure_time=3.0, min_answers=20)
    lim.record(0.0, throttled=True)
    answer(lim, 1.0, ok=19, throttled=1)
    decision = lim.record(3.0, throttled=False)  # 1 of 21 is over 1 %
    assert decision is not None and decision.reason == "throttled"


def test_with_a_ceiling_known_an_episode_needs_over_five_percent_of_429s() -> None:
    lim = limiter(measure_time=3.0, min_answers=20)
    throttled_to_ceiling_9(lim)
    lim.record(10.0, throttled=True)
    answer(lim, 11.0, ok=18, throttled=1)
    assert lim.record(13.0, throttled=False) is None  # 1 of 20 is exactly 5 %
    lim.record(14.0, throttled=True)
    answer(lim, 15.0, ok=17, throttled=2)
    decision = lim.record(17.0, throttled=False)  # 2 of 20
    assert decision is not None and decision.reason == "throttled"


# ---------------------------------------------------------------------------- config edges


@pytest.mark.parametrize(
    "changes",
    [
        {"maximum": 1.0, "initial": 1.0},
        {"initial": 1.0},
        {"initial": 50.0},
        {"ceiling_alpha": 1.0},
        {"hold_margin": 0.0},
        {"max_wait": 0.0},
        {"min_answers": 1},
        {"clean_below": 0.0},
        {"clean_below": 0.05},
        {"decrease_above": 0.99},
        {"hold_windows": 0},
        {"probe_abort": 1},
        {"shift_tolerance": 0.0},
        {"saturation": 0.0},
        {"saturation": 1.0},
    ],
)
def test_config_accepts_the_edges_of_each_range(changes: dict[str, Any]) -> None:
    dataclasses.replace(LimiterConfig(), **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"minimum": 0.0}, "minimum must be > 0, got 0.0"),
        ({"window": -1.0}, "window must be > 0, got -1.0"),
        ({"recheck": 0.0}, "recheck must be > 0, got 0.0"),
        ({"ceiling_alpha": 1.5}, "ceiling_alpha must be in (0, 1], got 1.5"),
        ({"decrease_above": 1.0}, "need 0 <= clean_below <= decrease_above < 1, got "),
        ({"decrease_above": 1.5}, "need 0 <= clean_below <= decrease_above < 1, got "),
    ],
)
def test_config_errors_name_the_setting_and_its_range(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        dataclasses.replace(LimiterConfig(), **changes)
    assert str(caught.value).startswith(message)


def test_a_window_whose_first_event_is_an_answer_starts_its_clock_there() -> None:
    lim = limiter()
    answer(lim, 5.0, ok=20, throttled=0)
    judged = lim.adjust(15.0)
    assert judged is not None and judged.seconds == 10.0


def speeding_429s(k: int, refused: bool) -> float:
    # The first 429s take longest (attempt 17: 0.609375 s), later ones less and less.
    return 0.125 + (max(0, 48 - k) / 64 if refused else 0.0)


def test_the_opening_429s_own_lag_bounds_what_is_known() -> None:
    lim = limiter(initial=16.0, measure_time=3.0, min_answers=20)
    decision = stream(lim, 200, EVERY_OTHER_FROM_1S, speeding_429s)
    assert decision is not None and decision.at == 4.6875
    # Up to 4.6875 less the opening 429's lag (0.609375), the slowest so far: 49 sends
    # from 1.0625 on, 25 of them refused.
    assert decision.observed == (49 - 25) / (4.6875 - 0.609375 - 1.0625)


def test_sends_are_remembered_for_a_429_that_comes_back_a_minute_later() -> None:
    lim = limiter(initial=16.0, measure_time=3.0, min_answers=20, max_wait=120.0)
    decision = stream(lim, 1100, EVERY_OTHER_FROM_1S, lambda k, refused: 58.0)
    assert decision is not None
    assert (decision.at, decision.observed) == (62.0625, 8.0)


# ------------------------------------------------------ the pieces a shared limiter uses


def test_count_send_is_what_a_ticket_going_counts() -> None:
    # The same window twice: once through this limiter's bucket, once fed from outside
    # (a judge counting other replicas' sends). The judgements are identical.
    own, fed = limiter(), limiter()
    send(own, 0.0, 100)
    for k in range(100):
        fed.count_send(k * 0.1)
    for lim in (own, fed):
        answer(lim, 10.0, ok=90, throttled=10)
    assert own.adjust(10.0) == fed.adjust(10.0)
    assert fed.ceiling == 9.0 and fed.rate == pytest.approx(8.82)


def test_count_send_starts_the_windows_clock_and_fills_its_capacity() -> None:
    # Idle from 0 to 5; sends from 5 at the full rate of 10/s make a saturated window
    # of 5 s (not a half-used one of 10 s): no ceiling yet, so it searches upwards.
    lim = limiter(min_answers=10)
    for k in range(50):
        lim.count_send(5.0 + k * 0.1)
    answer(lim, 10.0, ok=50, throttled=0)
    decision = lim.adjust(10.0)
    assert decision is not None
    assert (decision.reason, decision.new_rate, decision.seconds) == ("search", 20.0, 5.0)


def test_mid_window_decisions_see_fed_sends_by_send_time() -> None:
    # measure_time on: an episode of 429s over fed sends is measured by send time.
    # Sends at 20/s, each answered 0.5 s later, every other one a 429: 10/s admitted.
    lim = AdaptiveLimiter(LimiterConfig(initial=20.0, measure_time=3.0, min_answers=10), now=0.0)
    events = [(k * 0.05, "send", k) for k in range(120)]
    events += [(k * 0.05 + 0.5, "answer", k) for k in range(120)]
    decisions = []
    for at, kind, k in sorted(events):
        if kind == "send":
            lim.count_send(at)
        elif (decision := lim.record(at, throttled=k % 2 == 1, sent_at=k * 0.05)) is not None:
            decisions.append(decision)
    [decision] = decisions
    assert decision.reason == "throttled"
    # The episode opened at the first 429's answer (0.55 s) and was judged 3 s later.
    assert decision.at == pytest.approx(3.55)
    assert decision.observed == pytest.approx(10.0, rel=0.05)


def test_learned_then_restored_carries_every_field() -> None:
    lim = limiter(probe_interval=1)
    throttled_to_ceiling_9(lim)
    # Clean (1 stray 429 in 200 answers is under 1 %), saturated: a probe.
    probe = window(lim, 10.0, sends=100, ok=199, throttled=1)
    assert lim.probing
    learned = lim.learned()
    assert learned == Learned(
        rate=pytest.approx(9.72),  # type: ignore[arg-type]
        ceiling=9.0,
        clean_windows=1,
        hold_band_windows=0,
        probing=True,
        before_probe=pytest.approx(8.82),  # type: ignore[arg-type]
        changed_at=probe.at,
        background=pytest.approx(0.3 * 0.005),  # type: ignore[arg-type]
    )
    other = limiter(probe_interval=1)
    other.restore(25.0, learned)
    assert other.learned() == learned
    assert other.rate == lim.rate and other.ceiling == 9.0 and other.probing
    # The probe it took over fails on its own, beyond the background it took over too
    # (0.0015 x 200 answers = 0.3 429s): back to the rate before it.
    answer(other, 26.0, ok=199, throttled=0)
    failed = other.record(26.0, throttled=True)
    assert failed is None
    failed = other.record(26.0, throttled=True)
    assert failed is not None and failed.reason == "probe failed"
    assert other.probing is False and other.rate == pytest.approx(8.82)


def test_restore_clamps_into_this_configs_bounds_and_starts_a_window() -> None:
    lim = limiter(minimum=2.0, maximum=30.0)
    lim.restore(
        7.0,
        Learned(
            rate=100.0,
            ceiling=0.5,
            clean_windows=-3,
            hold_band_windows=-1,
            probing=False,
            before_probe=0.1,
            changed_at=50.0,
        ),
    )
    learned = lim.learned()
    assert (learned.rate, learned.ceiling, learned.before_probe) == (30.0, 2.0, 2.0)
    assert (learned.clean_windows, learned.hold_band_windows) == (0, 0)
    # A change time in the future is brought back to now.
    assert learned.changed_at == 7.0
    # The window starts at the restore: answers before it are not in it.
    assert lim.adjust(8.0) is None


def test_restore_keeps_an_unknown_ceiling_unknown() -> None:
    lim = limiter()
    lim.restore(0.0, dataclasses.replace(limiter().learned(), ceiling=None, rate=12.0))
    assert lim.ceiling is None and lim.rate == 12.0


def test_follow_sets_rate_and_ceiling_and_the_queue_follows() -> None:
    lim = limiter(initial=10.0, minimum=1.0, maximum=40.0)
    tickets = [take(lim, 0.0) for _ in range(4)]
    lim.follow(0.0, 5.0, 6.0)
    assert (lim.rate, lim.ceiling) == (5.0, 6.0)
    assert lim.learned().changed_at == 0.0
    # The fourth ticket needed three more tokens: at 5/s that is 0.6 s, not 0.3 s.
    assert lim.delay(0.3, tickets[3]) == pytest.approx(0.3)
    lim.follow(1.0, 0.2, None)
    assert (lim.rate, lim.ceiling) == (1.0, None)
    lim.follow(2.0, 99.0, 0.1)
    assert (lim.rate, lim.ceiling) == (40.0, 1.0)
    assert lim.learned().changed_at == 2.0
    # A new window began at the change: too few answers yet, so nothing is judged.
    assert lim.adjust(3.0) is None


def test_follow_with_the_same_rate_keeps_the_window() -> None:
    lim = limiter(min_answers=10)
    send(lim, 0.0, 100)
    answer(lim, 5.0, ok=100, throttled=0)
    lim.follow(6.0, 10.0, None)
    assert lim.learned().changed_at == 0.0
    decision = lim.adjust(10.0)
    assert decision is not None and decision.answers == 100


def test_follow_ends_a_probe() -> None:
    lim = limiter(probe_interval=1)
    throttled_to_ceiling_9(lim)
    window(lim, 10.0, sends=100, ok=100, throttled=0)
    assert lim.probing
    lim.follow(21.0, 4.0, 9.0)
    assert lim.probing is False and lim.rate == 4.0


def test_count_send_leaves_out_sends_from_before_the_rate_changed() -> None:
    # A judge learns of sends in batches: those made before its last decision went at
    # the old rate and do not count in the window that decision started.
    lim = limiter(min_answers=10)
    throttled_to_ceiling_9(lim)
    changed = lim.learned().changed_at
    for k in range(30):
        lim.count_send(changed - 3.0 + k * 0.1)  # all before the change: left out
    for k in range(60):
        lim.count_send(changed + k * 0.1)
    answer(lim, changed + 6.0, ok=40, throttled=20)
    decision = lim.adjust(changed + 6.0)
    assert decision is not None and decision.reason == "throttled"
    # Admitted: (60 sends - 20 refused) / 6 s. Counting the early 30 would read 11.7/s.
    assert decision.observed == pytest.approx(40 / 6)
