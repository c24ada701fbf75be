"""Scrape the proxies' /metrics and turn each tick into one snapshot per variant.

```
scrape task per target --(text)--> Collector.observe --(Snapshot)--> channel -> hub, store
```
`Collector` is the pure core: it keeps the previous scrape of every target, computes
what happened in between (`Reading`), and when every target of a variant has reported a
tick, sums their readings into one `Snapshot`.  Time is passed in.  `ScrapeLoop` is the
trio shell: one task per target on a fixed schedule (tick k at epoch + k * interval),
each scrape bounded by SCRAPE_TIMEOUT; a target that fails is reported as down, never
raised.

Choices worth knowing:
- The first scrape of a target only primes its deltas.  A tick where no target of the
  variant has a delta yet makes no snapshot; every snapshot's rates cover a real interval.
- A tick where no target of a variant answered makes a stale snapshot (nulls).
- Rates divide by the time between the target's own two scrapes (monotonic clock, taken
  when each answer arrived), so a late or missed scrape does not bend them; replicas'
  rates are then summed.  `interval_s` is the mean of those intervals.
- If a target's task misses a tick altogether (it crashed and is waiting to restart), the
  tick is closed when another target of the variant reports the next one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import trio

from ..settings import without_userinfo
from .promparse import Exposition, Labels, histogram_quantile, increases, parse
from .snapshot import VARIANTS, Snapshot

__all__ = [
    "Collector",
    "Reading",
    "ScrapeError",
    "ScrapeLoop",
    "TargetStatus",
    "build_snapshot",
    "fetch_metrics",
    "infer_variant",
    "read",
    "without_userinfo",
]

log = logging.getLogger("zai_proxy.dashboard.collector")

K = TypeVar("K")

# The proxy's metric names, as exposed (see proxy/metrics.py).
_REQUESTS = "zai_proxy_requests_total"
_DURATION_BUCKET = "zai_proxy_request_duration_seconds_bucket"
_REQUEST_SIZE_SUM = "zai_proxy_request_size_bytes_sum"
_REQUEST_SIZE_COUNT = "zai_proxy_request_size_bytes_count"
_RESPONSE_SIZE_SUM = "zai_proxy_response_size_bytes_sum"
_RESPONSE_SIZE_COUNT = "zai_proxy_response_size_bytes_count"
_TOKENS = "zai_proxy_tokens_total"
_ADJUSTMENTS = "zai_proxy_rate_limit_adjustments_total"
_REJECTIONS = "zai_proxy_rate_limit_rejections_total"
_RETRIES = "zai_proxy_retry_attempts_total"
_UPSTREAM_ERRORS = "zai_proxy_upstream_errors_total"
_RATE = "zai_proxy_rate_limit_requests_per_second"
_CEILING = "zai_proxy_rate_limit_ceiling_requests_per_second"
_CONCURRENT = "zai_proxy_concurrent_requests"
_MAX_WORKERS = "zai_proxy_max_workers"

_MAX_EXPOSITION_BYTES = 16 * 1024 * 1024
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


def infer_variant(url: str) -> str:
    """The Go dashboard's rule: "test" or "canary" in the URL means canary."""
    lowered = without_userinfo(url).lower()
    return "canary" if "test" in lowered or "canary" in lowered else "production"


# --------------------------------------------------------------------------- readings


@dataclass(slots=True)
class Reading:
    """What one target did between two of its scrapes: increases, and the seconds between."""

    interval: float
    requests: float = 0.0
    errors_5xx: float = 0.0
    by_status: dict[str, float] = field(default_factory=dict)
    duration_buckets: dict[float, float] = field(default_factory=dict)
    request_size_sum: float = 0.0
    request_size_count: float = 0.0
    response_size_sum: float = 0.0
    response_size_count: float = 0.0
    tokens: dict[str, float] = field(default_factory=dict)
    adjustments: dict[str, float] = field(default_factory=dict)
    rejections: dict[str, float] = field(default_factory=dict)
    retries: dict[str, float] = field(default_factory=dict)
    upstream_errors: dict[str, float] = field(default_factory=dict)

    def merge(self, later: Reading) -> Reading:
        """This reading followed by `later` (a tick went by without a snapshot)."""
        out = Reading(interval=self.interval + later.interval)
        for item in fields(Reading)[1:]:
            mine, theirs = getattr(self, item.name), getattr(later, item.name)
            setattr(
                out, item.name, _add_maps(mine, theirs) if isinstance(mine, dict) else mine + theirs
            )
        return out


