"""The global adaptive rate limiter: one token bucket for every upstream attempt, whose
rate learns the upstream's hidden limit from its 429s.

The class is pure: no I/O, no clock. Every method that needs the time takes `now` in
seconds (`trio.current_time()` in the proxy); successive calls must not go back in time.

Using it::

    ticket = limiter.reserve(trio.current_time())   # None: the wait would pass max_wait
    try:
        while True:
            wait = limiter.delay(trio.current_time(), ticket)   # 0.0: go now
            if wait == 0:
                break
            await trio.sleep(wait)
    except trio.Cancelled:
        limiter.cancel(trio.current_time(), ticket)
        raise
    sent_at = trio.current_time()
    ...send the attempt; at its status line:
    limiter.record(trio.current_time(), throttled=status == 429, sent_at=sent_at)

    # and one task, once per window (trio.sleep_until keeps the schedule):
    adjustment = limiter.adjust(trio.current_time())

The bucket
----------
A ticket is a place in one FIFO queue: ticket *k* may go once the bucket has produced
*k* tokens. Unlike a reservation with a fixed send time (Go's `rate.Limiter.Reserve`),
a queued ticket's turn follows the rate as it is *now*, so a decrease holds back
everyone already waiting at once; with fixed times, a queue 20 s deep would go on
sending at the old rate for 20 s after the upstream began refusing. So callers ask
`delay()` again after sleeping, and `delay()` never asks for more than `recheck`
seconds. A caller that wakes late never makes the queue faster than the rate (turns
are counted in tokens, not in times); it only leaves its slot unused for a moment.
`cancel()` gives a ticket's token back, moving everyone behind it up one turn.

The burst is one token by default: attempts leave evenly spaced, 1/rate apart. The
upstream's own bucket and its depth are hidden; whatever we send above its depth in
a burst comes back as 429s, and a deeper bucket here would only help after idle
time, when nobody is waiting anyway. Against LLM calls that take seconds, a spacing
of 1/rate costs callers nothing they would notice.

What the ceiling is made of
---------------------------
The observation is the *admitted rate* over a throttled stretch: (attempts sent - 429
answers) / seconds. While the upstream throttles us it admits its limit whatever
rate we set, so this measures the limit itself, where the rate we had set (the
seed's signal) only bounds it from above. Both counts are fast: sends are counted
here when a ticket goes, and 429s come back at once. Successful answers are not
counted: their status line can come late (a non-streaming answer's only after the
whole completion) and would credit the stretch with what was sent before the
throttling began. With `sent_at` on each answer, a mid-window stretch is measured by
send time (the sends from the first 429's send on, less the 429s among them), so
429s still on their way back do not skew it; answers to attempts sent before the
rate last changed are ignored altogether, as they tell about the old rate. A window
judged throttled at its end whose throttling began mid-window (its throttle episode
holds `min_answers` answers) reads the limit from that episode alone: before it, the
upstream's burst was still answering, and the whole window would read high.

When demand is below the set rate, a throttled stretch still measures what the
upstream admitted of the demand there was; it reads low only if demand dipped
below the limit during the stretch, and the next probe corrects that. A clean window
that used less than `saturation` of the bucket's tokens says nothing about the limit:
it never raises the rate above what is known and does not count towards a probe
(TCP's congestion-window validation, RFC 7661, for the same reason).

The reading assumes the upstream's bucket holds some burst (the bench uses one second
of its rate). A bucket with no burst at all admits an evenly paced sender that
overloads it at about half that sender's rate, not at its limit, so the limiter
reads such a limit low and climbs to it by probes, slowly.

The rules
---------
`adjust()` judges the window that ends when the outer loop calls it. A window with
fewer than `min_answers` answers changes nothing (the clean streak is neither broken
nor lengthened) and runs on into the next one until it holds enough answers, so a
rate too low to fill one window is still judged, over several; the short rest of a
window after a mid-window decision (under `measure_time`) runs on likewise. The 429
fraction is of the answers.

* Above 5 % (`decrease_above`): the ceiling takes the observation: the first one as
  it is, later ones by EWMA (`ceiling_alpha`), except that one more than
  `shift_tolerance` away replaces the estimate (the limit moved; averaging would
  only track it slowly). The rate drops to min(ceiling, observation) x (1 - hold_margin).
* From 1 % to 5 %: hold. After `hold_windows` such windows in a row the rate drops as
  above: a steady trickle of 429s means we sit just above the limit, where the
  seed's rule alone would stay for ever.
* Below 1 % (`clean_below`) with a ceiling known: the rate closes half the gap to the
  hold point, ceiling x (1 - hold_margin), each window; a gap under 1 % of the hold
  point is closed at once, so the rate settles instead of creeping. With no ceiling
  known, a saturated clean window multiplies the rate it proved (below) by
  `search_factor`.
* After `probe_interval` saturated clean windows comes a probe window at
  ceiling x (1 + probe_step). It ends at once, mid-window, at its first 429
  (`probe_abort`) beyond the background, the share of 429s the clean windows drew
  anyway (an EWMA), so stray 429s do not end every probe: back to the rate before the
  probe, ceiling kept (it was just confirmed). A failed probe thus costs one or two
  429s, which is what makes frequent probes affordable. A probe that stays clean and
  saturated *long enough* shows the limit has risen: the ceiling is forgotten and the
  rate searches upwards (x `search_factor` per clean window) until a throttled
  stretch measures the new limit.

What a clean window proves
--------------------------
Above its limit, the upstream's own bucket answers from its burst until that runs
dry, so a clean window of T seconds at rate r proves a limit of only
r x T / (T + upstream_burst), upstream_burst being the seconds of its limit the
upstream may hold. A probe 8 % above the ceiling needs 12.5 s to drain a one-second
burst: a probe window that has not proved more than the ceiling is not judged but
runs on (a 429 still ends it at once), and a search multiplies the proved rate, not
the rate set. Without this, a probe in a short window passes on the burst alone, the
ceiling is forgotten and the search doubles into a storm.
* Mid-window: a throttle episode, opened by a window's first 429, is judged
  `measure_time` seconds later. If more than 5 % of its answers were 429s (more than
  1 % while searching, when the rate sits above anything known to be safe), it counts
  as a throttled window at once, with its own observation, and a new window starts;
  the outer loop's schedule does not move. Without this, a drop of the limit or an
  overshooting search would cost a whole window of 429s. `measure_time = 0` turns
  mid-window decisions off.

The rate always stays within [minimum, maximum]; the ceiling never goes below minimum.

What comes back: `adjust()` returns an `Adjustment` for every window it judges
(direction "hold" when the rate did not change) and None for one it could not judge;
`record()` returns one only when it made a mid-window decision. Log and count both.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Adjustment",
    "AdaptiveLimiter",
    "Direction",
    "Learned",
    "LimiterConfig",
    "Reason",
    "Ticket",
]

Direction = Literal["increase", "decrease", "probe", "hold"]
Reason = Literal[
    "throttled",  # more than 5 % of answers were 429s (window or mid-window episode)
    "persistently throttled",  # hold_windows windows in a row with 1-5 % of 429s
    "slightly throttled",  # a first window with 1-5 % of 429s: hold
    "converge",  # clean: half the gap to the hold point
    "search",  # clean, no ceiling known: multiply the rate
    "probe",  # enough clean windows: try above the ceiling
    "probe failed",  # the probe drew 429s: back to the rate before it
    "probe passed",  # the probe stayed clean: the limit rose, search upwards
    "probe idle",  # too little demand in the probe window to tell: back to the rate before it
    "steady",  # clean, already at the hold point
    "idle",  # clean but demand below the rate: nothing learnt
]

# Send times kept beyond measure_time: longer than any 429 takes to come back.
_SEND_HISTORY = 60.0

# Float slack when comparing token counts, so a turn due "exactly now" is not
# reported as due in 1e-16 s.
_EPSILON = 1e-9


@dataclass(frozen=True)
class LimiterConfig:
    """Knobs of the limiter; the first eight are the seed's settings."""

    initial: float = 10.0
    """Starting rate, requests/s (RATE_LIMIT_INITIAL), also restored by reset()."""
    minimum: float = 1.0
    maximum: float = 50.0
    ceiling_alpha: float = 0.3
    """EWMA weight of a new ceiling observation."""
    hold_margin: float = 0.02
    """The hold point is this fraction below the ceiling."""
    probe_interval: int = 10
    """Saturated clean windows before a probe above the ceiling."""
    window: float = 30.0
    """Seconds between adjust() calls (the outer loop's period)."""
    max_wait: float = 30.0
    """Longest wait reserve() hands out before refusing."""
    burst: float = 1.0
    """Bucket depth in tokens: 1 paces attempts evenly (see the module notes)."""
    recheck: float = 1.0
    """Longest sleep delay() asks for, so queued callers see rate changes in time."""
    min_answers: int = 20
    """Answers a window (or a mid-window episode) needs before it is judged."""
    decrease_above: float = 0.05
    """429 fraction above which the rate drops to the hold point."""
    clean_below: float = 0.01
    """429 fraction below which a window is clean."""
    hold_windows: int = 3
    """Consecutive 1-5 % windows after which the rate drops as if above 5 %; 0 = never."""
    probe_step: float = 0.08
    """A probe runs at ceiling x (1 + probe_step)."""
    probe_abort: int = 1
    """429s beyond the background (what the clean windows before it drew) that end a
    probe."""
    search_factor: float = 2.0
    """Rate multiplier per clean window while no ceiling is known, applied to the rate
    the window proved (see upstream_burst)."""
    measure_time: float = 3.0
    """Seconds a throttle episode is watched before a mid-window decision; 0 = never."""
    shift_tolerance: float = 0.05
    """Relative distance beyond which an observation replaces the ceiling."""
    saturation: float = 0.9
    """Share of the bucket's tokens a clean window must use to count as evidence."""
    upstream_burst: float = 1.0
    """Seconds of its limit the upstream's own bucket may hold. A clean stretch of T
    seconds at rate r proves a limit of only r x T / (T + upstream_burst): above the
    limit, the upstream's burst answers for a while before the first 429."""

    def __post_init__(self) -> None:
        positive = {
            "minimum": self.minimum,
            "window": self.window,
            "recheck": self.recheck,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not self.maximum >= self.minimum:
            raise ValueError(f"maximum must be >= minimum ({self.minimum!r}), got {self.maximum!r}")
        if not self.minimum <= self.initial <= self.maximum:
            raise ValueError(
                f"initial must be within [minimum, maximum] = "
                f"[{self.minimum!r}, {self.maximum!r}], got {self.initial!r}"
            )
        if not 0 < self.ceiling_alpha <= 1:
            raise ValueError(f"ceiling_alpha must be in (0, 1], got {self.ceiling_alpha!r}")
        if not 0 <= self.hold_margin < 1:
            raise ValueError(f"hold_margin must be in [0, 1), got {self.hold_margin!r}")
        if self.probe_interval < 1:
            raise ValueError(f"probe_interval must be >= 1, got {self.probe_interval!r}")
        if not self.max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0, got {self.max_wait!r}")
        if not self.burst >= 1:
            raise ValueError(f"burst must be >= 1 token, got {self.burst!r}")
        if self.min_answers < 1:
            raise ValueError(f"min_answers must be >= 1, got {self.min_answers!r}")
        if not 0 <= self.clean_below <= self.decrease_above < 1:
            raise ValueError(
                "need 0 <= clean_below <= decrease_above < 1, got "
                f"clean_below={self.clean_below!r}, decrease_above={self.decrease_above!r}"
            )
        if not self.probe_step > 0:
            raise ValueError(f"probe_step must be > 0, got {self.probe_step!r}")
        if self.hold_windows < 0:
            raise ValueError(f"hold_windows must be >= 0, got {self.hold_windows!r}")
        if self.probe_abort < 1:
            raise ValueError(f"probe_abort must be >= 1, got {self.probe_abort!r}")
        if not self.search_factor > 1:
            raise ValueError(f"search_factor must be > 1, got {self.search_factor!r}")
        if not self.measure_time >= 0:
            raise ValueError(f"measure_time must be >= 0, got {self.measure_time!r}")
        if not self.shift_tolerance >= 0:
            raise ValueError(f"shift_tolerance must be >= 0, got {self.shift_tolerance!r}")
        if not 0 <= self.saturation <= 1:
            raise ValueError(f"saturation must be in [0, 1], got {self.saturation!r}")
        if not self.upstream_burst >= 0:
            raise ValueError(f"upstream_burst must be >= 0, got {self.upstream_burst!r}")


@dataclass(frozen=True)
class Ticket:
    """A place in the limiter's queue, from reserve()."""

    number: int
    wait: float
    """The wait estimated when it was handed out, at the rate of that moment."""


@dataclass(frozen=True)
class Adjustment:
    """One decision, for the log and the adjustments counter (label: direction)."""

    at: float
    direction: Direction
    reason: Reason
    old_rate: float
    new_rate: float
    ceiling: float | None
    """The ceiling estimate after the decision; None while unknown."""
    observed: float | None
    """The admitted rate measured in a throttled stretch, when this decision used one."""
    throttled_fraction: float
    answers: int
    seconds: float
    """Length of the stretch judged."""


@dataclass(frozen=True)
class Learned:
    """What the limiter has learnt, without its bucket or its current window: what a
    shared limiter publishes, and what a replica that takes over judging restores."""

    rate: float
    ceiling: float | None
    clean_windows: int
    hold_band_windows: int
    probing: bool
    before_probe: float
    changed_at: float
    """When the rate last changed: answers to attempts sent before it are ignored."""
    background: float = 0.0
    """The share of 429s clean windows draw anyway (EWMA): a probe must draw more."""


class _Episode:
    """A run of throttled answers, watched for measure_time from its first 429."""

    def __init__(self, start: float, sent_at: float | None, sent: int) -> None:
        self.start = start
        # Answers after the first 429, which opened the episode: its own attempt was
        # sent before, so it is not weighed against the sends that follow.
        self.answers = 0
        self.throttled = 0
        self.sent = sent
        # By send time: the stretch starts at the first 429's send; every 429 sent in
        # it is known once the slowest 429 seen so far has had time to come back.
        self.timed = sent_at is not None
        self.since = start if sent_at is None else sent_at
        self.hits_sent: list[float] = [] if sent_at is None else [sent_at]
        self.lag = 0.0 if sent_at is None else start - sent_at

    def count(self, now: float, throttled: bool, sent_at: float | None) -> None:
        self.answers += 1
        if not throttled:
            return
        self.throttled += 1
        if sent_at is None:
            self.timed = False
        else:
            self.hits_sent.append(sent_at)
            self.lag = max(self.lag, now - sent_at)

    def admitted_rate(self, now: float, sent: int, send_times: deque[float]) -> float:
        """Attempts the upstream let through per second during the episode."""
        end = now - self.lag
        if self.timed and end > self.since:
            sends = bisect_right(send_times, end) - bisect_left(send_times, self.since)
            hits = sum(1 for t in self.hits_sent if self.since <= t <= end)
            return (sends - hits) / (end - self.since)
        return (sent - self.sent - self.throttled) / (now - self.start)


class AdaptiveLimiter:
    """One token bucket for all upstream attempts, with the rate adjusted per window."""

    def __init__(self, config: LimiterConfig | None = None, *, now: float = 0.0) -> None:
        self._config = config if config is not None else LimiterConfig()
        self._rate = self._config.initial
        self._ceiling: float | None = None
        self._clean_windows = 0
        self._hold_band_windows = 0
        self._probing = False
        # Where a failed probe returns to.
        self._before_probe = self._rate
        # The 429 share clean windows draw anyway (stray 429s), so a probe is not
        # failed by one of those.
        self._background = 0.0
        # The bucket: tokens produced so far (never more than `burst` ahead of the
        # tickets handed out) and tickets handed out. Ticket k may go once produced >= k.
        self._last = now
        self._produced = self._config.burst
        self._issued = 0
        self._waiting: set[int] = set()
        self._sent = 0
        self._changed_at = now
        # The current window (see _start_window) and its throttle episode.
        self._window_start = now
        self._window_first: float | None = None
        self._window_sent = 0
        self._capacity = 0.0
        self._answers = 0
        self._throttled = 0
        self._episode: _Episode | None = None
        # When recent attempts went, for measuring episodes by send time.
        self._send_times: deque[float] = deque()
        self._start_window(now)

    # ------------------------------------------------------------------ reading

    @property
    def config(self) -> LimiterConfig:
        return self._config

    @property
    def rate(self) -> float:
        """Requests per second the bucket hands out now."""
        return self._rate

    @property
    def ceiling(self) -> float | None:
        """Estimated upstream limit, requests/s; None until a throttled stretch measured it."""
        return self._ceiling

    @property
    def hold_point(self) -> float | None:
        """Where the rate settles under a known ceiling."""
        if self._ceiling is None:
            return None
        return self._clamp(self._ceiling * (1 - self._config.hold_margin))

    @property
    def clean_windows(self) -> int:
        """Saturated clean windows counted towards the next probe."""
        return self._clean_windows

    @property
    def probing(self) -> bool:
        return self._probing

    @property
    def queued(self) -> int:
        """Tickets handed out that have neither gone nor been cancelled."""
        return len(self._waiting)

    # ------------------------------------------------------------------ the bucket

    def reserve(self, now: float, max_wait: float | None = None) -> Ticket | None:
        """Take the next place in the queue, or None (taking nothing) if its wait at the
        current rate would exceed max_wait (default: config.max_wait)."""
        now = self._advance(now)
        limit = self._config.max_wait if max_wait is None else max_wait
        number = self._issued + 1
        wait = self._wait_for(number)
        if wait > limit:
            return None
        self._issued = number
        self._waiting.add(number)
        self._touch_window(now)
        return Ticket(number, wait)

    def delay(self, now: float, ticket: Ticket) -> float:
        """Seconds to sleep before asking again; 0.0 means send now (and the ticket is
        spent: do not ask again or cancel it). Never more than config.recheck."""
        now = self._advance(now)
        wait = self._wait_for(ticket.number)
        if wait > 0:
            return min(wait, self._config.recheck)
        if ticket.number in self._waiting:
            self._waiting.discard(ticket.number)
            self._count_send(now)
        return 0.0

    def count_send(self, now: float) -> None:
        """Count one attempt let through by a bucket other than this one's.

        A shared limiter's judge feeds every replica's sends here (and their answers to
        record()), so the window statistics are the same as if one bucket had sent them.
        Sends reach it late, in batches: one made before the rate last changed went at
        the old rate and is left out of the new window, as its answer will be."""
        if now < self._changed_at:
            return
        now = self._advance(now)
        self._touch_window(now)
        self._count_send(now)

    def cancel(self, now: float, ticket: Ticket) -> None:
        """Give back a ticket that will not be used (the client went away while waiting).

        Its token returns to the bucket, so everyone queued behind moves up one turn.
        Cancelling a spent or already cancelled ticket does nothing."""
        now = self._advance(now)
        if ticket.number not in self._waiting:
            return
        self._waiting.discard(ticket.number)
        self._produced = min(self._produced + 1, self._issued + self._config.burst)

    def retry_after(self, now: float) -> float:
        """Seconds until a new caller would be let through without waiting: the value
        for a Retry-After header (rounding it up to whole seconds is the caller's job)."""
        self._advance(now)
        return self._wait_for(self._issued + 1)

    # ------------------------------------------------------------------ learning

    def record(
        self, now: float, throttled: bool, sent_at: float | None = None
    ) -> Adjustment | None:
        """Count one upstream answer (throttled: it was a 429).

        `sent_at` is the time the attempt was let through (when delay() said 0). Give it:
        it lets a throttle episode be measured by send time, so 429s still on their way
        back do not skew the admitted rate; without it the episode is measured by
        answer time.

        Returns an Adjustment when this answer settled a mid-window decision: a probe
        that failed, or a throttle episode that reached measure_time."""
        now = self._advance(now)
        if sent_at is not None and sent_at < self._changed_at:
            # Sent before the rate last changed: it tells about the old rate.
            return None
        self._touch_window(now)
        self._answers += 1
        self._throttled += throttled
        config = self._config
        if self._probing:
            if self._throttled - self._background * self._answers >= config.probe_abort:
                return self._change(
                    now,
                    "probe failed",
                    self._before_probe,
                    observed=None,
                    fraction=self._throttled / self._answers,
                    answers=self._answers,
                    seconds=now - self._window_began(),
                )
            return None
        if config.measure_time <= 0:
            return None
        episode = self._episode
        if episode is None:
            if throttled:
                self._episode = _Episode(now, sent_at, self._sent)
            return None
        episode.count(now, throttled, sent_at)
        seconds = now - episode.start
        if seconds < config.measure_time:
            return None
        answers, hits = episode.answers, episode.throttled
        # While searching, the rate sits above anything known to be safe, so any real
        # throttling is the limit showing itself, not noise to ride out.
        threshold = config.decrease_above if self._ceiling is not None else config.clean_below
        if answers >= config.min_answers and hits > threshold * answers:
            observed = episode.admitted_rate(now, self._sent, self._send_times)
            return self._decrease(now, "throttled", observed, hits / answers, answers, seconds)
        # Scattered 429s, not a storm: let the window judge them.
        self._episode = None
        return None

    def adjust(self, now: float) -> Adjustment | None:
        """Judge the window that ends now (see the module notes) and start the next.

        None when the window had fewer than min_answers answers: nothing changed."""
        now = self._advance(now)
        config = self._config
        answers, hits = self._answers, self._throttled
        seconds = now - self._window_began()
        if seconds < config.measure_time or seconds <= 0:
            # What is left of a window after a mid-window decision: too short to read
            # a rate from, so it runs on into the next window.
            return None
        if answers < config.min_answers:
            # Too few to judge: the window runs on and gathers answers until it has
            # enough. Restarting it would throw them away, and a rate so low that one
            # window never holds min_answers (1 req/s in a 10 s window) would then
            # never be judged again: stuck below a limit it could never probe.
            return None
        fraction = hits / answers
        sent = self._sent - self._window_sent
        saturated = self._capacity > 0 and sent >= config.saturation * self._capacity
        observed = (sent - hits) / seconds

        proven = self._proven(seconds)
        if self._probing:
            if fraction < config.clean_below and saturated:
                ceiling = self._ceiling
                if ceiling is not None and proven <= ceiling and self._rate < config.maximum:
                    # Clean so far, but the upstream's burst may be what let the probe
                    # through: the probe runs on until it has outlasted that burst.
                    return None
                self._ceiling = None
                self._clean_windows = 0
                new = max(self._rate, proven * config.search_factor)
                return self._change(now, "probe passed", new, None, fraction, answers, seconds)
            if fraction < config.clean_below:
                # Too little demand to tell; the streak stays, so a busy window retries.
                return self._change(
                    now, "probe idle", self._before_probe, None, fraction, answers, seconds
                )
            return self._change(
                now, "probe failed", self._before_probe, None, fraction, answers, seconds
            )

        if fraction > config.decrease_above:
            episode = self._episode
            if (
                episode is not None
                and episode.answers >= config.min_answers
                and now > episode.start
            ):
                # The throttling began mid-window: before it, the upstream's burst was
                # still answering, so the whole window's reading is too high. The
                # episode measures from the first 429's send, when that burst was gone.
                observed = episode.admitted_rate(now, self._sent, self._send_times)
            return self._decrease(now, "throttled", observed, fraction, answers, seconds)

        if fraction >= config.clean_below:
            self._clean_windows = 0
            self._hold_band_windows += 1
            if 0 < config.hold_windows <= self._hold_band_windows:
                return self._decrease(
                    now, "persistently throttled", observed, fraction, answers, seconds
                )
            return self._change(
                now, "slightly throttled", self._rate, None, fraction, answers, seconds
            )

        self._hold_band_windows = 0
        self._background += config.ceiling_alpha * (fraction - self._background)
        if self._ceiling is None:
            if saturated:
                new = max(self._rate, proven * config.search_factor)
                return self._change(now, "search", new, None, fraction, answers, seconds)
            return self._change(now, "idle", self._rate, None, fraction, answers, seconds)

        hold = self._hold_rate()
        new = self._rate
        reason: Reason = "steady" if saturated else "idle"
        if new != hold:
            reason = "converge"
            new = hold if new > hold else new + (hold - new) / 2
            if hold - new < 0.01 * hold:
                new = hold
        if saturated:
            self._clean_windows += 1
        probe = self._clamp(self._ceiling * (1 + config.probe_step))
        if self._clean_windows >= config.probe_interval and probe > new:
            self._probing = True
            self._before_probe = new
            return self._change(now, "probe", probe, None, fraction, answers, seconds)
        return self._change(now, reason, new, None, fraction, answers, seconds)

    def learned(self) -> Learned:
        return Learned(
            rate=self._rate,
            ceiling=self._ceiling,
            clean_windows=self._clean_windows,
            hold_band_windows=self._hold_band_windows,
            probing=self._probing,
            before_probe=self._before_probe,
            changed_at=self._changed_at,
            background=self._background,
        )

    def restore(self, now: float, learned: Learned) -> None:
        """Take over what another limiter learnt (clamped to this config's bounds) and
        start a new window. Callers already queued keep their places."""
        now = self._advance(now)
        self._rate = self._clamp(learned.rate)
        ceiling = learned.ceiling
        self._ceiling = None if ceiling is None else max(ceiling, self._config.minimum)
        self._clean_windows = max(learned.clean_windows, 0)
        self._hold_band_windows = max(learned.hold_band_windows, 0)
        self._probing = learned.probing
        self._before_probe = self._clamp(learned.before_probe)
        self._changed_at = min(learned.changed_at, now)
        self._background = min(max(learned.background, 0.0), 1.0)
        self._start_window(now)

    def follow(self, now: float, rate: float, ceiling: float | None) -> None:
        """Set the rate (clamped to [minimum, maximum]) and the ceiling from outside: a
        replica's local bucket follows its share of the shared rate this way. A rate that
        changes starts a new window, as any change does; the streaks are kept."""
        now = self._advance(now)
        new = self._clamp(rate)
        self._ceiling = None if ceiling is None else max(ceiling, self._config.minimum)
        if new != self._rate:
            self._rate = new
            self._changed_at = now
            self._probing = False
            self._start_window(now)

    def reset(self, now: float) -> None:
        """Back to the initial rate: forget the ceiling, the streaks and the window.

        Callers already queued keep their places; their turns follow the new rate."""
        now = self._advance(now)
        self._changed_at = now
        self._rate = self._config.initial
        self._ceiling = None
        self._clean_windows = 0
        self._hold_band_windows = 0
        self._probing = False
        self._background = 0.0
        self._start_window(now)

    # ------------------------------------------------------------------ internals

    def _advance(self, now: float) -> float:
        """Produce the tokens due since the last call; return the (monotonic) time."""
        if now <= self._last:
            return self._last
        produced = self._rate * (now - self._last)
        if self._window_first is not None:
            self._capacity += produced
        self._produced = min(self._produced + produced, self._issued + self._config.burst)
        self._last = now
        return now

    def _wait_for(self, number: int) -> float:
        missing = number - self._produced
        if missing <= _EPSILON:
            return 0.0
        return missing / self._rate

    def _count_send(self, now: float) -> None:
        self._sent += 1
        self._send_times.append(now)
        horizon = now - self._config.measure_time - _SEND_HISTORY
        while self._send_times[0] < horizon:
            self._send_times.popleft()

    def _clamp(self, rate: float) -> float:
        return min(self._config.maximum, max(self._config.minimum, rate))

    def _proven(self, seconds: float) -> float:
        """The limit a clean window of `seconds` at the current rate proves (see
        LimiterConfig.upstream_burst)."""
        return self._rate * seconds / (seconds + self._config.upstream_burst)

    def _hold_rate(self) -> float:
        hold = self.hold_point
        return self._rate if hold is None else hold

    def _start_window(self, now: float) -> None:
        self._window_start = now
        # A window's clock starts at its first request, so idle time before it (or a
        # limiter built before the clock it is fed) does not dilute the admitted rate.
        self._window_first = None
        self._window_sent = self._sent
        self._capacity = 0.0
        self._answers = 0
        self._throttled = 0
        self._episode = None

    def _touch_window(self, now: float) -> None:
        if self._window_first is None:
            self._window_first = now

    def _window_began(self) -> float:
        return self._window_start if self._window_first is None else self._window_first

    def _decrease(
        self,
        now: float,
        reason: Reason,
        observed: float,
        fraction: float,
        answers: int,
        seconds: float,
    ) -> Adjustment:
        config = self._config
        observed = max(observed, config.minimum)
        ceiling = self._ceiling
        if ceiling is None or abs(observed - ceiling) > config.shift_tolerance * ceiling:
            ceiling = observed
        else:
            ceiling = config.ceiling_alpha * observed + (1 - config.ceiling_alpha) * ceiling
        self._ceiling = ceiling
        self._clean_windows = 0
        self._hold_band_windows = 0
        new = min(ceiling, observed) * (1 - config.hold_margin)
        return self._change(now, reason, new, observed, fraction, answers, seconds)

    def _change(
        self,
        now: float,
        reason: Reason,
        new_rate: float,
        observed: float | None,
        fraction: float,
        answers: int,
        seconds: float,
    ) -> Adjustment:
        """Apply a decision: set the rate, start a new window, describe what happened."""
        old = self._rate
        new = self._clamp(new_rate)
        if reason in ("probe failed", "probe passed", "probe idle"):
            self._probing = False
        if reason == "probe failed":
            self._clean_windows = 0
        direction: Direction
        if reason == "probe":
            direction = "probe"
        elif math.isclose(new, old, rel_tol=0.0, abs_tol=_EPSILON):
            direction = "hold"
        else:
            direction = "increase" if new > old else "decrease"
        if new != old:
            self._changed_at = now
        self._rate = new
        self._start_window(now)
        return Adjustment(
            at=now,
            direction=direction,
            reason=reason,
            old_rate=old,
            new_rate=new,
            ceiling=self._ceiling,
            observed=observed,
            throttled_fraction=fraction,
            answers=answers,
            seconds=seconds,
        )
