"""The Grafana dashboard holds every panel the seeds name, each on the right metrics.

Seed 000's Grafana table (the single-deployment panels) and seed 002's "Production vs
Canary" dashboard: for each, the panel we ship under that purpose, its type, and what
its queries must read. The live test (test_live_prometheus.py) runs every query against
a real Prometheus; this one keeps a panel from disappearing or drifting off its metric.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.manifests import DASHBOARD

# (seed panel, our title, panel types allowed, fragments every one of which its queries hold)
SEED_000 = [
    ("Total Requests (1h)", "Total requests (time range)", {"stat"}, ["zai_proxy_requests_total"]),
    ("Error Rate", "Error rate (4xx + 5xx)", {"stat"}, ['status_code=~"[45].."']),
    ("429 Errors (1h)", "429s to clients (time range)", {"stat"}, ['status_code="429"']),
    ("Response Time p90", "Response time p90", {"stat"}, ["histogram_quantile(0.9"]),
    (
        "Worker Utilization",
        "Worker utilisation",
        {"gauge"},
        ["zai_proxy_worker_utilization_ratio"],
    ),
    (
        "Rate Limit (current)",
        "Rate limit (current)",
        {"stat"},
        ["zai_proxy_rate_limit_requests_per_second"],
    ),
    (
        "Concurrent Requests",
        "Concurrent requests",
        {"gauge"},
        ["sum by (variant) (zai_proxy_concurrent_requests"],
    ),
    ("Success Rate", "Success rate (2xx)", {"stat"}, ['status_code=~"2.."']),
    ("Request Rate by Status", "Request rate by status", {"timeseries"}, ["status_code"]),
    (
        "Concurrent vs Max Workers",
        "Concurrent vs max workers",
        {"timeseries"},
        ["zai_proxy_concurrent_requests", "zai_proxy_max_workers"],
    ),
    (
        "Duration Percentiles",
        "Duration percentiles",
        {"timeseries"},
        ["histogram_quantile(0.5", "histogram_quantile(0.9", "histogram_quantile(0.99"],
    ),
    (
        "Request/Response Size p90",
        "Request / response size p90",
        {"timeseries"},
        ["zai_proxy_request_size_bytes_bucket", "zai_proxy_response_size_bytes_bucket"],
    ),
    ("Upstream Errors", "Upstream errors by type", {"timeseries"}, ["error_type"]),
    (
        "Rate Limit Behavior",
        "Rate limit behaviour",
        {"timeseries"},
        ["zai_proxy_retry_attempts_total", "zai_proxy_rate_limit_adjustments_total"],
    ),
    ("Token panels", "Tokens (time range)", {"stat"}, ["increase(zai_proxy_tokens_total"]),
]

SEED_002 = [
    (
        "Worker Utilization (gauge)",
        "Worker utilisation by variant",
        ["zai_proxy_worker_utilization_ratio"],
    ),
    ("Request Rate", "Request rate by variant", ["zai_proxy_requests_total"]),
    ("Concurrent Requests (gauge)", "Concurrent requests", ["zai_proxy_concurrent_requests"]),
    ("Error Rate (5xx %)", "Error rate (5xx) by variant", ['status_code=~"5.."']),
    (
        "Latency Comparison (P50/P95)",
        "Latency p50 / p95 by variant",
        ["histogram_quantile(0.5", "histogram_quantile(0.95"],
    ),
    (
        "Current Rate Limit",
        "Current rate limit by variant",
        ["zai_proxy_rate_limit_requests_per_second"],
    ),
    ("Upstream Errors", "Upstream errors by variant", ["zai_proxy_upstream_errors_total"]),
    ("Token Throughput", "Token throughput by variant", ["zai_proxy_tokens_total"]),
    (
        "Token Counting Duration",
        "Token counting duration p95 by variant",
        ["zai_proxy_token_count_duration_seconds_bucket"],
    ),
    (
        "Rate Limit Adjustments",
        "Rate limit adjustments by variant",
        ["zai_proxy_rate_limit_adjustments_total"],
    ),
]


def _panels() -> Iterator[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(json.loads(DASHBOARD.read_text())["panels"])


def _panel(title: str) -> dict[str, Any]:
    found = [p for p in _panels() if p.get("title") == title]
    assert len(found) == 1, f"expected one panel titled {title!r}, found {len(found)}"
    return found[0]


def _queries(panel: dict[str, Any]) -> str:
    # Whitespace-free, so a fragment matches however the query was wrapped.
    return " ".join(t.get("expr", "") for t in panel.get("targets", [])).replace(" ", "")


@pytest.mark.parametrize(("seed", "title", "types", "fragments"), SEED_000, ids=lambda v: v)
def test_every_seed_000_panel_is_on_the_dashboard(
    seed: str, title: str, types: set[str], fragments: list[str]
) -> None:
    panel = _panel(title)
    assert panel["type"] in types, (seed, panel["type"])
    queries = _queries(panel)
    for fragment in fragments:
        assert fragment.replace(" ", "") in queries, (seed, fragment)


@pytest.mark.parametrize(("seed", "title", "fragments"), SEED_002, ids=lambda v: v)
def test_every_seed_002_panel_compares_production_and_canary(
    seed: str, title: str, fragments: list[str]
) -> None:
    panel = _panel(title)
    queries = _queries(panel)
    for fragment in fragments:
        assert fragment.replace(" ", "") in queries, (seed, fragment)
    # Side by side: the panel splits its series by variant.
    assert "variant" in queries, seed


# (our title, fragments every one of which its queries hold)
SHARED_LIMITER = [
    ("Shared limiter backend by pod", ["zai_proxy_rate_limit_backend_up"]),
    (
        "Shared limiter replicas and judge",
        ["zai_proxy_rate_limit_replicas", "zai_proxy_rate_limit_judge"],
    ),
]


@pytest.mark.parametrize(("title", "fragments"), SHARED_LIMITER, ids=lambda v: v)
def test_the_shared_limiter_has_its_panels(title: str, fragments: list[str]) -> None:
    queries = _queries(_panel(title))
    for fragment in fragments:
        assert fragment in queries, (title, fragment)


def test_limiter_rate_panels_show_the_highest_pod_not_the_sum_over_pods() -> None:
    """On the shared limiter every pod reports the one shared rate: a sum would count it
    once per pod."""
    gauges = ("zai_proxy_rate_limit_requests_per_second", "zai_proxy_rate_limit_ceiling")
    found = 0
    for panel in _panels():
        for target in panel.get("targets", []):
            expr = target["expr"].replace(" ", "")
            if any(gauge in expr for gauge in gauges):
                assert expr.startswith("maxby(variant)("), (panel["title"], target["expr"])
                found += 1
    assert found >= 4
