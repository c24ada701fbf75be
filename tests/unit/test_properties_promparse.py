"""Properties of the Prometheus text maths: any text parses or is a ValueError, what
client_python renders reads back exactly, increases are never negative, and
histogram_quantile never falls as q rises."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from zai_proxy.dashboard import Exposition, histogram_quantile, increases, parse

# Deterministic and database-free, so CI runs the same examples every time.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=80)

Labels = tuple[tuple[str, str], ...]

# ---------------------------------------------------------------------------------------
# Expositions as a target renders them


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,5}", fullmatch=True).filter(
    lambda name: not name.startswith("__") and name != "le"
)
label_values = st.text(
    st.one_of(st.characters(codec="utf-8"), st.sampled_from(["\\", '"', "\n"])),
    max_size=6,
)
amounts = st.floats(0, 1e12)


@dataclass
class Family:
    """One metric family: its kind, label names, and per label set its numbers."""

    kind: str
    name: str
    label_names: tuple[str, ...]
    # counter/gauge: one value; histogram: cumulative bucket counts, then the sum.
    series: dict[tuple[str, ...], tuple[float, ...]] = field(default_factory=dict)
    bounds: tuple[float, ...] = ()


@st.composite
def families(draw: st.DrawFn) -> list[Family]:
    out: list[Family] = []
    for index, kind in enumerate(draw(st.lists(st.sampled_from(["c", "g", "h"]), max_size=4))):
        names = tuple(draw(st.lists(label_names, max_size=3, unique=True)))
        keys = draw(
            st.lists(st.tuples(*[label_values] * len(names)), min_size=1, max_size=3, unique=True)
        )
        family = Family(kind, f"{kind}{index}", names)
        if kind == "h":
            family.bounds = (
                *sorted(draw(st.sets(st.floats(-1e6, 1e6, width=32), max_size=4))),
                math.inf,
            )
        for key in keys:
            family.series[key] = draw(numbers(family))
        out.append(family)
    return out


def numbers(family: Family) -> st.SearchStrategy[tuple[float, ...]]:
    if family.kind == "c":
        return st.tuples(amounts)
    if family.kind == "g":
        return st.tuples(st.floats(allow_nan=False))
    per_bucket = st.lists(amounts, min_size=len(family.bounds), max_size=len(family.bounds))
    return st.tuples(per_bucket, st.floats(-1e12, 1e12)).map(
        lambda counts_sum: (*_cumulative(counts_sum[0]), counts_sum[1])
    )


def _cumulative(counts: list[float]) -> list[float]:
    total, out = 0.0, []
    for count in counts:
        total += count
        out.append(total)
    return out


@dataclass
class Rendered:
    families: list[Family]

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            names = list(family.label_names)
            metric: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
            if family.kind == "c":
                metric = CounterMetricFamily(family.name, "doc", labels=names)
            elif family.kind == "g":
                metric = GaugeMetricFamily(family.name, "doc", labels=names)
            else:
                metric = HistogramMetricFamily(family.name, "doc", labels=names)
            for key, values in family.series.items():
                if isinstance(metric, HistogramMetricFamily):
                    buckets = list(zip(map(floatToGoString, family.bounds), values, strict=False))
                    metric.add_metric(list(key), buckets, values[-1])
                else:
                    metric.add_metric(list(key), values[0])
            yield metric


def render(generated: list[Family]) -> str:
    return generate_latest(Rendered(generated)).decode()


def labels_of(family: Family, key: tuple[str, ...], *extra: tuple[str, str]) -> Labels:
    return tuple(sorted([*zip(family.label_names, key, strict=True), *extra]))


def expected(generated: list[Family]) -> tuple[dict[object, float], dict[object, float]]:
    counters: dict[object, float] = {}
    gauges: dict[object, float] = {}
    for family in generated:
        for key, values in family.series.items():
            labels = labels_of(family, key)
            if family.kind == "c":
                counters[(f"{family.name}_total", labels)] = values[0]
            elif family.kind == "g":
                gauges[(family.name, labels)] = values[0]
            else:
                for bound, count in zip(family.bounds, values, strict=False):
                    le = labels_of(family, key, ("le", floatToGoString(bound)))
                    counters[(f"{family.name}_bucket", le)] = count
                if family.bounds[0] >= 0:  # client_python leaves both out otherwise
                    counters[(f"{family.name}_count", labels)] = values[-2]
                    counters[(f"{family.name}_sum", labels)] = values[-1]
    return counters, gauges


@PROPERTY
@given(generated=families())
def test_what_client_python_renders_reads_back_exactly(generated: list[Family]) -> None:
    exposition = parse(render(generated))
    counters, gauges = expected(generated)
    assert dict(exposition.counters) == counters
    assert dict(exposition.gauges) == gauges


@PROPERTY
@given(generated=families())
def test_a_histogram_resets_as_one_group(generated: list[Family]) -> None:
    exposition = parse(render(generated))
    for family in generated:
        for key in family.series:
            group = {
                exposition.groups[series]
                for series in exposition.counters
                if series[0].rsplit("_", 1)[0] == family.name
                and tuple(item for item in series[1] if item[0] != "le") == labels_of(family, key)
            }
            assert len(group) == (1 if family.kind != "g" else 0)


# ---------------------------------------------------------------------------------------
# Any text


exposition_pieces = st.sampled_from(
    [
        "\n",
        " ",
        "# TYPE ",
        "# HELP ",
        "# ",
        "x_total",
        "x_bucket",
        "x",
        "counter",
        "histogram",
        "summary",
        "gauge",
        "untyped",
        "{",
        "}",
        "=",
        ",",
        '"',
        "\\",
        "\\n",
        'le="+Inf"',
        "1",
        "-1.5e3",
        "NaN",
        "+Inf",
        "-Inf",
        "0x10",
        "1_000",
        "é",
    ]
)


@settings(PROPERTY, max_examples=250)
@given(
    text=st.one_of(
        st.text(max_size=60),
        st.lists(exposition_pieces, max_size=24).map("".join),
    )
)
def test_any_text_parses_or_is_a_value_error(text: str) -> None:
    try:
        exposition = parse(text)
    except ValueError:
        return
    assert all(math.isfinite(value) for value in exposition.counters.values())
    assert set(exposition.groups) == set(exposition.counters)


# ---------------------------------------------------------------------------------------
# Increases


@st.composite
def scrape_pairs(draw: st.DrawFn) -> tuple[Exposition, Exposition]:
    """Two scrapes of one target: each series may be missing, grow, fall or reset."""
    shape = draw(families())
    scrapes = []
    for _ in range(2):
        scrape = []
        for family in shape:
            again = Family(family.kind, family.name, family.label_names, bounds=family.bounds)
            for key in family.series:
                if draw(st.integers(0, 4)):
                    again.series[key] = draw(numbers(family))
            scrape.append(again)
        scrapes.append(parse(render(scrape)))
    return scrapes[0], scrapes[1]


@PROPERTY
@given(pair=scrape_pairs())
def test_increases_are_never_negative_and_a_fall_is_a_reset(
    pair: tuple[Exposition, Exposition],
) -> None:
    previous, current = pair
    grown = increases(previous, current)
    assert set(grown) == set(current.counters)
    for key, value in grown.items():
        before, now = previous.counters.get(key), current.counters[key]
        if not key[0].endswith("_sum"):
            # A `_sum` may fall with negative observations; nothing else can.
            assert value >= 0
        if before is not None and now < before and not key[0].endswith("_sum"):
            assert value == now


@PROPERTY
@given(pair=scrape_pairs())
def test_a_histogram_that_reset_restarts_every_series_of_its_group(
    pair: tuple[Exposition, Exposition],
) -> None:
    previous, current = pair
    reset = {
        current.groups[key]
        for key, now in current.counters.items()
        if not key[0].endswith("_sum") and now < previous.counters.get(key, -math.inf)
    }
    for key, value in increases(previous, current).items():
        before = previous.counters.get(key)
        if before is None or current.groups[key] in reset:
            assert value == current.counters[key]
        else:
            assert value == current.counters[key] - before


# ---------------------------------------------------------------------------------------
# histogram_quantile


@st.composite
def bucket_sets(draw: st.DrawFn) -> list[tuple[float, float]]:
    bounds = sorted(draw(st.sets(st.floats(-1e9, 1e9), max_size=6)))
    counts = draw(st.lists(amounts, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    if draw(st.booleans()):
        counts = _cumulative(counts)  # as exposed; otherwise as a float sum may leave them
    buckets = list(zip([*bounds, math.inf], counts, strict=True))
    return draw(st.permutations(buckets))


quantiles = st.floats(0, 1)


@settings(PROPERTY, max_examples=250)
@given(buckets=bucket_sets(), low=quantiles, high=quantiles)
def test_histogram_quantile_never_falls_as_q_rises(
    buckets: list[tuple[float, float]], low: float, high: float
) -> None:
    low, high = min(low, high), max(low, high)
    at_low, at_high = histogram_quantile(low, buckets), histogram_quantile(high, buckets)
    if not (math.isnan(at_low) or math.isnan(at_high)):
        assert at_low <= at_high


@settings(PROPERTY, max_examples=250)
@given(buckets=bucket_sets(), q=quantiles)
def test_histogram_quantile_stays_within_the_finite_bounds(
    buckets: list[tuple[float, float]], q: float
) -> None:
    value = histogram_quantile(q, buckets)
    finite = [bound for bound, _ in buckets if math.isfinite(bound)]
    if not math.isnan(value):
        assert min(0.0, *finite) <= value <= max(finite)
