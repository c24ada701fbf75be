"""Benchmark: the adaptive limiter against an upstream whose hidden limit moves.

A discrete-event simulation on virtual time (no trio, no sockets; the whole run takes
seconds). The upstream is a token bucket whose rate steps 20 -> 40 -> 15 -> 20 req/s,
each held for about ten minutes, with a burst of one second's worth of tokens. Demand
comes from closed-loop agents, far more than any of those limits can serve: each agent
sends a request, waits for the whole answer, thinks, and sends the next (400 agents:
about 55 req/s unthrottled). A 429 comes back in 0.05-0.25 s, a success's status line
in 0.3-1.5 s and the rest of its answer 2-8 s later. The shifts fall mid-window. Every
request goes through the proxy's path: up to 1 + MAX_RETRIES attempts, 429s retried
after 1, 2, 4 s, each attempt taking its turn in the limiter (when there is one) and
reporting its answer with `record(..., sent_at=...)`.

Three proxies side by side:

* adaptive: `AdaptiveLimiter` with the seed's defaults (PROBE_INTERVAL=10), and again
  with PROBE_INTERVAL=1 (probing after every clean window);
* static: the same bucket held at RATE_LIMIT_INITIAL (10 req/s), never adjusted;
* retry-only: no limiter; 429s are only retried.

Figures per proxy:

* used: successful answers / the hidden limit integrated over the run (the share of
  what the upstream would have served); "steady" counts only the stretches after each
  shift was tracked;
* 429s: share of upstream answers that were 429;
* client errors: requests that failed (retries exhausted, or turned away by the
  limiter because the wait would pass MAX_WAIT), as a share of requests;
* tracking: for the start and each shift, the windows (30 s) from the change until
  "tracked": the first moment from which the next window's goodput is at least 95 %
  of the new limit *and* at most 1 % of its answers are 429s. "-" = never.

Run: `python bench/limiter.py` (`--sensitivity` adds the tuned limiter in other worlds:
other upstream bursts, slower 429s, stray 429s, more or less demand; `-v` prints every
limiter decision).
"""

from __future__ import annotations

import heapq
import math
import random
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from zai_proxy.proxy import AdaptiveLimiter, Adjustment, LimiterConfig

Mode = Literal["adaptive", "static", "retry-only"]

# A process yields the seconds it sleeps; the scheduler resumes it that much later.
Process = Generator[float, None, None]


@dataclass(frozen=True)
class Scenario:
    """The world the proxy runs in."""

    # (seconds, hidden limit in req/s). Shifts fall mid-window on purpose.
    phases: tuple[tuple[float, float], ...] = (
        (615.0, 20.0),
        (600.0, 40.0),
        (600.0, 15.0),
        (585.0, 20.0),
    )
    hidden_burst_seconds: float = 1.0
    agents: int = 400
    think: tuple[float, float] = (0.5, 2.0)
    # Status line of a successful answer (streaming: time to first byte).
    first_byte: tuple[float, float] = (0.3, 1.5)
    # Rest of a successful answer after its status line.
    generation: tuple[float, float] = (2.0, 8.0)
    throttled_latency: tuple[float, float] = (0.05, 0.25)
    # Share of admitted attempts answered 429 anyway (throttling the limit does not explain).
    stray_429: float = 0.0
    max_retries: int = 3
    backoff_base: float = 1.0
    # An agent whose request failed waits this long before its next one.
    error_pause: float = 5.0
    seed: int = 1

    @property
    def duration(self) -> float:
        return sum(seconds for seconds, _ in self.phases)

    def limit_at(self, t: float) -> float:
        end = 0.0
        for seconds, limit in self.phases:
            end += seconds
            if t < end:
                return limit
        return self.phases[-1][1]

    def shifts(self) -> list[tuple[float, float]]:
        """(time, new limit) of the start and of every change."""
        out, t = [], 0.0
        for seconds, limit in self.phases:
            out.append((t, limit))
            t += seconds
        return out


