"""Prometheus text exposition in, plain numbers out; the counter maths PromQL does.  Pure.

`parse` sorts the samples of one scrape into counters (anything that only goes up:
counter `_total`s, histogram and summary `_bucket`/`_count`/`_sum`) and gauges.
`increases` is what PromQL's `increase()` sees between two consecutive scrapes: the
difference, or, when a counter went down (the target restarted), the new value, since
it counted up from 0 after the reset.  A histogram resets as a whole, so its buckets,
count and sum are judged together and never mix pre- and post-reset values.
`histogram_quantile` is PromQL's classic-bucket interpolation, case for case.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Exposition", "Labels", "SeriesKey", "histogram_quantile", "increases", "parse"]

Labels = tuple[tuple[str, str], ...]
# (sample name as exposed, e.g. "x_total" or "x_bucket"; its labels, sorted)
SeriesKey = tuple[str, Labels]

_MONOTONIC_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}
_UNTYPED_MONOTONIC = ("_total", "_bucket", "_count")


@dataclass(frozen=True, slots=True)
class Exposition:
    """One scrape of one target.

    `groups` maps every counter series to the series it resets with: for a histogram or
    summary all samples of one label set (le aside), for a plain counter itself.
    """

    counters: Mapping[SeriesKey, float]
    gauges: Mapping[SeriesKey, float]
    groups: Mapping[SeriesKey, SeriesKey]

    def label_values(self, label: str) -> list[str]:
        """Every value `label` takes in this scrape, most frequent first."""
        seen: dict[str, int] = {}
        for series in (self.counters, self.gauges):
            for _, labels in series:
                for name, value in labels:
                    if name == label:
                        seen[value] = seen.get(value, 0) + 1
        return sorted(seen, key=lambda v: -seen[v])


def parse(text: str) -> Exposition:
    """Parse Prometheus text format (0.0.4); raises ValueError on a malformed exposition."""
    counters: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, float] = {}
    groups: dict[SeriesKey, SeriesKey] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"not a Prometheus text exposition: {exc}") from exc
    for family in families:
        suffixes = _MONOTONIC_SUFFIXES.get(family.type)
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels: Labels = tuple(sorted(sample.labels.items()))
            key: SeriesKey = (sample.name, labels)
            monotonic = (
                sample.name.endswith(suffixes)
                if suffixes is not None
                else family.type in ("untyped", "unknown")
                and sample.name.endswith(_UNTYPED_MONOTONIC)
            )
            if not monotonic:
                gauges[key] = sample.value
                continue
            if not math.isfinite(sample.value):
                continue  # a counter can't be NaN or infinite; as if it were absent
            counters[key] = sample.value
            if family.type in ("histogram", "summary"):
                group_labels = tuple(item for item in labels if item[0] != "le")
                groups[key] = (family.name, group_labels)
            else:
                groups[key] = key
    return Exposition(counters=counters, gauges=gauges, groups=groups)


def increases(previous: Exposition, current: Exposition) -> dict[SeriesKey, float]:
    """How much each counter of `current` grew since `previous`, resets handled.

    A series new in `current` grew from 0 (the target creates a labelled series on its
    first event), so its increase is its value.  A series that went away is dropped.
    """
    reset: set[SeriesKey] = set()
    for key, value in current.counters.items():
        before = previous.counters.get(key)
        # `_sum` may fall without a reset (negative observations); counts and buckets can't.
        if before is not None and value < before and not key[0].endswith("_sum"):
            reset.add(current.groups[key])
    out: dict[SeriesKey, float] = {}
    for key, value in current.counters.items():
        before = previous.counters.get(key)
        if before is None or current.groups[key] in reset:
            out[key] = value
        else:
            out[key] = value - before
    return out


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """PromQL's `histogram_quantile` over classic buckets given as (upper bound, count).

    Counts are cumulative, as exposed.  Returns NaN where PromQL returns NaN: no
    observations, fewer than two buckets, or no +Inf bucket.  Within a bucket the value
    is interpolated linearly; the lowest bucket starts at 0 (if its bound is above 0); a
    rank that falls in the +Inf bucket gives the highest finite bound.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets, key=lambda b: b[0])
    if not ordered or not math.isinf(ordered[-1][0]) or ordered[-1][0] < 0:
        return math.nan
    merged = _coalesce(ordered)
    _correct_precision(merged, 1e-12)
    _ensure_monotonic(merged)
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    # First bucket (the +Inf one aside) whose cumulative count reaches the rank.
    b = next((i for i in range(len(merged) - 1) if merged[i][1] >= rank), len(merged) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start = 0.0
    end, count = merged[b]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    if count == 0:
        return math.nan  # only when q is 0 and the lowest bucket is empty: Go's 0/0
    return start + (end - start) * (rank / count)


def _coalesce(ordered: list[tuple[float, float]]) -> list[list[float]]:
    merged: list[list[float]] = []
    for bound, count in ordered:
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    return merged


def _correct_precision(buckets: list[list[float]], tolerance: float) -> None:
    # Float sums of rates can leave a bucket a hair below the one before; PromQL snaps
    # such near-equal neighbours together before it searches.
    previous = buckets[0][1]
    for bucket in buckets[1:]:
        current = bucket[1]
        delta = abs(current - previous)
        if delta == 0:
            continue
        if current != 0 and delta / current <= tolerance:
            bucket[1] = previous
        else:
            previous = current


def _ensure_monotonic(buckets: list[list[float]]) -> None:
    highest = buckets[0][1]
    for bucket in buckets[1:]:
        if bucket[1] > highest:
            highest = bucket[1]
        elif bucket[1] < highest:
            bucket[1] = highest
