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
    "tokens_in",
    "tokens_out",
    "tokens_cache_read",
    "tokens_cache_write",
    "rate_limit_rps",
    "rate_limit_ceiling",
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