def _label(labels: Labels, name: str) -> str:
    for key, value in labels:
        if key == name:
            return value
    return ""


def _bump(target: dict[K, float], key: K, amount: float) -> None:
    target[key] = target.get(key, 0.0) + amount


def _add_maps(a: dict[K, float], b: dict[K, float]) -> dict[K, float]:
    return _sum_maps((a, b))


def _sum_maps(
    maps: Iterable[dict[K, float]], divide_by: Iterable[float] | None = None
) -> dict[K, float]:
    out: dict[K, float] = {}
    divisors = iter(divide_by) if divide_by is not None else None
    for one in maps:
        divisor = next(divisors) if divisors is not None else 1.0
        for key, value in one.items():
            _bump(out, key, value / divisor)
    return out


def read(previous: Exposition, current: Exposition, interval: float) -> Reading:
    """The reading between two scrapes of one target, `interval` seconds apart."""
    reading = Reading(interval=interval)
    for (name, labels), amount in increases(previous, current).items():
        if name == _REQUESTS:
            status = _label(labels, "status_code")
            reading.requests += amount
            _bump(reading.by_status, status, amount)
            if len(status) == 3 and status.startswith("5"):
                reading.errors_5xx += amount
        elif name == _DURATION_BUCKET:
            try:
                bound = float(_label(labels, "le"))
            except ValueError:
                continue
            _bump(reading.duration_buckets, bound, amount)
        elif name == _REQUEST_SIZE_SUM:
            reading.request_size_sum += amount
        elif name == _REQUEST_SIZE_COUNT:
            reading.request_size_count += amount
        elif name == _RESPONSE_SIZE_SUM:
            reading.response_size_sum += amount
        elif name == _RESPONSE_SIZE_COUNT:
            reading.response_size_count += amount
        elif name == _TOKENS:
            _bump(reading.tokens, _label(labels, "direction"), amount)
        elif name == _ADJUSTMENTS:
            _bump(reading.adjustments, _label(labels, "direction"), amount)
        elif name == _REJECTIONS:
            _bump(reading.rejections, _label(labels, "reason"), amount)
        elif name == _RETRIES:
            _bump(reading.retries, _label(labels, "reason"), amount)
        elif name == _UPSTREAM_ERRORS:
            _bump(reading.upstream_errors, _label(labels, "error_type"), amount)
    return reading


@dataclass(frozen=True, slots=True)
class _Gauges:
    rate: float | None
    ceiling: float | None
    concurrent: float | None
    max_workers: float | None


