"""`zai-proxy loadtest URL [--compare URL2]`: the seeds' load test, and the canary's
go/no-go.

N simulated agents (the demo's agent model: `sim.agents.PROFILES` and `build_request`,
so the mix of streaming and not, short and long prompts and cached system prompts is the
demo's) each send their next request as soon as the last one is answered, for
`--duration` seconds or `--requests` requests.  A 429 is honoured (its Retry-After,
capped as the demo's agents cap it) and the same request sent again, as the SDKs do; a
503 likewise after a short pause.  Every attempt is one row of the final table.

With `--compare URL2` both targets get the same agents, side by side and at the same
time, and each agent sends the same requests in the same order to both (a request's
body never depends on what came back), so the token counts of request k of agent i
can be compared one to one.  The verdict applies the canary alert rules of
deploy/prometheus/rules.yml to what the two runs saw: `THRESHOLDS` holds their numbers,
and a test reads them back from the rules file.

What counts as an error is what the rules count (a 5xx), plus what a client sees and a
status code hides: no answer at all (connection error, timeout), and a stream that
carried an error event or ended unfinished.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import trio

from ..dashboard.promparse import parse as parse_exposition
from ..proxy.tokenizer import relative_error
from ..proxy.usage import SSEUsageTracker, usage_from_json
from ..sim.agents import PROFILES, build_request, retry_after_seconds
from .check import CLIENT_TOKEN
from .report import format_table, percentile, seconds, share

__all__ = [
    "THRESHOLDS",
    "Criterion",
    "Run",
    "Sample",
    "Summary",
    "Thresholds",
    "Verdict",
    "format_summaries",
    "format_verdict",
    "run",
    "run_load",
    "summarize",
    "token_delta",
    "verdict",
]

_PROGRESS_EVERY = 0.5
_RETRY_STATUSES = (429, 503)
_OVERLOADED_PAUSE = (0.2, 0.5)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The go/no-go limits: the numbers of the `zai-proxy-canary` alert group."""

    max_error_rate: float = 0.05
    """ZaiProxyCanaryHighErrorRate: canary errors over 5 % of requests."""
    error_ratio: float = 2.0
    error_floor: float = 0.01
    """ZaiProxyCanaryDegradedVsProduction: canary > 2 x (production + 1 %)."""
    max_p95_s: float = 10.0
    """ZaiProxyCanaryHighLatency: canary p95 above 10 s."""
    p95_ratio: float = 1.5
    """ZaiProxyCanarySlowerThanProduction: canary p95 above 1.5 x production's."""
    max_token_delta: float = 0.10
    """Token counts of the same requests apart by more than 10 % on average: seed 003's
    expected variance of cl100k against GLM-4.  No alert rule reads per-request counts,
    so this one number comes from the seed, not rules.yml."""


THRESHOLDS = Thresholds()


# --------------------------------------------------------------------------- pure core


@dataclass(frozen=True, slots=True)
class Sample:
    """One attempt and what came of it."""

    key: tuple[int, int]
    """(agent, request number): the same body on every target."""
    stream: bool
    status: int | None
    """None: no answer (connection error or timeout)."""
    latency: float
    ttft: float | None = None
    """Streams only: seconds to the first byte of the body."""
    output_tokens: int = 0
    token_input: int | None = None
    """The X-Token-Input header, when the answer had one."""
    broken_stream: bool = False
    retry: bool = False

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500 or self.broken_stream


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    statuses: dict[str, int]
    """Status code -> attempts; "no answer" for none."""
    errors: int
    error_rate: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    ttft_p50: float | None
    ttft_p95: float | None
    output_tokens: int
    tokens_per_s: float | None
    rate_limited: int
    retries: int
    """Attempts this tool sent again after a 429 or 503."""
    proxy_retries: float | None
    """The proxy's own upstream retries during the run (from its /metrics), if readable."""
    elapsed: float