@dataclass
class Result:
    name: str
    duration: float
    capacity: float
    """The hidden limit integrated over the run: the most the upstream would serve."""
    successes: int = 0
    throttled: int = 0
    requests: int = 0
    exhausted: int = 0
    rejected: int = 0
    ok_bins: list[int] = field(default_factory=list)
    throttled_bins: list[int] = field(default_factory=list)
    rate_trace: list[float] = field(default_factory=list)
    adjustments: list[Adjustment] = field(default_factory=list)
    tracking: list[float | None] = field(default_factory=list)
    steady_used: float = math.nan

    @property
    def used(self) -> float:
        return self.successes / self.capacity

    @property
    def throttled_share(self) -> float:
        answers = self.successes + self.throttled
        return self.throttled / answers if answers else 0.0

    @property
    def errors(self) -> int:
        return self.exhausted + self.rejected

    @property
    def error_share(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class _HiddenBucket:
    def __init__(self, scenario: Scenario) -> None:
        self._scenario = scenario
        self._rate = scenario.limit_at(0.0)
        self._tokens = self._burst()
        self._last = 0.0

    def _burst(self) -> float:
        return max(1.0, self._rate * self._scenario.hidden_burst_seconds)

    def admit(self, now: float) -> bool:
        rate = self._scenario.limit_at(now)
        if rate != self._rate:
            self._tokens = min(self._tokens + (now - self._last) * self._rate, self._burst())
            self._last, self._rate = now, rate
            self._tokens = min(self._tokens, self._burst())
        self._tokens = min(self._burst(), self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class _Simulation:
    def __init__(
        self, name: str, mode: Mode, scenario: Scenario, config: LimiterConfig | None
    ) -> None:
        self.scenario = scenario
        self.mode = mode
        self.now = 0.0
        self.random = random.Random(scenario.seed)
        self.upstream = _HiddenBucket(scenario)
        self.limiter = AdaptiveLimiter(config, now=0.0) if config is not None else None
        bins = math.ceil(scenario.duration)
        capacity = sum(seconds * limit for seconds, limit in scenario.phases)
        self.result = Result(name, scenario.duration, capacity)
        self.result.ok_bins = [0] * bins
        self.result.throttled_bins = [0] * bins
        self._queue: list[tuple[float, int, Process]] = []
        self._seq = 0

    # -------------------------------------------------------------- scheduler

    def spawn(self, process: Process, delay: float = 0.0) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, process))

    def run(self) -> Result:
        end = self.scenario.duration
        while self._queue:
            at, _, process = heapq.heappop(self._queue)
            if at >= end:
                break
            self.now = at
            try:
                delay = next(process)
            except StopIteration:
                continue
            self._seq += 1
            heapq.heappush(self._queue, (at + delay, self._seq, process))
        return self.result

    def uniform(self, bounds: tuple[float, float]) -> float:
        return self.random.uniform(*bounds)

    # -------------------------------------------------------------- processes

    def agent(self) -> Process:
        yield self.uniform((0.0, self.scenario.think[1]))
        while True:
            pause = yield from self.request()
            yield pause if pause else self.uniform(self.scenario.think)

    def request(self) -> Generator[float, None, float]:
        """One client request through the proxy; returns how long the agent should
        pause before its next request (0 after a success)."""
        scenario, result = self.scenario, self.result
        result.requests += 1
        for attempt in range(scenario.max_retries + 1):
            if attempt:
                yield scenario.backoff_base * 2 ** (attempt - 1)
            if self.limiter is not None:
                ticket = self.limiter.reserve(self.now)
                if ticket is None:
                    result.rejected += 1
                    return max(1.0, self.limiter.retry_after(self.now))
                while (wait := self.limiter.delay(self.now, ticket)) > 0:
                    yield wait
            sent_at = self.now
            admitted = self.upstream.admit(sent_at)
            if admitted and not (scenario.stray_429 and self.random.random() < scenario.stray_429):
                yield self.uniform(scenario.first_byte)
                self._answer(False, sent_at)
                yield self.uniform(scenario.generation)
                return 0.0
            yield self.uniform(scenario.throttled_latency)
            self._answer(True, sent_at)
        result.exhausted += 1
        return scenario.error_pause

    def _answer(self, throttled: bool, sent_at: float) -> None:
        second = min(int(self.now), len(self.result.ok_bins) - 1)
        if throttled:
            self.result.throttled += 1
            self.result.throttled_bins[second] += 1
        else:
            self.result.successes += 1
            self.result.ok_bins[second] += 1
        if self.limiter is not None and self.mode == "adaptive":
            adjustment = self.limiter.record(self.now, throttled, sent_at)
            if adjustment is not None:
                self.result.adjustments.append(adjustment)

    def adjuster(self) -> Process:
        """The proxy's outer loop: one adjust() per window, on a fixed schedule."""
        assert self.limiter is not None
        window = self.limiter.config.window
        tick = 0
        while True:
            tick += 1
            yield tick * window - self.now
            adjustment = self.limiter.adjust(self.now)
            if adjustment is not None:
                self.result.adjustments.append(adjustment)

    def sampler(self) -> Process:
        while True:
            self.result.rate_trace.append(self.limiter.rate if self.limiter else math.nan)
            yield 1.0


def simulate(
    mode: Mode,
    scenario: Scenario | None = None,
    config: LimiterConfig | None = None,
    name: str | None = None,
) -> Result:
    """Run one proxy through the scenario. `config` is the limiter's (adaptive: the
    default LimiterConfig; static: held at its initial rate; retry-only: unused)."""
    scenario = scenario if scenario is not None else Scenario()
    if mode == "retry-only":
        config = None
    elif config is None:
        config = LimiterConfig()
    sim = _Simulation(name or mode, mode, scenario, config)
    for _ in range(scenario.agents):
        sim.spawn(sim.agent())
    if mode == "adaptive":
        sim.spawn(sim.adjuster())
    sim.spawn(sim.sampler())
    result = sim.run()
    _score(result, scenario, window=(config or LimiterConfig()).window)
    return result