def _gauges(exposition: Exposition) -> _Gauges:
    sums: dict[str, float] = {}
    for (name, _), value in exposition.gauges.items():
        if name in (_RATE, _CEILING, _CONCURRENT, _MAX_WORKERS) and math.isfinite(value):
            _bump(sums, name, value)
    return _Gauges(
        rate=sums.get(_RATE),
        ceiling=sums.get(_CEILING),
        concurrent=sums.get(_CONCURRENT),
        max_workers=sums.get(_MAX_WORKERS),
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _sum_present(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) if present else None


def build_snapshot(
    *,
    ts: float,
    variant: str,
    readings: Sequence[Reading],
    expositions: Sequence[Exposition],
    targets_up: int,
    targets_total: int,
) -> Snapshot:
    """One variant's snapshot from its targets' readings (one per target with a delta)
    and the latest scrapes of the targets that are up (for the gauges)."""
    if not readings:
        raise ValueError("build_snapshot needs at least one reading")
    timed = [r for r in readings if r.interval > 0]
    seconds = [r.interval for r in timed]

    def rate(get: Callable[[Reading], float]) -> float:
        return math.fsum(get(r) / r.interval for r in timed)

    def total(get: Callable[[Reading], float]) -> float:
        return math.fsum(get(r) for r in readings)

    def mean(
        get_sum: Callable[[Reading], float], get_count: Callable[[Reading], float]
    ) -> float | None:
        count = total(get_count)
        return _finite(total(get_sum) / count) if count > 0 else None

    requests = total(lambda r: r.requests)
    errors = total(lambda r: r.errors_5xx)
    buckets = _sum_maps(r.duration_buckets for r in readings)

    def quantile(q: float) -> float | None:
        return _finite(histogram_quantile(q, buckets.items()) * 1000.0)

    tokens = _sum_maps(r.tokens for r in readings)
    token_rates = _sum_maps((r.tokens for r in timed), seconds)
    adjustments = _sum_maps(r.adjustments for r in readings)
    rejections = _sum_maps(r.rejections for r in readings)
    retries = _sum_maps((r.retries for r in timed), seconds)
    retries.pop("retry", None)  # the total of the others; see proxy/metrics.py

    gauges = [_gauges(e) for e in expositions]
    concurrent = _sum_present(g.concurrent for g in gauges)
    max_workers = _sum_present(g.max_workers for g in gauges)
    both = [g for g in gauges if g.concurrent is not None and g.max_workers is not None]
    capacity = math.fsum(g.max_workers or 0.0 for g in both)
    utilization = math.fsum(g.concurrent or 0.0 for g in both) / capacity if capacity > 0 else None

    return Snapshot(
        ts=ts,
        variant=variant,
        interval_s=math.fsum(r.interval for r in readings) / len(readings),
        stale=False,
        targets_up=targets_up,
        targets_total=targets_total,
        req_rate=rate(lambda r: r.requests),
        error_rate_pct=100.0 * errors / requests if requests > 0 else None,
        latency_p50_ms=quantile(0.50),
        latency_p95_ms=quantile(0.95),
        latency_p99_ms=quantile(0.99),
        request_size_avg=mean(lambda r: r.request_size_sum, lambda r: r.request_size_count),
        response_size_avg=mean(lambda r: r.response_size_sum, lambda r: r.response_size_count),
        status_code_rates=_sum_maps((r.by_status for r in timed), seconds),
        token_rate_in=token_rates.get("input", 0.0),
        token_rate_out=token_rates.get("output", 0.0),
        token_rate_cache_read=token_rates.get("cache_read", 0.0),
        token_rate_cache_write=token_rates.get("cache_write", 0.0),
        tokens_in=tokens.get("input", 0.0),
        tokens_out=tokens.get("output", 0.0),
        tokens_cache_read=tokens.get("cache_read", 0.0),
        tokens_cache_write=tokens.get("cache_write", 0.0),
        rate_limit_rps=_finite(_sum_present(g.rate for g in gauges)),
        rate_limit_ceiling=_finite(_sum_present(g.ceiling for g in gauges)),
        rate_limit_adj_increase=adjustments.get("increase", 0.0),
        rate_limit_adj_decrease=adjustments.get("decrease", 0.0),
        rate_limit_adj_probe=adjustments.get("probe", 0.0),
        rejections=math.fsum(rejections.values()),
        rejections_by_reason=rejections,
        concurrent=concurrent,
        max_workers=max_workers,
        worker_utilization=_finite(utilization),
        retry_rates=retries,
        upstream_error_rates=_sum_maps((r.upstream_errors for r in timed), seconds),
    )


# --------------------------------------------------------------------------- the core


@dataclass(frozen=True, slots=True)
class TargetStatus:
    url: str  # without userinfo
    variant: str
    up: bool
    last_scrape: float | None  # unix seconds of the tick
    last_success: float | None
    last_error: str | None
    scrapes_ok: int
    scrapes_failed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "variant": self.variant,
            "up": self.up,
            "stale": not self.up,
            "last_scrape": self.last_scrape,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "scrapes_ok": self.scrapes_ok,
            "scrapes_failed": self.scrapes_failed,
        }