def summarize(
    samples: Sequence[Sample], elapsed: float, proxy_retries: float | None = None
) -> Summary:
    """The table's figures for one target.  Latency covers every answered attempt (the
    rules' histogram covers every status); TTFT every stream that answered 200."""
    statuses = Counter("no answer" if s.status is None else str(s.status) for s in samples)
    answered = [s.latency for s in samples if s.status is not None]
    ttfts = [s.ttft for s in samples if s.ttft is not None and s.status == 200]
    errors = sum(s.failed for s in samples)
    tokens = sum(s.output_tokens for s in samples)
    return Summary(
        requests=len(samples),
        statuses=dict(sorted(statuses.items())),
        errors=errors,
        error_rate=errors / len(samples) if samples else None,
        latency_p50=percentile(answered, 0.50),
        latency_p95=percentile(answered, 0.95),
        latency_p99=percentile(answered, 0.99),
        ttft_p50=percentile(ttfts, 0.50),
        ttft_p95=percentile(ttfts, 0.95),
        output_tokens=tokens,
        tokens_per_s=tokens / elapsed if elapsed > 0 else None,
        rate_limited=statuses.get("429", 0),
        retries=sum(s.retry for s in samples),
        proxy_retries=proxy_retries,
        elapsed=elapsed,
    )


def token_delta(production: Sequence[Sample], canary: Sequence[Sample]) -> tuple[float | None, int]:
    """Mean |canary - production| / production of X-Token-Input over the requests both
    answered with a success, and how many there were.  A request production counted
    and the canary answered without the header counts as 100 % apart."""
    counted = {s.key: s.token_input for s in production if s.status == 200 and s.token_input}
    deltas = []
    for sample in canary:
        expected = counted.get(sample.key)
        if expected is None or sample.status != 200:
            continue
        if sample.token_input is None:
            deltas.append(1.0)
        else:
            deltas.append(abs(relative_error(sample.token_input, expected)))
    return (sum(deltas) / len(deltas) if deltas else None), len(deltas)


@dataclass(frozen=True, slots=True)
class Criterion:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    go: bool
    criteria: tuple[Criterion, ...]


def verdict(
    production: Summary,
    canary: Summary,
    delta: float | None,
    thresholds: Thresholds = THRESHOLDS,
) -> Verdict:
    """GO when the canary passes every rule against production; NO-GO otherwise, and
    when either side answered nothing (there is nothing to judge then)."""
    t = thresholds
    criteria: list[Criterion] = []
    p_err, c_err = production.error_rate, canary.error_rate
    p_p95, c_p95 = production.latency_p95, canary.latency_p95
    if p_err is None or c_err is None or p_p95 is None or c_p95 is None:
        empty = "production" if p_err is None or p_p95 is None else "canary"
        return Verdict(False, (Criterion("traffic", False, f"{empty} answered no request"),))
    criteria.append(
        Criterion(
            "error rate",
            c_err <= t.max_error_rate,
            f"canary {share(c_err)} (limit {share(t.max_error_rate)})",
        )
    )
    relative_limit = t.error_ratio * (p_err + t.error_floor)
    criteria.append(
        Criterion(
            "errors vs production",
            c_err <= relative_limit,
            f"canary {share(c_err)}, production {share(p_err)} "
            f"(limit {t.error_ratio:g} x ({share(p_err)} + {share(t.error_floor)}) "
            f"= {share(relative_limit)})",
        )
    )
    criteria.append(
        Criterion(
            "p95 latency",
            c_p95 <= t.max_p95_s,
            f"canary {seconds(c_p95)} (limit {seconds(t.max_p95_s)})",
        )
    )
    criteria.append(
        Criterion(
            "p95 vs production",
            c_p95 <= t.p95_ratio * p_p95,
            f"canary {seconds(c_p95)}, production {seconds(p_p95)} "
            f"(limit {t.p95_ratio:g} x = {seconds(t.p95_ratio * p_p95)})",
        )
    )
    if delta is None:
        criteria.append(
            Criterion("token counts", True, "no request both answered with X-Token-Input")
        )
    else:
        criteria.append(
            Criterion(
                "token counts",
                delta <= t.max_token_delta,
                f"X-Token-Input apart by {share(delta)} on average "
                f"(limit {share(t.max_token_delta)})",
            )
        )
    return Verdict(all(c.ok for c in criteria), tuple(criteria))


