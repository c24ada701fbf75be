"""Prometheus text maths: parsing, counter increases with resets, histogram_quantile."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from zai_proxy.dashboard import histogram_quantile, increases, parse

INF = math.inf

EXPOSITION = """\
# HELP zai_proxy_requests_total Requests handled.
# TYPE zai_proxy_requests_total counter
zai_proxy_requests_total{method="POST",path="/v1/messages",status_code="200",variant="canary"} 12.0
# HELP zai_proxy_request_duration_seconds Time.
# TYPE zai_proxy_request_duration_seconds histogram
zai_proxy_request_duration_seconds_bucket{le="0.1",method="POST",status_code="200"} 3.0
zai_proxy_request_duration_seconds_bucket{le="+Inf",method="POST",status_code="200"} 5.0
zai_proxy_request_duration_seconds_count{method="POST",status_code="200"} 5.0
zai_proxy_request_duration_seconds_sum{method="POST",status_code="200"} 1.5
zai_proxy_request_duration_seconds_created{method="POST",status_code="200"} 1.7e9
# HELP zai_proxy_concurrent_requests In flight.
# TYPE zai_proxy_concurrent_requests gauge
zai_proxy_concurrent_requests{variant="canary"} 2.0
"""


def test_parse_sorts_counters_and_gauges() -> None:
    exposition = parse(EXPOSITION)
    names = {name for name, _ in exposition.counters}
    assert names == {
        "zai_proxy_requests_total",
        "zai_proxy_request_duration_seconds_bucket",
        "zai_proxy_request_duration_seconds_count",
        "zai_proxy_request_duration_seconds_sum",
    }
    assert {name for name, _ in exposition.gauges} == {"zai_proxy_concurrent_requests"}
    assert exposition.label_values("variant") == ["canary"]


def test_parse_groups_a_histograms_samples_for_resets() -> None:
    exposition = parse(EXPOSITION)
    groups = {exposition.groups[key] for key in exposition.counters if "duration" in key[0]}
    assert len(groups) == 1


def test_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse('zai_proxy_requests_total{status_code="200" 12\n')


def counter(value: float, status: str = "200") -> str:
    return (
        "# TYPE zai_proxy_requests_total counter\n"
        f'zai_proxy_requests_total{{status_code="{status}"}} {value}\n'
    )


def only(values: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    (value,) = values.values()
    return value


def test_increase_is_the_difference() -> None:
    assert only(increases(parse(counter(10)), parse(counter(25)))) == 15


def test_counter_that_went_down_was_reset_and_counts_from_zero() -> None:
    # PromQL's rule: after a reset the increase is the new value.
    assert only(increases(parse(counter(100)), parse(counter(7)))) == 7


def test_new_series_grew_from_zero() -> None:
    grown = increases(parse(counter(10)), parse(counter(10) + counter(4, "500").split("\n")[1]))
    assert sorted(grown.values()) == [0, 4]


def histogram(buckets: dict[str, float], total: float) -> str:
    lines = ["# TYPE d histogram"]
    lines += [f'd_bucket{{le="{le}"}} {count}' for le, count in buckets.items()]
    lines += [f"d_count {buckets['+Inf']}", f"d_sum {total}"]
    return "\n".join(lines) + "\n"


def test_histogram_resets_as_a_whole() -> None:
    # Only the +Inf bucket and the count went down, but the target restarted: every
    # bucket starts again from zero, or quantiles would mix two lifetimes.
    before = parse(histogram({"0.1": 5, "1": 8, "+Inf": 10}, 4.0))
    after = parse(histogram({"0.1": 6, "1": 8, "+Inf": 9}, 3.0))
    grown = {key[0] + dict(key[1]).get("le", ""): v for key, v in increases(before, after).items()}
    assert grown == {
        "d_bucket0.1": 6,
        "d_bucket1": 8,
        "d_bucket+Inf": 9,
        "d_count": 9,
        "d_sum": 3.0,
    }


# (cumulative buckets, q, expected) worked by hand from PromQL's rules; the promtool test
# below checks every one against Prometheus's own implementation.
WORKED: list[tuple[list[tuple[float, float]], float, float]] = [
    # Linear within the bucket: rank 20 lies 10 into (0.1, 0.5] which holds 20.
    ([(0.1, 10), (0.5, 30), (1, 40), (INF, 40)], 0.5, 0.3),
    ([(0.1, 10), (0.5, 30), (1, 40), (INF, 40)], 0.95, 0.9),
    ([(0.1, 10), (0.5, 30), (1, 40), (INF, 40)], 0.99, 0.98),
    # The rank falls in the +Inf bucket: the highest finite bound.
    ([(0.1, 10), (INF, 20)], 0.95, 0.1),
    ([(0.1, 10), (INF, 20)], 0.25, 0.05),
    # The lowest bucket starts at 0.
    ([(0.5, 4), (1, 8), (INF, 8)], 0.25, 0.25),
    # A lowest bound <= 0 is returned as is.
    ([(-1, 4), (1, 8), (INF, 8)], 0.25, -1),
    # Counts that go down with le are made monotonic first.
    ([(0.1, 10), (0.5, 8), (1, 20), (INF, 20)], 0.5, 0.1),
    # Exactly on a bucket's cumulative count: that bucket's bound.
    ([(0.25, 5), (0.5, 10), (INF, 10)], 0.5, 0.25),
    # Out-of-range q.
    ([(0.1, 10), (INF, 20)], -0.1, -INF),
    ([(0.1, 10), (INF, 20)], 1.5, INF),
    # No observations, one bucket only, no +Inf bucket, 0/0 at q=0: NaN.
    ([(0.1, 0), (INF, 0)], 0.5, math.nan),
    ([(INF, 10)], 0.5, math.nan),
    ([(0.1, 10), (1, 20)], 0.5, math.nan),
    ([(0.1, 0), (0.5, 4), (INF, 4)], 0.0, math.nan),
]


@pytest.mark.parametrize(("buckets", "q", "expected"), WORKED)
def test_histogram_quantile_worked_examples(
    buckets: list[tuple[float, float]], q: float, expected: float
) -> None:
    got = histogram_quantile(q, buckets)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-12)


def test_histogram_quantile_ignores_bucket_order() -> None:
    shuffled = [(1.0, 40.0), (INF, 40.0), (0.1, 10.0), (0.5, 30.0)]
    assert histogram_quantile(0.5, shuffled) == pytest.approx(0.3)


def _le(bound: float) -> str:
    return "+Inf" if bound == INF else repr(bound)


def _yaml_value(value: float) -> str:
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return repr(value)


def test_worked_examples_agree_with_promtool(tmp_path: Path) -> None:
    """The same table, evaluated by Prometheus's own histogram_quantile: our results must
    be the very same floats (promtool compares exactly)."""
    promtool = require_tool("promtool")
    series: list[str] = []
    checks: list[str] = []
    for i, (buckets, q, _) in enumerate(WORKED):
        expected = histogram_quantile(q, buckets)
        for bound, count in buckets:
            series.append(
                f"      - series: 'h{i}_bucket{{le=\"{_le(bound)}\"}}'\n        values: '{count}'"
            )
        # `x == x` drops NaN (NaN != NaN), so a NaN expectation is an empty result.
        expr = f"histogram_quantile({q}, h{i}_bucket)"
        samples = (
            "[]"
            if math.isnan(expected)
            else f"\n          - labels: '{{}}'\n            value: {_yaml_value(expected)}"
        )
        checks.append(
            f"      - expr: '{expr} == {expr}'\n        eval_time: 0m\n"
            f"        exp_samples: {samples}"
        )
    text = (
        "rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n"
        "    input_series:\n" + "\n".join(series) + "\n    promql_expr_test:\n" + "\n".join(checks)
    )
    path = tmp_path / "quantiles_test.yml"
    path.write_text(text + "\n")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


# More cases worked by hand from PromQL's rules; promtool checks these too (below).
MORE_WORKED: list[tuple[list[tuple[float, float]], float, float]] = [
    # q = 1 is the top of the bucket that holds the last observation, not +Inf.
    ([(0.1, 10), (0.5, 30), (1, 40), (INF, 40)], 1.0, 1.0),
    # A single observation is interpolated like many.
    ([(0.1, 0), (0.5, 1), (INF, 1)], 0.5, 0.3),
    # A bucket below its neighbour counts as the neighbour, above the rank too.
    ([(0.1, 10), (0.5, 8), (1, 20), (INF, 20)], 0.75, 0.75),
    # q = 0 with an empty lowest bucket at bound 0: that bound, not 0/0.
    ([(0, 0), (0.5, 4), (INF, 4)], 0.0, 0.0),
    # Negative counts (a broken target) never index past the +Inf bucket.
    ([(0.1, -5), (INF, -5)], 0.5, 0.1),
    # A count that happens to equal the next bound is just a count.
    ([(1, 2), (2, 5), (INF, 5)], 0.5, 7 / 6),
]


@pytest.mark.parametrize(("buckets", "q", "expected"), MORE_WORKED)
def test_histogram_quantile_edge_cases(
    buckets: list[tuple[float, float]], q: float, expected: float
) -> None:
    assert histogram_quantile(q, buckets) == pytest.approx(expected, rel=1e-12)


def test_the_edge_cases_agree_with_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    series: list[str] = []
    checks: list[str] = []
    for i, (buckets, q, _) in enumerate(MORE_WORKED):
        # Our very floats: promtool compares exactly.
        expected = histogram_quantile(q, buckets)
        series += [
            f"      - series: 'e{i}_bucket{{le=\"{_le(bound)}\"}}'\n        values: '{count}'"
            for bound, count in buckets
        ]
        checks.append(
            f"      - expr: 'histogram_quantile({q}, e{i}_bucket)'\n        eval_time: 0m\n"
            f"        exp_samples:\n          - labels: '{{}}'\n"
            f"            value: {_yaml_value(expected)}"
        )
    path = tmp_path / "edge_test.yml"
    path.write_text(
        "rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n"
        "    input_series:\n"
        + "\n".join(series)
        + "\n    promql_expr_test:\n"
        + "\n".join(checks)
        + "\n"
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_buckets_with_the_same_bound_are_added_together() -> None:
    # Two targets' buckets side by side: PromQL coalesces equal bounds before the search.
    doubled = [(0.1, 5), (0.5, 15), (INF, 20)] * 2
    assert histogram_quantile(0.5, doubled) == pytest.approx(0.3, rel=1e-12)
    assert histogram_quantile(0.25, doubled) == pytest.approx(0.1, rel=1e-12)
    # 2 + 8 at 0.1 make 10 of 20: the median is the top of that bucket.
    assert histogram_quantile(0.5, [(0.1, 2), (0.1, 8), (0.5, 20), (INF, 20)]) == 0.1


def test_float_noise_between_buckets_does_not_move_the_quantile() -> None:
    # Sums of rates leave a bucket a hair above the one below although nothing fell
    # between them; PromQL (2.46+) snaps such neighbours together, so q = 1 stays in the
    # lowest bucket instead of jumping to the top of the next one.
    noisy = 10 + 1e-12
    assert histogram_quantile(1.0, [(0.1, 10), (0.5, noisy), (INF, noisy)]) == 0.1
    assert histogram_quantile(1.0, [(0.1, 10), (0.25, 10), (0.5, noisy), (INF, noisy)]) == 0.1
    assert histogram_quantile(1.0, [(0.1, 1 - 1e-13), (0.5, 1), (INF, 1)]) == 0.1
    assert histogram_quantile(1.0, [(0.1, 1e12), (0.5, 1e12 + 1), (INF, 1e12 + 1)]) == 0.1


def test_a_difference_of_exactly_the_tolerance_is_still_noise() -> None:
    # (high - low) / high is exactly 1e-12 in floating point for these two.
    low, high = 1.8189894035440375, 1.8189894035458565
    assert (high - low) / high == 1e-12
    assert histogram_quantile(1.0, [(0.1, low), (0.5, high), (INF, high)]) == 0.1


def test_a_real_difference_between_buckets_is_kept() -> None:
    assert histogram_quantile(1.0, [(0.1, 10), (0.5, 10 + 1e-9), (INF, 10 + 1e-9)]) == 0.5
    assert histogram_quantile(0.5, [(0.1, 5), (0.5, 0), (INF, 10)]) == pytest.approx(0.1)


def test_a_failed_parse_says_what_it_was_not() -> None:
    with pytest.raises(ValueError, match=r"^not a Prometheus text exposition: "):
        parse('zai_proxy_requests_total{status_code="200" 12\n')


def test_parse_keeps_the_values_of_gauges_and_counters() -> None:
    exposition = parse(EXPOSITION)
    assert exposition.gauges == {("zai_proxy_concurrent_requests", (("variant", "canary"),)): 2.0}
    assert exposition.counters[("zai_proxy_request_duration_seconds_sum", SERIES)] == 1.5


SERIES = (("method", "POST"), ("status_code", "200"))

SUMMARY = """\
# TYPE rpc_seconds summary
rpc_seconds{{quantile="0.5"}} 0.2
rpc_seconds{{quantile="0.9"}} 0.7
rpc_seconds_count {count}
rpc_seconds_sum {total}
"""


def test_a_summarys_quantiles_are_gauges_and_its_count_and_sum_counters() -> None:
    exposition = parse(SUMMARY.format(count=10, total=3.5))
    assert exposition.gauges == {
        ("rpc_seconds", (("quantile", "0.5"),)): 0.2,
        ("rpc_seconds", (("quantile", "0.9"),)): 0.7,
    }
    assert exposition.counters == {("rpc_seconds_count", ()): 10, ("rpc_seconds_sum", ()): 3.5}


def test_a_summary_resets_as_a_whole() -> None:
    grown = increases(
        parse(SUMMARY.format(count=10, total=3.5)), parse(SUMMARY.format(count=3, total=4.0))
    )
    assert grown == {("rpc_seconds_count", ()): 3, ("rpc_seconds_sum", ()): 4.0}


def test_a_falling_sum_alone_is_not_a_reset() -> None:
    # Negative observations make a histogram's _sum fall while its counts still rise.
    before = parse(histogram({"0.1": 5, "+Inf": 10}, 4.0))
    after = parse(histogram({"0.1": 6, "+Inf": 12}, 3.0))
    grown = {key[0] + dict(key[1]).get("le", ""): v for key, v in increases(before, after).items()}
    assert grown == {"d_bucket0.1": 1, "d_bucket+Inf": 2, "d_count": 2, "d_sum": -1.0}


def test_a_reset_of_one_series_leaves_the_others_as_differences() -> None:
    two_counters = (
        "# TYPE a_total counter\na_total {a}\n# TYPE b_total counter\nb_total {b}\n"
        '# TYPE h histogram\nh_bucket{{x="1",le="+Inf"}} {a}\nh_count{{x="1"}} {a}\n'
        'h_bucket{{x="2",le="+Inf"}} {b}\nh_count{{x="2"}} {b}\n'
    )
    grown = increases(parse(two_counters.format(a=10, b=10)), parse(two_counters.format(a=4, b=15)))
    assert {(name, dict(labels).get("x")): v for (name, labels), v in grown.items()} == {
        ("a_total", None): 4,
        ("b_total", None): 5,
        ("h_bucket", "1"): 4,
        ("h_count", "1"): 4,
        ("h_bucket", "2"): 5,
        ("h_count", "2"): 5,
    }


def test_untyped_samples_with_counter_suffixes_are_counters_the_rest_gauges() -> None:
    exposition = parse(
        '# TYPE jobs_total untyped\njobs_total 3\nreq_bucket{le="1"} 4\nreq_count 5\n'
        "temperature 21.5\nreq_sum 2.5\n"
    )
    assert exposition.counters == {
        ("jobs_total", ()): 3,
        ("req_bucket", (("le", "1"),)): 4,
        ("req_count", ()): 5,
    }
    assert exposition.gauges == {("temperature", ()): 21.5, ("req_sum", ()): 2.5}


def test_a_gauge_is_a_gauge_whatever_its_name_ends_with() -> None:
    exposition = parse("# TYPE queue_count gauge\nqueue_count 7\n")
    assert exposition.gauges == {("queue_count", ()): 7}
    assert exposition.counters == {}


def test_a_counter_that_is_not_a_number_is_skipped_not_its_neighbours() -> None:
    exposition = parse(
        '# TYPE a_total counter\na_total{x="1"} NaN\na_total{x="2"} +Inf\na_total{x="3"} 4\n'
    )
    assert exposition.counters == {("a_total", (("x", "3"),)): 4}


def test_label_values_come_most_frequent_first() -> None:
    exposition = parse(
        '# TYPE a gauge\na{variant="canary"} 1\n# TYPE b_total counter\n'
        'b_total{variant="production",x="1"} 1\nb_total{variant="production",x="2"} 1\n'
        'b_total{variant="production",x="3"} 1\nb_total{variant="canary",x="3"} 1\n'
        '# TYPE c gauge\nc{variant="test"} 1\n'
    )
    assert exposition.label_values("variant") == ["production", "canary", "test"]
    assert exposition.label_values("x") == ["3", "1", "2"]
    assert exposition.label_values("absent") == []
