"""What the proxies' counters say happened between two scrapes, and a variant's snapshot.

Pure maths, no I/O and no clock: `read` turns two expositions of one target into a
`Reading` (counter increases, a reset counted from zero, see `promparse.increases`), and
`build_snapshot` sums the readings of a variant's targets into one `Snapshot`.

- Rates divide by the time between the target's own two scrapes, so a late or missed
  scrape does not bend them; replicas' rates are then summed.
- Latency quantiles come from the summed histogram bucket increases, the way PromQL's
  `histogram_quantile` does it; no traffic gives null, not 0.
- Gauges (in flight, max workers) are summed over the targets that are up.
- The limiter's rate and ceiling are summed only over pods that each have a limiter of
  their own.  A pod's limiter (`limiter_state`) is on "redis" when the pod exports
  `zai_proxy_rate_limit_backend_up{backend="redis"}`, else on "memory" (a proxy without
  that metric is older and has only memory); it is up while that gauge is 1, and always
  on memory.  Every pod up on redis reports the same shared rate and ceiling, so the
  variant's figure is

      shared value (once) + the sum over the other pods' own figures

  where the other pods are those on memory and those on redis whose backend is down
  (each runs its local fallback bucket, which adds to what the variant sends).  The
  shared value is the low median (`statistics.median_low`) of the figures reported by
  the pods up on redis that judge the windows (`zai_proxy_rate_limit_judge` 1), or, if
  none of them reports one, of the figures of all pods up on redis.  The judge publishes
  the value, so its copy is the freshest; with two judges (a hand-over) or none, the low
  median is a figure some pod really reported (the lower of the middle two of an even
  count, the cautious side), and among three or more pods one stale copy cannot move it.
  No pod up on redis: no shared value, only the sum.
- `rate_limit_replicas` is the shared limiter's `zai_proxy_rate_limit_replicas`, chosen
  the same way; null when no pod is up on redis.  `rate_limit_backend` is "memory" or
  "redis" when every pod up is on it, "mixed" when they differ, null when no pod is up;
  `rate_limit_backend_up` counts the pods up whose limiter is up (out of `targets_up`);
  `rate_limit_backend_error_rate` is the pods' backend errors per second, summed.

A target is not trusted to be our proxy.  Label values become the keys of a snapshot's
maps, so each map keeps at most MAX_LABEL_VALUES of them (cut to 64 characters; the rest
are summed as "other"): thousands of distinct values must not make every frame and row
huge.  A figure that is not finite or beyond MAX_FIGURE (absurd counter values) is null
or left out, since a snapshot must stay JSON and sums of rows must stay finite.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from .promparse import Exposition, Labels, histogram_quantile, increases
from .snapshot import Snapshot

__all__ = [
    "MAX_FIGURE",
    "MAX_LABEL_VALUES",
    "LimiterState",
    "Reading",
    "build_snapshot",
    "limiter_state",
    "read",
]

K = TypeVar("K")

MAX_LABEL_VALUES = 32
MAX_FIGURE = 1e250
_LABEL_VALUE_MAX_LEN = 64

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
_BACKEND_UP = "zai_proxy_rate_limit_backend_up"
_BACKEND_ERRORS = "zai_proxy_rate_limit_backend_errors_total"
_REPLICAS = "zai_proxy_rate_limit_replicas"
_JUDGE = "zai_proxy_rate_limit_judge"
_SHARED_BACKEND = "redis"
_LOCAL_BACKEND = "memory"


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
    tokens_by_model: dict[str, float] = field(default_factory=dict)
    adjustments: dict[str, float] = field(default_factory=dict)
    rejections: dict[str, float] = field(default_factory=dict)
    retries: dict[str, float] = field(default_factory=dict)
    upstream_errors: dict[str, float] = field(default_factory=dict)
    backend_errors: float = 0.0

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


def _bump_label(target: dict[str, float], value: str, amount: float) -> None:
    key = value[:_LABEL_VALUE_MAX_LEN]
    if key not in target and len(target) >= MAX_LABEL_VALUES:
        key = "other"
    _bump(target, key, amount)


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
        if not _sane_figure(amount):
            continue
        if name == _REQUESTS:
            status = _label(labels, "status_code")
            reading.requests += amount
            _bump_label(reading.by_status, status, amount)
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
            _bump_label(reading.tokens, _label(labels, "direction"), amount)
            _bump_label(reading.tokens_by_model, _label(labels, "model"), amount)
        elif name == _ADJUSTMENTS:
            _bump_label(reading.adjustments, _label(labels, "direction"), amount)
        elif name == _REJECTIONS:
            _bump_label(reading.rejections, _label(labels, "reason"), amount)
        elif name == _RETRIES:
            _bump_label(reading.retries, _label(labels, "reason"), amount)
        elif name == _UPSTREAM_ERRORS:
            _bump_label(reading.upstream_errors, _label(labels, "error_type"), amount)
        elif name == _BACKEND_ERRORS:
            reading.backend_errors += amount
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
        if name in (_RATE, _CEILING, _CONCURRENT, _MAX_WORKERS) and _sane_figure(value):
            _bump(sums, name, value)
    return _Gauges(
        rate=sums.get(_RATE),
        ceiling=sums.get(_CEILING),
        concurrent=sums.get(_CONCURRENT),
        max_workers=sums.get(_MAX_WORKERS),
    )


@dataclass(frozen=True, slots=True)
class LimiterState:
    """What one pod's latest scrape says of its limiter."""

    backend: str  # "memory" or "redis"
    up: bool  # False: on redis, but running its local fallback bucket
    judge: bool  # it judges the shared limiter's windows
    replicas: float | None  # proxies on its limiter as it sees them
    rate: float | None
    ceiling: float | None

    @property
    def shared(self) -> bool:
        """It paces with the shared limiter (and so reports the shared figures)."""
        return self.backend == _SHARED_BACKEND and self.up

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "up": self.up,
            "judge": self.judge,
            "replicas": self.replicas,
            "rate": self.rate,
            "ceiling": self.ceiling,
        }