def format_summaries(named: Sequence[tuple[str, Summary]]) -> str:
    """The final table: one column per target."""
    statuses = sorted({code for _, s in named for code in s.statuses}, key=_status_order)

    def row(label: str, cell: Callable[[Summary], str]) -> list[str]:
        return [label, *(cell(s) for _, s in named)]

    def status_count(code: str) -> Callable[[Summary], str]:
        return lambda s: str(s.statuses.get(code, 0))

    rows = [
        row("requests", lambda s: str(s.requests)),
        *(row(f"  {code}", status_count(code)) for code in statuses),
        row("errors", lambda s: f"{s.errors} ({share(s.error_rate)})"),
        row("latency p50", lambda s: seconds(s.latency_p50)),
        row("latency p95", lambda s: seconds(s.latency_p95)),
        row("latency p99", lambda s: seconds(s.latency_p99)),
        row("TTFT p50 (streams)", lambda s: seconds(s.ttft_p50)),
        row("TTFT p95 (streams)", lambda s: seconds(s.ttft_p95)),
        row(
            "output tokens/s",
            lambda s: "-" if s.tokens_per_s is None else f"{s.tokens_per_s:.0f}",
        ),
        row("429s seen", lambda s: str(s.rate_limited)),
        row("retries sent (429/503)", lambda s: str(s.retries)),
        row(
            "proxy's retries (all clients)",
            lambda s: "-" if s.proxy_retries is None else f"{s.proxy_retries:.0f}",
        ),
        row("duration", lambda s: f"{s.elapsed:.1f} s"),
    ]
    return format_table(["", *(name for name, _ in named)], rows)


def _status_order(code: str) -> tuple[int, str]:
    return (1, code) if not code.isdigit() else (0, code)


def format_verdict(result: Verdict) -> str:
    lines = [f"verdict: {'GO' if result.go else 'NO-GO'}"]
    lines += [f"  {'ok' if c.ok else 'FAIL':<4}  {c.name:<21} {c.detail}" for c in result.criteria]
    return "\n".join(lines)


# --------------------------------------------------------------------------- network shell


@dataclass
class _Budget:
    """When to stop sending: a deadline (trio time) and a number of attempts."""

    deadline: float
    left: float

    def take(self) -> bool:
        if self.left <= 0 or trio.current_time() >= self.deadline:
            return False
        self.left -= 1
        return True


@dataclass
class _Tally:
    """What one target's agents have done so far (read by the progress line)."""

    samples: list[Sample] = field(default_factory=list)
    in_flight: int = 0

    def line(self) -> str:
        ok = sum(1 for s in self.samples if s.status is not None and s.status < 400)
        limited = sum(1 for s in self.samples if s.status == 429)
        errors = sum(s.failed for s in self.samples)
        return (
            f"{len(self.samples)} sent, {ok} ok, {limited} 429, {errors} errors, "
            f"{self.in_flight} in flight"
        )


@dataclass(frozen=True, slots=True)
class Run:
    """One target's run: every attempt, how long it took, the proxy's retries."""

    url: str
    samples: tuple[Sample, ...]
    elapsed: float
    proxy_retries: float | None

    def summary(self) -> Summary:
        return summarize(self.samples, self.elapsed, self.proxy_retries)


