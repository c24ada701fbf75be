"""The snapshot: what the dashboard knows about one variant at one scrape tick.

The JSON names are a contract with the page and the demo.  Rates are per second over
the interval the snapshot covers (`interval_s`); the `tokens_*`, `rate_limit_adj_*` and
`rejections*` fields are increases within that interval, so a window total is the sum
of the snapshots in the window.  A value that has no meaning for the interval (a latency
quantile when no request finished, a gauge no target exported) is null, never 0.

The limiter fields of a variant whose pods share a limiter (see `readings.py`):
`rate_limit_backend` is "memory", "redis", "mixed" or null (no pod up),
`rate_limit_backend_up` the pods whose limiter backend answers (of `targets_up`),
`rate_limit_replicas` the replicas on the shared limiter (null without one) and
`rate_limit_backend_error_rate` the backend's errors per second.  Rows written before
these fields existed read back with them null.

A stale snapshot says "no target of this variant answered at this tick": `stale` is
true, `interval_s` is 0 and every measurement is null or empty.

`average` makes the one-minute rows of the history from the five-second ones; it is a
pure function so the store and its tests share it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Snapshot", "average"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    ts: float
    variant: str
    interval_s: float = 0.0
    stale: bool = False
    targets_up: int = 0
    targets_total: int = 0
    req_rate: float | None = None
    error_rate_pct: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    request_size_avg: float | None = None
    response_size_avg: float | None = None
    status_code_rates: dict[str, float] = field(default_factory=dict)
    token_rate_in: float | None = None
    token_rate_out: float | None = None
    token_rate_cache_read: float | None = None
    token_rate_cache_write: float | None = None
    # Tokens per second by model, every direction together (the page's "spent on what").
    token_rates_by_model: dict[str, float] = field(default_factory=dict)
    tokens_in: float | None = None
    tokens_out: float | None = None
    tokens_cache_read: float | None = None
    tokens_cache_write: float | None = None
    rate_limit_rps: float | None = None
    rate_limit_ceiling: float | None = None
    rate_limit_backend: str | None = None
    rate_limit_backend_up: float | None = None
    rate_limit_replicas: float | None = None
    rate_limit_backend_error_rate: float | None = None
    rate_limit_adj_increase: float | None = None
    rate_limit_adj_decrease: float | None = None
    rate_limit_adj_probe: float | None = None
    rejections: float | None = None
    rejections_by_reason: dict[str, float] = field(default_factory=dict)
    concurrent: float | None = None
    max_workers: float | None = None
    worker_utilization: float | None = None
    retry_rates: dict[str, float] = field(default_factory=dict)
    upstream_error_rates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, dict) else value
        return out

    def to_json(self) -> str:
        # allow_nan=False: NaN is not JSON; the collector turns every one into null first,
        # so one getting here is a bug we want to hear about.
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """The inverse of `to_dict`; unknown keys are ignored so old rows stay readable."""
        known = {name: data[name] for name in _FIELD_NAMES if name in data}
        for name in _MAP_FIELDS:
            if name in known:
                known[name] = {str(k): float(v) for k, v in (known[name] or {}).items()}
        return cls(**known)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        return cls.from_dict(json.loads(text))

    @classmethod
    def stale_at(cls, ts: float, variant: str, targets_total: int) -> Snapshot:
        return cls(ts=ts, variant=variant, stale=True, targets_up=0, targets_total=targets_total)


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Snapshot))
_MAP_FIELDS = (
    "status_code_rates",
    "token_rates_by_model",
    "rejections_by_reason",
    "retry_rates",
    "upstream_error_rates",
)

# How `average` folds each field of a minute's rows into one.
_RATES = (
    "req_rate",
    "token_rate_in",
    "token_rate_out",
    "token_rate_cache_read",
    "token_rate_cache_write",
    "rate_limit_backend_error_rate",
)
_RATE_MAPS = ("status_code_rates", "token_rates_by_model", "retry_rates", "upstream_error_rates")
_INCREASES = (
    "tokens_in",
    "tokens_out",
    "tokens_cache_read",
    "tokens_cache_write",
    "rate_limit_adj_increase",
    "rate_limit_adj_decrease",
    "rate_limit_adj_probe",
    "rejections",
)
_PER_REQUEST = (
    "error_rate_pct",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "request_size_avg",
    "response_size_avg",
)
_GAUGES = (
    "rate_limit_rps",
    "rate_limit_ceiling",
    "rate_limit_backend_up",
    "rate_limit_replicas",
    "concurrent",
    "max_workers",
    "worker_utilization",
)


def average(rows: Sequence[Snapshot], ts: float) -> Snapshot:
    """Fold the rows of one variant in one minute into the minute's row, stamped `ts`.

    - rates: weighted by the seconds each row covers, which is the exact rate over the
      minute;
    - increases (`tokens_*`, `rate_limit_adj_*`, `rejections*`): summed, so a window total
      is still the sum of its rows;
    - per-request figures (error %, latency quantiles, size averages): weighted by each
      row's request count.  Exact for error % and the averages; for quantiles it is an
      approximation (quantiles of a merged histogram are not averages of quantiles);
    - gauges: the mean of the rows that have one;
    - `rate_limit_backend`: the one backend the rows that name one agree on, "mixed" if
      they differ (a switch within the minute), null if none names one;
    - `stale` only if every row is (the minute has no data at all), `targets_up` the
      minimum and `targets_total` the maximum seen.
    """
    if not rows:
        raise ValueError("average() needs at least one row")
    variant = rows[0].variant
    live = [row for row in rows if not row.stale]
    targets_up = min(row.targets_up for row in rows)
    targets_total = max(row.targets_total for row in rows)
    if not live:
        return Snapshot.stale_at(ts, variant, targets_total)

    seconds = sum(row.interval_s for row in live)
    values: dict[str, Any] = {}
    for name in _RATES:
        values[name] = _weighted(live, name, lambda row: row.interval_s)
    for name in _RATE_MAPS:
        values[name] = _weighted_map(live, name, seconds)
    for name in _INCREASES:
        present = [v for row in live if (v := getattr(row, name)) is not None]
        values[name] = math.fsum(present) if present else None
    values["rejections_by_reason"] = _summed_map(live, "rejections_by_reason")

    def requests(row: Snapshot) -> float:
        return (row.req_rate or 0.0) * row.interval_s

    for name in _PER_REQUEST:
        values[name] = _weighted(live, name, requests)
    for name in _GAUGES:
        present = [v for row in live if (v := getattr(row, name)) is not None]
        values[name] = math.fsum(present) / len(present) if present else None
    backends = {row.rate_limit_backend for row in live} - {None}
    values["rate_limit_backend"] = (
        "mixed" if len(backends) > 1 else next(iter(backends)) if backends else None
    )
    return Snapshot(
        ts=ts,
        variant=variant,
        interval_s=seconds,
        stale=False,
        targets_up=targets_up,
        targets_total=targets_total,
        **values,
    )


def _weighted(
    rows: Sequence[Snapshot], name: str, weight: Callable[[Snapshot], float]
) -> float | None:
    total = 0.0
    weights = 0.0
    for row in rows:
        value = getattr(row, name)
        w = weight(row)
        if value is None or w <= 0:
            continue
        total += value * w
        weights += w
    return total / weights if weights > 0 else None


def _weighted_map(rows: Sequence[Snapshot], name: str, seconds: float) -> dict[str, float]:
    if seconds <= 0:
        return {}
    totals: dict[str, float] = {}
    for row in rows:
        for key, rate in getattr(row, name).items():
            totals[key] = totals.get(key, 0.0) + rate * row.interval_s
    # A key missing from a row means nothing of that kind happened then: it counts as 0.
    return {key: total / seconds for key, total in totals.items()}


def _summed_map(rows: Sequence[Snapshot], name: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for row in rows:
        for key, value in getattr(row, name).items():
            totals[key] = totals.get(key, 0.0) + value
    return totals