def limiter_state(exposition: Exposition) -> LimiterState:
    """One pod's limiter: its backend, whether that answers, whether it judges, its figures."""
    backend, up = _LOCAL_BACKEND, True
    judge = False
    replicas: float | None = None
    for (name, labels), value in exposition.gauges.items():
        if name == _BACKEND_UP and _label(labels, "backend") == _SHARED_BACKEND:
            backend, up = _SHARED_BACKEND, value == 1
        elif name == _JUDGE and value == 1:
            judge = True
        elif name == _REPLICAS and _sane_figure(value):
            replicas = value
    gauges = _gauges(exposition)
    return LimiterState(
        backend=backend,
        up=up,
        judge=judge,
        replicas=replicas,
        rate=gauges.rate,
        ceiling=gauges.ceiling,
    )


def _shared_figure(pods: Iterable[tuple[float | None, bool]]) -> float | None:
    """The shared limiter's figure from (figure, judge) of the pods up on it: the low
    median of the judges' figures, else of everyone's."""
    present = [(value, judge) for value, judge in pods if value is not None]
    judged = [value for value, judge in present if judge]
    values = judged or [value for value, _ in present]
    return statistics.median_low(values) if values else None


def _backend_of(states: Sequence[LimiterState]) -> str | None:
    backends = {s.backend for s in states}
    if len(backends) > 1:
        return "mixed"
    return backends.pop() if backends else None


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

    limiters = [limiter_state(e) for e in expositions]
    shared = [s for s in limiters if s.shared]
    local = [s for s in limiters if not s.shared]
    shared_rate = _shared_figure((s.rate, s.judge) for s in shared)
    shared_ceiling = _shared_figure((s.ceiling, s.judge) for s in shared)

    snapshot = Snapshot(
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
        token_rates_by_model=_sum_maps((r.tokens_by_model for r in timed), seconds),
        tokens_in=tokens.get("input", 0.0),
        tokens_out=tokens.get("output", 0.0),
        tokens_cache_read=tokens.get("cache_read", 0.0),
        tokens_cache_write=tokens.get("cache_write", 0.0),
        rate_limit_rps=_finite(_sum_present([shared_rate, *(s.rate for s in local)])),
        rate_limit_ceiling=_finite(_sum_present([shared_ceiling, *(s.ceiling for s in local)])),
        rate_limit_backend=_backend_of(limiters),
        rate_limit_backend_up=float(sum(s.up for s in limiters)) if limiters else None,
        rate_limit_replicas=_shared_figure((s.replicas, s.judge) for s in shared),
        rate_limit_backend_error_rate=rate(lambda r: r.backend_errors),
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
    return _sane(snapshot)


def _sane_figure(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= MAX_FIGURE


def _sane(snapshot: Snapshot) -> Snapshot:
    changes: dict[str, Any] = {}
    for item in fields(Snapshot):
        value = getattr(snapshot, item.name)
        if isinstance(value, dict):
            if not all(_sane_figure(v) for v in value.values()):
                changes[item.name] = {k: v for k, v in value.items() if _sane_figure(v)}
        elif isinstance(value, float) and item.default is None and not _sane_figure(value):
            changes[item.name] = None
    return replace(snapshot, **changes) if changes else snapshot