async def _attempt(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    key: tuple[int, int],
    retry: bool,
    limit: float,
) -> tuple[Sample, str | None]:
    """Send one request; the sample and the answer's Retry-After."""
    stream = body.get("stream") is True
    started = time.monotonic()
    headers = {
        "x-api-key": CLIENT_TOKEN,
        "anthropic-version": "2023-06-01",
        "user-agent": f"zai-proxy-loadtest/agent-{key[0]}",
    }
    ttft: float | None = None
    try:
        # httpx's timeouts are per read; a stream that trickles is bounded here.
        with trio.fail_after(limit):
            async with client.stream("POST", url, json=body, headers=headers) as response:
                tracker = SSEUsageTracker("anthropic") if stream else None
                chunks = []
                async for chunk in response.aiter_bytes():
                    if ttft is None:
                        ttft = time.monotonic() - started
                    if tracker is not None:
                        tracker.feed(chunk)
                    else:
                        chunks.append(chunk)
    except (httpx.HTTPError, trio.TooSlowError, OSError):
        return Sample(key, stream, None, time.monotonic() - started, retry=retry), None
    latency = time.monotonic() - started
    status = response.status_code
    token_input = response.headers.get("x-token-input", "")
    broken = False
    if tracker is not None:
        tracker.finish()
        usage = tracker.usage
        broken = status == 200 and (tracker.error is not None or not tracker.complete)
    else:
        usage = usage_from_json(b"".join(chunks), "anthropic") if status == 200 else None
    sample = Sample(
        key=key,
        stream=stream,
        status=status,
        latency=latency,
        ttft=ttft if stream else None,
        output_tokens=usage.output if usage is not None else 0,
        token_input=int(token_input) if token_input.isdigit() else None,
        broken_stream=broken,
        retry=retry,
    )
    return sample, response.headers.get("retry-after")


async def _agent(
    client: httpx.AsyncClient,
    url: str,
    index: int,
    *,
    seed: int,
    model: str | None,
    budget: _Budget,
    tally: _Tally,
    retries: int,
    limit: float,
) -> None:
    profile = PROFILES[index % len(PROFILES)]
    # Bodies from their own generator: request k of agent i is the same on every target.
    bodies = random.Random(seed * 1000 + index)
    pauses = random.Random(seed * 1000 + index + 500)
    sequence = 0
    while budget.take():
        body = build_request(bodies, profile, index)
        if model is not None:
            body["model"] = model
        for attempt in range(retries + 1):
            if attempt and not budget.take():
                return
            tally.in_flight += 1
            try:
                sample, retry_after = await _attempt(
                    client, url, body, (index, sequence), attempt > 0, limit
                )
            finally:
                tally.in_flight -= 1
            tally.samples.append(sample)
            if sample.status not in _RETRY_STATUSES or attempt == retries:
                break
            wait = (
                retry_after_seconds(retry_after)
                if sample.status == 429
                else pauses.uniform(*_OVERLOADED_PAUSE)
            )
            with trio.move_on_at(budget.deadline):
                await trio.sleep(wait)
        sequence += 1


async def _proxy_retries(client: httpx.AsyncClient, url: str) -> float | None:
    """The proxy's retry counter now (all reasons' total), or None if unreadable."""
    parts = urlsplit(url)
    try:
        with trio.move_on_after(5):
            response = await client.get(f"{parts.scheme}://{parts.netloc}/metrics")
            if response.status_code != 200:
                return None
            counters = parse_exposition(response.text).counters
            return sum(
                value
                for (name, labels), value in counters.items()
                if name == "zai_proxy_retry_attempts_total" and ("reason", "retry") in labels
            )
    except (httpx.HTTPError, ValueError, OSError):
        return None
    return None


