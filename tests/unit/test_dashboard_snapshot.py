"""The snapshot's JSON contract, and the minute averages made from it."""

from __future__ import annotations

import json

import pytest

from zai_proxy.dashboard import Snapshot, average

# The page and the demo read these names; changing one is changing the contract.
CONTRACT = [
    "ts",
    "variant",
    "interval_s",
    "stale",
    "targets_up",
    "targets_total",
    "req_rate",
    "error_rate_pct",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "request_size_avg",
    "response_size_avg",
    "status_code_rates",
    "token_rate_in",
    "token_rate_out",
    "token_rate_cache_read",
    "token_rate_cache_write",
    "token_rates_by_model",
    "tokens_in",
    "tokens_out",
    "tokens_cache_read",
    "tokens_cache_write",
    "rate_limit_rps",
    "rate_limit_ceiling",
    "rate_limit_backend",
    "rate_limit_backend_up",
    "rate_limit_replicas",
    "rate_limit_backend_error_rate",
    "rate_limit_adj_increase",
    "rate_limit_adj_decrease",
    "rate_limit_adj_probe",
    "rejections",
    "rejections_by_reason",
    "concurrent",
    "max_workers",
    "worker_utilization",
    "retry_rates",
    "upstream_error_rates",
]


def row(ts: float, **values: object) -> Snapshot:
    base: dict[str, object] = {
        "ts": ts,
        "variant": "production",
        "interval_s": 5.0,
        "targets_up": 1,
        "targets_total": 1,
    }
    base.update(values)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_json_has_exactly_the_contract_names_and_round_trips() -> None:
    snapshot = row(
        1.5,
        req_rate=2.0,
        latency_p95_ms=None,
        status_code_rates={"200": 2.0},
        rejections_by_reason={"capacity": 1.0},
    )
    data = json.loads(snapshot.to_json())
    assert list(data) == CONTRACT
    assert data["latency_p95_ms"] is None and data["status_code_rates"] == {"200": 2.0}
    assert Snapshot.from_json(snapshot.to_json()) == snapshot


def test_nan_never_reaches_json() -> None:
    with pytest.raises(ValueError):
        row(0.0, req_rate=float("nan")).to_json()


def test_average_weights_rates_by_seconds_and_sums_increases() -> None:
    rows = [
        row(0.0, interval_s=5.0, req_rate=10.0, tokens_in=100.0, status_code_rates={"200": 10.0}),
        row(5.0, interval_s=15.0, req_rate=2.0, tokens_in=30.0, status_code_rates={"500": 2.0}),
    ]
    minute = average(rows, 0.0)
    # 50 + 30 requests over 20 s.
    assert minute.req_rate == pytest.approx(4.0)
    assert minute.interval_s == 20.0
    assert minute.tokens_in == 130.0
    assert minute.status_code_rates == pytest.approx({"200": 2.5, "500": 1.5})


def test_average_weights_per_request_figures_by_requests() -> None:
    rows = [
        row(0.0, req_rate=3.0, error_rate_pct=0.0, latency_p95_ms=100.0),
        row(5.0, req_rate=1.0, error_rate_pct=100.0, latency_p95_ms=500.0),
        row(10.0, req_rate=0.0, error_rate_pct=None, latency_p95_ms=None),
    ]
    minute = average(rows, 0.0)
    # 5 failed of 20 requests.
    assert minute.error_rate_pct == pytest.approx(25.0)
    assert minute.latency_p95_ms == pytest.approx(200.0)


def test_average_of_gauges_is_their_mean_and_nulls_stay_out() -> None:
    rows = [row(0.0, concurrent=2.0, rate_limit_ceiling=None), row(5.0, concurrent=4.0)]
    minute = average(rows, 0.0)
    assert minute.concurrent == 3.0 and minute.rate_limit_ceiling is None


def test_a_minute_is_stale_only_when_every_row_is() -> None:
    stale = Snapshot.stale_at(0.0, "production", 2)
    assert average([stale, stale], 0.0).stale
    minute = average([stale, row(5.0, req_rate=1.0, targets_total=2)], 0.0)
    assert not minute.stale and minute.req_rate == 1.0
    assert (minute.targets_up, minute.targets_total) == (0, 2)