def _score(result: Result, scenario: Scenario, window: float) -> None:
    """Fill in tracking and the steady share (see the module notes for definitions)."""
    span = int(window)
    ok, hits = result.ok_bins, result.throttled_bins
    ends = [t for t, _ in scenario.shifts()[1:]] + [scenario.duration]
    steady_ok = 0
    steady_capacity = 0.0
    for (start, limit), end in zip(scenario.shifts(), ends, strict=True):
        tracked: int | None = None
        for t in range(math.ceil(start), int(end) - span + 1):
            good = sum(ok[t : t + span])
            bad = sum(hits[t : t + span])
            if good >= 0.95 * limit * span and bad <= 0.01 * (good + bad):
                tracked = t
                break
        if tracked is None:
            result.tracking.append(None)
            continue
        result.tracking.append((tracked - start) / window)
        steady_ok += sum(ok[tracked : int(end)])
        steady_capacity += limit * (int(end) - tracked)
    if steady_capacity:
        result.steady_used = steady_ok / steady_capacity


def _table(results: list[Result], scenario: Scenario) -> Iterator[str]:
    shifts = scenario.shifts()
    labels = ["start"] + [
        f"{previous:g}->{limit:g}"
        for (_, previous), (_, limit) in zip(shifts, shifts[1:], strict=False)
    ]
    head = f"{'proxy':<30} {'used':>6} {'steady':>7} {'429s':>7} {'client errors':>17}"
    head += "  tracking in windows: " + " ".join(f"{label:>6}" for label in labels)
    yield head
    yield "-" * len(head)
    for r in results:
        tracking = " ".join(
            f"{'-' if value is None else f'{value:.1f}':>6}" for value in r.tracking
        )
        steady = "-" if math.isnan(r.steady_used) else f"{r.steady_used:.1%}"
        errors = f"{r.errors} ({r.error_share:.1%})"
        yield (
            f"{r.name:<30} {r.used:>6.1%} {steady:>7} {r.throttled_share:>7.2%} {errors:>17}"
            f"  {'':21} {tracking}"
        )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv
    scenario = Scenario()
    seed_defaults = LimiterConfig()
    tuned = LimiterConfig(probe_interval=1)
    runs: list[tuple[str, Mode, LimiterConfig | None]] = [
        ("adaptive, PROBE_INTERVAL=10", "adaptive", seed_defaults),
        ("adaptive, PROBE_INTERVAL=1", "adaptive", tuned),
        ("static 10 req/s", "static", seed_defaults),
        ("retry-only", "retry-only", None),
    ]
    results = [simulate(mode, scenario, config, name) for name, mode, config in runs]
    print(_describe(scenario))
    for line in _table(results, scenario):
        print(line)

    if "--sensitivity" in argv:
        # The tuned limiter in worlds other than the main one, one change at a time.
        variants: list[tuple[str, Scenario]] = [
            ("upstream burst 1 token", replace(scenario, hidden_burst_seconds=0.0)),
            ("upstream burst 3 s", replace(scenario, hidden_burst_seconds=3.0)),
            ("429s take 0.2-1 s", replace(scenario, throttled_latency=(0.2, 1.0))),
            ("0.5 % stray 429s", replace(scenario, stray_429=0.005)),
            ("1 % stray 429s", replace(scenario, stray_429=0.01)),
            ("800 agents", replace(scenario, agents=800)),
            ("200 agents (demand ~28/s)", replace(scenario, agents=200)),
            ("another seed", replace(scenario, seed=7)),
        ]
        print("\nPROBE_INTERVAL=1 in other worlds (one change each):")
        others = [simulate("adaptive", world, tuned, name) for name, world in variants]
        for line in _table(others, scenario):
            print(line)

    if verbose:
        for r in results:
            if not r.adjustments:
                continue
            print(f"\n{r.name}: decisions")
            for a in r.adjustments:
                if a.direction == "hold":
                    continue
                observed = "" if a.observed is None else f" observed {a.observed:.2f}"
                ceiling = "-" if a.ceiling is None else f"{a.ceiling:.2f}"
                print(
                    f"  t={a.at:7.1f} {a.direction:<8} {a.reason:<22} {a.old_rate:6.2f} ->"
                    f" {a.new_rate:6.2f} ceiling {ceiling} 429s {a.throttled_fraction:.1%}"
                    f" of {a.answers}{observed}"
                )


def _describe(scenario: Scenario) -> str:
    limits = " -> ".join(f"{limit:g}" for _, limit in scenario.phases)
    minutes = " / ".join(f"{seconds / 60:g}" for seconds, _ in scenario.phases)
    return (
        f"hidden limit {limits} req/s (held {minutes} min, burst"
        f" {scenario.hidden_burst_seconds:g} s of its rate), {scenario.agents} agents,"
        " window 30 s"
    )


if __name__ == "__main__":
    main()