def _difference(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    # A counter that went down was reset (the proxy restarted): it counted from 0.
    return after - before if after >= before else after


async def run_load(
    url: str,
    *,
    agents: int,
    duration: float = math.inf,
    requests: float = math.inf,
    seed: int = 0,
    model: str | None = None,
    retries: int = 2,
    request_timeout: float = 60.0,
    tally: _Tally | None = None,
) -> Run:
    """Run `agents` agents against `url` until `duration` or `requests` runs out."""
    if agents < 1:
        raise ValueError("agents must be >= 1")
    tally = tally if tally is not None else _Tally()
    messages = url.rstrip("/") + "/v1/messages"
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(request_timeout, connect=min(request_timeout, 10.0)),
        limits=httpx.Limits(max_connections=agents * 2, max_keepalive_connections=agents),
        trust_env=False,
    ) as client:
        before = await _proxy_retries(client, url)
        started = trio.current_time()
        budget = _Budget(deadline=started + duration, left=requests)
        async with trio.open_nursery() as nursery:
            for index in range(agents):
                nursery.start_soon(
                    partial(
                        _agent,
                        client,
                        messages,
                        index,
                        seed=seed,
                        model=model,
                        budget=budget,
                        tally=tally,
                        retries=retries,
                        limit=request_timeout,
                    )
                )
        elapsed = trio.current_time() - started
        after = await _proxy_retries(client, url)
    return Run(url, tuple(tally.samples), elapsed, _difference(before, after))


def _progress_line(tallies: Sequence[tuple[str, _Tally]], seconds_in: float) -> str:
    parts = [f"{name}: {tally.line()}" for name, tally in tallies]
    # Back to the start of the line, and clear what a longer line left there.
    return f"\r{seconds_in:5.1f} s  " + "  |  ".join(parts) + "\x1b[K"


async def _show_progress(
    tallies: Sequence[tuple[str, _Tally]], out: IO[str], started: float
) -> None:
    while True:
        await trio.sleep(_PROGRESS_EVERY)
        out.write(_progress_line(tallies, trio.current_time() - started))
        out.flush()


async def run_targets(
    targets: Sequence[tuple[str, str]],
    *,
    progress: IO[str] | None = None,
    **options: Any,
) -> list[Run]:
    """`run_load` on every (name, url) at once, with one progress line if asked."""
    tallies = [(name, _Tally()) for name, _ in targets]
    runs: list[Run | None] = [None] * len(targets)

    async def one(position: int) -> None:
        runs[position] = await run_load(targets[position][1], tally=tallies[position][1], **options)

    started = trio.current_time()
    async with trio.open_nursery() as outer:
        if progress is not None:
            outer.start_soon(_show_progress, tallies, progress, started)
        async with trio.open_nursery() as nursery:
            for position in range(len(targets)):
                nursery.start_soon(one, position)
        outer.cancel_scope.cancel()
    if progress is not None:
        # The final figures, then a newline, so the table starts on a line of its own.
        progress.write(_progress_line(tallies, trio.current_time() - started) + "\n")
        progress.flush()
    return [r for r in runs if r is not None]


# --------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    duration = args.duration
    if duration is None:
        duration = math.inf if args.requests is not None else 30.0
    targets = [("production" if args.compare else "target", args.url)]
    if args.compare:
        targets.append(("canary", args.compare))
    progress = sys.stderr if args.progress or sys.stderr.isatty() else None
    runs = trio.run(
        lambda: run_targets(
            targets,
            progress=progress,
            agents=args.agents,
            duration=duration,
            requests=math.inf if args.requests is None else args.requests,
            seed=args.seed,
            model=args.model,
            retries=args.retries,
            request_timeout=args.timeout,
        )
    )
    named = [(name, r.summary()) for (name, _), r in zip(targets, runs, strict=True)]
    result = None
    if args.compare:
        delta, _ = token_delta(runs[0].samples, runs[1].samples)
        result = verdict(named[0][1], named[1][1], delta)
    if args.json:
        out: dict[str, Any] = {
            name: {"url": r.url, **asdict(summary)}
            for (name, summary), r in zip(named, runs, strict=True)
        }
        if result is not None:
            out["verdict"] = {"go": result.go, "criteria": [asdict(c) for c in result.criteria]}
        print(json.dumps(out))
    else:
        for (name, _), r in zip(named, runs, strict=True):
            print(f"{name}: {r.url}")
        print()
        print(format_summaries(named))
        if result is not None:
            print()
            print(format_verdict(result))
    if result is not None:
        return 0 if result.go else 1
    return 0 if any(s.status is not None and s.status < 400 for s in runs[0].samples) else 1