def test_the_json_is_compact() -> None:
    text = row(1.0, req_rate=2.0, status_code_rates={"200": 2.0}).to_json()
    assert " " not in text and "\n" not in text


def test_to_dict_hands_out_copies_of_the_maps() -> None:
    snapshot = row(1.0, status_code_rates={"200": 2.0})
    snapshot.to_dict()["status_code_rates"]["500"] = 1.0
    assert snapshot.status_code_rates == {"200": 2.0}


def test_old_rows_stay_readable_missing_names_take_defaults_and_unknown_ones_are_ignored() -> None:
    old = {"ts": 60.0, "variant": "canary", "req_rate": 1, "retired_field": 3}
    assert Snapshot.from_dict(old) == Snapshot(ts=60.0, variant="canary", req_rate=1)


def test_maps_are_read_back_with_string_keys_and_float_values() -> None:
    data = {"ts": 0.0, "variant": "production", "status_code_rates": {200: 1}, "retry_rates": None}
    snapshot = Snapshot.from_dict(data)
    assert snapshot.status_code_rates == {"200": 1.0}
    assert isinstance(snapshot.status_code_rates["200"], float)
    assert snapshot.retry_rates == {}


def test_a_stale_snapshot_has_its_tick_variant_and_targets_and_nothing_else() -> None:
    assert Snapshot.stale_at(60.0, "canary", 3) == Snapshot(
        ts=60.0, variant="canary", stale=True, targets_up=0, targets_total=3
    )


def test_a_minute_of_stale_rows_is_one_stale_row_at_the_minute() -> None:
    stale = Snapshot.stale_at(65.0, "canary", 2)
    assert average([stale, stale], 60.0) == Snapshot.stale_at(60.0, "canary", 2)


def test_an_empty_minute_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^average\(\) needs at least one row$"):
        average([], 0.0)


def test_the_average_of_one_row_is_that_row_at_the_minute() -> None:
    one = row(
        65.0,
        variant="canary",
        interval_s=1.0,
        targets_up=2,
        targets_total=3,
        req_rate=3.0,
        error_rate_pct=10.0,
        latency_p50_ms=12.0,
        status_code_rates={"200": 3.0},
        tokens_in=7.0,
        rejections=1.0,
        rejections_by_reason={"capacity": 1.0},
        concurrent=4.0,
    )
    assert average([one], 60.0) == Snapshot(
        ts=60.0,
        variant="canary",
        interval_s=1.0,
        stale=False,
        targets_up=2,
        targets_total=3,
        req_rate=3.0,
        error_rate_pct=10.0,
        latency_p50_ms=12.0,
        status_code_rates={"200": 3.0},
        tokens_in=7.0,
        rejections=1.0,
        rejections_by_reason={"capacity": 1.0},
        concurrent=4.0,
    )


def test_average_sums_rejections_by_reason() -> None:
    rows = [
        row(0.0, rejections_by_reason={"capacity": 1.0, "queue": 2.0}),
        row(5.0, rejections_by_reason={"capacity": 3.0}),
    ]
    assert average(rows, 0.0).rejections_by_reason == {"capacity": 4.0, "queue": 2.0}


def test_average_of_a_rate_map_adds_the_same_key_across_rows() -> None:
    rows = [row(0.0, retry_rates={"429": 1.0}), row(5.0, retry_rates={"429": 3.0})]
    assert average(rows, 0.0).retry_rates == {"429": 2.0}


def test_average_of_tokens_by_model_weighs_each_model_by_seconds() -> None:
    rows = [
        row(0.0, token_rates_by_model={"glm-4.6": 10.0, "glm-4.5-air": 2.0}),
        row(5.0, token_rates_by_model={"glm-4.6": 30.0}),
    ]
    minute = average(rows, 0.0)
    # A model missing from a row spent nothing then.
    assert minute.token_rates_by_model == {"glm-4.6": 20.0, "glm-4.5-air": 1.0}
    assert Snapshot.from_json(minute.to_json()) == minute