@dataclass(slots=True)
class _Target:
    url: str
    shown: str
    inferred: str
    variant: str
    previous: Exposition | None = None
    previous_at: float | None = None
    pending: Reading | None = None
    up: bool = False
    tick: int = -1
    ok: int = 0
    failed: int = 0
    last_error: str | None = None
    last_scrape: float | None = None
    last_success: float | None = None


class Collector:
    """Per-target scrape state and the per-variant tick bookkeeping.  No I/O, no clock."""

    def __init__(self, targets: Sequence[str], *, interval: float, epoch_ts: float) -> None:
        if not targets:
            raise ValueError("at least one scrape target")
        self.interval = interval
        self.epoch_ts = epoch_ts
        self._targets: dict[str, _Target] = {}
        for url in targets:
            variant = infer_variant(url)
            self._targets[url] = _Target(
                url=url, shown=without_userinfo(url), inferred=variant, variant=variant
            )
        self._emitted: dict[str, int] = {}

    @property
    def targets(self) -> list[str]:
        return list(self._targets)

    def tick_ts(self, tick: int) -> float:
        return self.epoch_ts + tick * self.interval

    def variants(self) -> list[str]:
        return sorted({t.variant for t in self._targets.values()})

    def status(self) -> list[TargetStatus]:
        return [
            TargetStatus(
                url=t.shown,
                variant=t.variant,
                up=t.up,
                last_scrape=t.last_scrape,
                last_success=t.last_success,
                last_error=t.last_error,
                scrapes_ok=t.ok,
                scrapes_failed=t.failed,
            )
            for t in self._targets.values()
        ]

    def error_of(self, url: str) -> str | None:
        """Why the target's last scrape failed; None if it is up."""
        target = self._targets[url]
        return None if target.up else target.last_error or "not scraped yet"

    def observe(
        self,
        url: str,
        tick: int,
        *,
        at: float,
        text: str | None = None,
        error: str | None = None,
    ) -> list[Snapshot]:
        """Record target `url`'s scrape for `tick`, made at monotonic time `at`: its
        exposition `text`, or the `error` that stopped it.  Returns the snapshots this
        completes (usually none or one)."""
        target = self._targets[url]
        out = self._close_before(target.variant, tick)
        target.tick = tick
        target.last_scrape = self.tick_ts(tick)
        exposition: Exposition | None = None
        if text is not None:
            try:
                exposition = parse(text)
            except ValueError as exc:
                error = str(exc)
        if exposition is None:
            target.up = False
            target.failed += 1
            target.last_error = error or "no answer"
            out += self._maybe_emit(target.variant, tick)
            return out

        target.up = True
        target.ok += 1
        target.last_error = None
        target.last_success = self.tick_ts(tick)
        if target.previous is not None and target.previous_at is not None:
            reading = read(target.previous, exposition, at - target.previous_at)
            target.pending = reading if target.pending is None else target.pending.merge(reading)
        target.previous = exposition
        target.previous_at = at

        variant = self._variant_of(target, exposition)
        if variant != target.variant:
            old = target.variant
            out += self._close_before(variant, tick)
            target.variant = variant
            out += self._maybe_emit(old, tick)
        out += self._maybe_emit(target.variant, tick)
        return out

    def _variant_of(self, target: _Target, exposition: Exposition) -> str:
        for value in exposition.label_values("variant"):
            if value in VARIANTS:
                return value
        return target.inferred

    def _members(self, variant: str) -> list[_Target]:
        return [t for t in self._targets.values() if t.variant == variant]

    def _close_before(self, variant: str, tick: int) -> list[Snapshot]:
        # A target reporting `tick` means the variant's earlier ticks are over, reported
        # by every target or not.
        earlier = [t.tick for t in self._members(variant) if t.tick < tick]
        if not earlier:
            return []
        open_tick = max(earlier)
        if open_tick <= self._emitted.get(variant, -1):
            return []
        return self._emit(variant, open_tick)

    def _maybe_emit(self, variant: str, tick: int) -> list[Snapshot]:
        members = self._members(variant)
        if not members or tick <= self._emitted.get(variant, -1):
            return []
        if any(t.tick < tick for t in members):
            return []
        return self._emit(variant, tick)

    def _emit(self, variant: str, tick: int) -> list[Snapshot]:
        self._emitted[variant] = tick
        members = self._members(variant)
        up = [t for t in members if t.tick == tick and t.up]
        readings = [t.pending for t in members if t.pending is not None]
        for t in members:
            t.pending = None
        ts = self.tick_ts(tick)
        if not up and not readings:
            return [Snapshot.stale_at(ts, variant, len(members))]
        if not readings:
            return []  # only first scrapes so far: they prime the deltas
        expositions = [t.previous for t in up if t.previous is not None]
        return [
            build_snapshot(
                ts=ts,
                variant=variant,
                readings=readings,
                expositions=expositions,
                targets_up=len(up),
                targets_total=len(members),
            )
        ]