def test_an_increase_no_row_has_stays_null() -> None:
    minute = average([row(0.0, tokens_in=None), row(5.0, tokens_in=None)], 0.0)
    assert minute.tokens_in is None


def test_a_short_row_still_weighs_in_by_its_seconds() -> None:
    rows = [row(0.0, interval_s=1.0, req_rate=10.0), row(1.0, interval_s=4.0, req_rate=0.0)]
    assert average(rows, 0.0).req_rate == 2.0


def test_a_row_without_a_figure_is_skipped_not_the_rows_after_it() -> None:
    rows = [
        row(0.0, req_rate=0.0, latency_p50_ms=None),
        row(5.0, req_rate=2.0, latency_p50_ms=40.0),
    ]
    assert average(rows, 0.0).latency_p50_ms == 40.0


def test_per_request_figures_weigh_by_requests_not_by_rate() -> None:
    # 2/s for 10 s is 20 requests, 4/s for 2.5 s is 10: the first row counts double.
    rows = [
        row(0.0, interval_s=10.0, req_rate=2.0, error_rate_pct=30.0),
        row(10.0, interval_s=2.5, req_rate=4.0, error_rate_pct=0.0),
    ]
    assert average(rows, 0.0).error_rate_pct == pytest.approx(20.0)


def test_a_row_without_a_request_rate_does_not_weigh_per_request_figures() -> None:
    rows = [
        row(0.0, req_rate=None, error_rate_pct=100.0),
        row(5.0, req_rate=1.0, error_rate_pct=0.0),
    ]
    assert average(rows, 0.0).error_rate_pct == 0.0


def test_rows_that_cover_no_time_give_no_rates() -> None:
    minute = average([row(0.0, interval_s=0.0, status_code_rates={"200": 1.0})], 0.0)
    assert minute.status_code_rates == {}
    assert minute.req_rate is None


def test_average_of_the_limiters_gauges_is_their_mean_and_its_error_rate_is_weighted() -> None:
    rows = [
        row(0.0, interval_s=5.0, rate_limit_backend_up=2.0, rate_limit_replicas=2.0),
        row(5.0, interval_s=5.0, rate_limit_backend_up=1.0, rate_limit_replicas=None),
        row(10.0, interval_s=10.0, rate_limit_backend_error_rate=3.0),
        row(20.0, interval_s=10.0, rate_limit_backend_error_rate=0.0),
    ]
    minute = average(rows, 0.0)
    assert minute.rate_limit_backend_up == 1.5 and minute.rate_limit_replicas == 2.0
    assert minute.rate_limit_backend_error_rate == 1.5


@pytest.mark.parametrize(
    ("backends", "expected"),
    [
        (["redis", "redis"], "redis"),
        (["memory", None], "memory"),
        ([None, "redis"], "redis"),
        (["redis", "memory"], "mixed"),
        (["mixed", "redis"], "mixed"),
        ([None, None], None),
    ],
)
def test_a_minutes_backend_is_the_one_its_rows_agree_on_else_mixed(
    backends: list[str | None], expected: str | None
) -> None:
    rows = [row(5.0 * i, rate_limit_backend=b) for i, b in enumerate(backends)]
    assert average(rows, 0.0).rate_limit_backend == expected


def test_a_stale_rows_backend_does_not_count() -> None:
    stale = Snapshot(ts=0.0, variant="production", stale=True, rate_limit_backend="memory")
    assert average([stale, row(5.0, rate_limit_backend="redis")], 0.0).rate_limit_backend == (
        "redis"
    )


def test_a_row_from_before_the_shared_limiter_reads_back_with_its_fields_null() -> None:
    old = json.loads(row(60.0, rate_limit_rps=5.0).to_json())
    for name in (
        "rate_limit_backend",
        "rate_limit_backend_up",
        "rate_limit_replicas",
        "rate_limit_backend_error_rate",
    ):
        del old[name]
    snapshot = Snapshot.from_dict(old)
    assert snapshot == row(60.0, rate_limit_rps=5.0)
    assert snapshot.rate_limit_backend is None and snapshot.rate_limit_replicas is None