# --------------------------------------------------------------------------- the shell


class ScrapeError(Exception):
    """A scrape that gave no exposition; the message is safe to show (no userinfo)."""


async def fetch_metrics(client: httpx.AsyncClient, url: str) -> str:
    """GET one target's exposition; any failure becomes a `ScrapeError`."""
    try:
        async with client.stream("GET", url, headers={"Accept": _ACCEPT}) as response:
            if response.status_code != 200:
                raise ScrapeError(f"HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > _MAX_EXPOSITION_BYTES:
                    raise ScrapeError(f"exposition larger than {_MAX_EXPOSITION_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")
    except httpx.HTTPError as exc:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        parts = urlsplit(url)
        if parts.password:
            message = message.replace(parts.password, "***")
        raise ScrapeError(message) from exc


Fetch = Callable[[str], Awaitable[str]]
Emit = Callable[[Snapshot], Awaitable[None]]


class ScrapeLoop:
    """Runs the scrape task of each target against one `Collector`."""

    def __init__(
        self,
        collector: Collector,
        *,
        fetch: Fetch,
        emit: Emit,
        timeout: float,
        epoch: float | None = None,
    ) -> None:
        self.collector = collector
        self._fetch = fetch
        self._emit = emit
        self._timeout = timeout
        self._interval = collector.interval
        # Trio time of tick 0; every target's task keeps to the same grid.
        self._epoch = trio.current_time() if epoch is None else epoch
        self._last_tick: dict[str, int] = {}
        self._down: set[str] = set()

    def _log_transition(self, url: str, error: str | None) -> None:
        # Once per change, not once per tick: a target down for a day is one line.
        shown = without_userinfo(url)
        if error is not None and url not in self._down:
            self._down.add(url)
            log.warning("scrape target down", extra={"target": shown, "error": error})
        elif error is None and url in self._down:
            self._down.discard(url)
            log.info("scrape target up again", extra={"target": shown})

    def _next_tick(self, url: str) -> int:
        elapsed = trio.current_time() - self._epoch
        tick = max(0, math.ceil(elapsed / self._interval - 1e-9))
        return max(tick, self._last_tick.get(url, -1) + 1)

    async def run_target(
        self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            tick = self._next_tick(url)
            await trio.sleep_until(self._epoch + tick * self._interval)
            self._last_tick[url] = tick
            text: str | None = None
            error: str | None = None
            with trio.move_on_after(self._timeout) as scope:
                try:
                    text = await self._fetch(url)
                except ScrapeError as exc:
                    error = str(exc)
            if scope.cancelled_caught:
                error = f"no answer within {self._timeout:g}s (SCRAPE_TIMEOUT)"
            snapshots = self.collector.observe(
                url, tick, at=trio.current_time(), text=text, error=error
            )
            self._log_transition(url, self.collector.error_of(url))
            for snapshot in snapshots:
                await self._emit(snapshot)
