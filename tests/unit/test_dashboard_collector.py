"""The collector's maths on hand-built expositions, its tick bookkeeping, and its schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from prometheus_client import generate_latest

from zai_proxy.dashboard import (
    Collector,
    LimiterState,
    Reading,
    ScrapeLoop,
    Snapshot,
    build_snapshot,
    infer_variant,
    limiter_state,
    parse,
    read,
)
from zai_proxy.dashboard.readings import MAX_FIGURE, MAX_LABEL_VALUES
from zai_proxy.errors import ScrapeError
from zai_proxy.proxy import LiveState, ProxyMetrics
from zai_proxy.settings import without_userinfo

URL = "http://zai-proxy:8080/metrics"
CANARY_URL = "http://zai-proxy-test:8080/metrics"


@dataclass
class Text:
    """A proxy-like exposition, built sample by sample and rendered per family."""

    families: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    variant: str | None = "production"

    def _labels(self, labels: dict[str, str]) -> str:
        if self.variant is not None:
            labels = {**labels, "variant": self.variant}
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return "{" + inner + "}" if inner else ""

    def _add(self, family: str, kind: str, line: str) -> Text:
        self.families.setdefault(family, (kind, []))[1].append(line)
        return self

    def counter(self, name: str, value: float, **labels: str) -> Text:
        return self._add(name, "counter", f"{name}_total{self._labels(labels)} {value}")

    def gauge(self, name: str, value: float, **labels: str) -> Text:
        return self._add(name, "gauge", f"{name}{self._labels(labels)} {value}")

    def histogram(
        self, name: str, buckets: dict[float, float], total: float, **labels: str
    ) -> Text:
        for bound, count in sorted(buckets.items()):
            le = "+Inf" if math.isinf(bound) else repr(bound)
            self._add(
                name, "histogram", f"{name}_bucket{self._labels({**labels, 'le': le})} {count}"
            )
        self._add(name, "histogram", f"{name}_count{self._labels(labels)} {buckets[math.inf]}")
        return self._add(name, "histogram", f"{name}_sum{self._labels(labels)} {total}")

    def requests(self, status: str, value: float) -> Text:
        return self.counter(
            "zai_proxy_requests", value, method="POST", path="/v1/messages", status_code=status
        )

    def tokens(
        self, direction: str, value: float, model: str = "glm-4.6", tier: str = "standard"
    ) -> Text:
        return self.counter(
            "zai_proxy_tokens", value, direction=direction, model=model, pricing_tier=tier
        )

    def __str__(self) -> str:
        out: list[str] = []
        for family, (kind, lines) in self.families.items():
            out.append(f"# TYPE {family} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"


def two_scrapes(before: Text, after: Text, *, seconds: float = 5.0, url: str = URL) -> Snapshot:
    collector = Collector([url], interval=seconds, epoch_ts=1000.0)
    assert collector.observe(url, 0, at=0.0, text=str(before)) == []
    (snapshot,) = collector.observe(url, 1, at=seconds, text=str(after))
    return snapshot


# --------------------------------------------------------------------------- rates


def test_request_rate_error_rate_and_status_rates_come_from_counter_deltas() -> None:
    before = Text().requests("200", 100).requests("500", 10)
    after = Text().requests("200", 150).requests("500", 20)
    snapshot = two_scrapes(before, after)
    assert snapshot.req_rate == pytest.approx(12.0)
    assert snapshot.error_rate_pct == pytest.approx(100 * 10 / 60)
    assert snapshot.status_code_rates == pytest.approx({"200": 10.0, "500": 2.0})
    assert snapshot.interval_s == 5.0 and snapshot.ts == 1005.0


def test_token_rates_and_totals_for_all_four_directions_sum_models_and_tiers() -> None:
    before = Text()
    after = Text()
    for direction, amount in [
        ("input", 100),
        ("output", 50),
        ("cache_read", 30),
        ("cache_write", 5),
    ]:
        before.tokens(direction, 1000).tokens(direction, 0, model="glm-4.5", tier="peak")
        after.tokens(direction, 1000 + amount).tokens(
            direction, amount, model="glm-4.5", tier="peak"
        )
    snapshot = two_scrapes(before, after)
    assert (snapshot.tokens_in, snapshot.tokens_out) == (200, 100)
    assert (snapshot.tokens_cache_read, snapshot.tokens_cache_write) == (60, 10)
    assert snapshot.token_rate_in == pytest.approx(40.0)
    assert snapshot.token_rate_out == pytest.approx(20.0)
    assert snapshot.token_rate_cache_read == pytest.approx(12.0)
    assert snapshot.token_rate_cache_write == pytest.approx(2.0)


def test_counter_reset_restarts_the_delta_and_never_goes_negative() -> None:
    before = Text().requests("200", 1000).tokens("input", 50_000)
    after = Text().requests("200", 30).tokens("input", 400)  # the proxy restarted
    snapshot = two_scrapes(before, after)
    assert snapshot.req_rate == pytest.approx(6.0)
    assert snapshot.tokens_in == 400
    assert snapshot.token_rate_in == pytest.approx(80.0)


DURATION = "zai_proxy_request_duration_seconds"


def test_latency_quantiles_come_from_bucket_deltas() -> None:
    # Deltas: (0.1: 10, 0.5: 30, 1: 40, +Inf: 40), the worked example: p50 0.3 s,
    # p95 0.9 s, p99 0.98 s.  The earlier counts must not leak into the result.
    labels = {"method": "POST", "path": "/v1/messages", "status_code": "200"}
    before = Text().histogram(DURATION, {0.1: 500, 0.5: 500, 1.0: 500, math.inf: 500}, 10, **labels)
    after = Text().histogram(DURATION, {0.1: 510, 0.5: 530, 1.0: 540, math.inf: 540}, 30, **labels)
    snapshot = two_scrapes(before, after)
    assert snapshot.latency_p50_ms == pytest.approx(300.0)
    assert snapshot.latency_p95_ms == pytest.approx(900.0)
    assert snapshot.latency_p99_ms == pytest.approx(980.0)


def test_latency_buckets_are_summed_across_label_sets() -> None:
    ok = {"method": "POST", "path": "/v1/messages", "status_code": "200"}
    failed = {**ok, "status_code": "500"}
    before = (
        Text()
        .histogram(DURATION, {0.1: 0, 0.5: 0, 1.0: 0, math.inf: 0}, 0, **ok)
        .histogram(DURATION, {0.1: 0, 0.5: 0, 1.0: 0, math.inf: 0}, 0, **failed)
    )
    after = (
        Text()
        .histogram(DURATION, {0.1: 10, 0.5: 20, 1.0: 20, math.inf: 20}, 0, **ok)
        .histogram(DURATION, {0.1: 0, 0.5: 10, 1.0: 20, math.inf: 20}, 0, **failed)
    )
    # Summed: (0.1: 10, 0.5: 30, 1: 40, +Inf: 40).
    assert two_scrapes(before, after).latency_p95_ms == pytest.approx(900.0)


def test_an_interval_without_traffic_has_null_ratios_and_zero_rates() -> None:
    labels = {"method": "POST", "path": "/v1/messages", "status_code": "200"}
    text = (
        Text()
        .requests("200", 100)
        .tokens("input", 1000)
        .histogram(DURATION, {0.1: 50, math.inf: 100}, 20, **labels)
        .histogram("zai_proxy_request_size_bytes", {100.0: 10, math.inf: 100}, 9000)
    )
    snapshot = two_scrapes(text, text)
    assert snapshot.req_rate == 0.0 and snapshot.token_rate_in == 0.0
    assert snapshot.error_rate_pct is None
    assert (snapshot.latency_p50_ms, snapshot.latency_p95_ms, snapshot.latency_p99_ms) == (
        None,
        None,
        None,
    )
    assert snapshot.request_size_avg is None and snapshot.response_size_avg is None


def test_missing_counters_count_as_zero_and_missing_gauges_are_null() -> None:
    text = Text().gauge("zai_proxy_max_workers", 10)
    snapshot = two_scrapes(text, text)
    assert snapshot.req_rate == 0.0
    assert snapshot.tokens_in == 0.0 and snapshot.token_rate_cache_write == 0.0
    assert snapshot.rejections == 0.0 and snapshot.rate_limit_adj_probe == 0.0
    assert snapshot.status_code_rates == {}
    assert snapshot.max_workers == 10 and snapshot.concurrent is None
    assert snapshot.worker_utilization is None
    assert snapshot.rate_limit_rps is None and snapshot.rate_limit_ceiling is None


def test_size_averages_are_sum_over_count_deltas() -> None:
    req = "zai_proxy_request_size_bytes"
    resp = "zai_proxy_response_size_bytes"
    before = (
        Text()
        .histogram(req, {1e3: 1, math.inf: 1}, 500)
        .histogram(resp, {1e3: 0, math.inf: 1}, 2000)
    )
    after = (
        Text()
        .histogram(req, {1e3: 3, math.inf: 5}, 8500)
        .histogram(resp, {1e3: 0, math.inf: 3}, 2000 + 2 * 4096)
    )
    snapshot = two_scrapes(before, after)
    assert snapshot.request_size_avg == pytest.approx(2000.0)
    assert snapshot.response_size_avg == pytest.approx(4096.0)


def test_limiter_retries_errors_and_rejections() -> None:
    def text(n: float) -> Text:
        t = Text()
        t.gauge("zai_proxy_rate_limit_requests_per_second", 12.5)
        t.gauge("zai_proxy_rate_limit_ceiling_requests_per_second", 20)
        t.gauge("zai_proxy_concurrent_requests", 3).gauge("zai_proxy_max_workers", 10)
        for direction, k in [("increase", 1), ("decrease", 2), ("probe", 0)]:
            t.counter("zai_proxy_rate_limit_adjustments", k * n, direction=direction)
        t.counter("zai_proxy_rate_limit_rejections", 4 * n, reason="capacity")
        t.counter("zai_proxy_rate_limit_rejections", n, reason="rate_limit")
        t.counter("zai_proxy_retry_attempts", 15 * n, reason="retry")
        t.counter("zai_proxy_retry_attempts", 10 * n, reason="429")
        t.counter("zai_proxy_retry_attempts", 5 * n, reason="network_error")
        t.counter("zai_proxy_upstream_errors", 5 * n, error_type="timeout")
        return t

    snapshot = two_scrapes(text(1), text(2))
    assert snapshot.rate_limit_rps == 12.5 and snapshot.rate_limit_ceiling == 20
    assert snapshot.concurrent == 3 and snapshot.max_workers == 10
    assert snapshot.worker_utilization == pytest.approx(0.3)
    assert (
        snapshot.rate_limit_adj_increase,
        snapshot.rate_limit_adj_decrease,
        snapshot.rate_limit_adj_probe,
    ) == (1, 2, 0)
    assert snapshot.rejections == 5
    assert snapshot.rejections_by_reason == {"capacity": 4, "rate_limit": 1}
    # reason="retry" is the total of the others, so it is left out.
    assert snapshot.retry_rates == pytest.approx({"429": 2.0, "network_error": 1.0})
    assert snapshot.upstream_error_rates == pytest.approx({"timeout": 1.0})


def test_the_proxys_own_exposition_fills_every_field() -> None:
    """Guards the metric names against drift: a real ProxyMetrics registry."""
    state = LiveState(concurrent=2, max_workers=8, rate_limit_rps=7.0, rate_limit_ceiling=None)
    metrics = ProxyMetrics(variant="canary", live=lambda: state)

    def scrape() -> str:
        return generate_latest(metrics.registry).decode()

    before = scrape()
    v = "canary"
    for status, seconds in [("200", 0.2), ("200", 0.3), ("502", 1.5)]:
        metrics.requests.labels("POST", "/v1/messages", status, v).inc()
        metrics.duration.labels("POST", "/v1/messages", status, v).observe(seconds)
        metrics.response_size.labels("POST", "/v1/messages", status, v).observe(1000)
    metrics.request_size.labels("POST", "/v1/messages", v).observe(300)
    for direction in ("input", "output", "cache_read", "cache_write"):
        metrics.tokens.labels(direction, "glm-4.6", v, "standard").inc(10)
    metrics.rate_limit_adjustments.labels("decrease", v).inc()
    metrics.rejection("capacity")
    metrics.retry("429")
    metrics.upstream_error("429")
    collector = Collector([URL], interval=5.0, epoch_ts=0.0)
    collector.observe(URL, 0, at=0.0, text=before)
    (snapshot,) = collector.observe(URL, 1, at=5.0, text=scrape())
    assert snapshot.variant == "canary"  # from the label, though the URL says production
    assert snapshot.req_rate == pytest.approx(3 / 5)
    assert snapshot.error_rate_pct == pytest.approx(100 / 3)
    assert snapshot.latency_p50_ms is not None and snapshot.latency_p99_ms is not None
    assert snapshot.request_size_avg == 300 and snapshot.response_size_avg == 1000
    assert snapshot.tokens_in == snapshot.tokens_cache_write == 10
    assert snapshot.rate_limit_rps == 7.0 and snapshot.rate_limit_ceiling is None
    assert snapshot.worker_utilization == pytest.approx(0.25)
    assert snapshot.rate_limit_adj_decrease == 1 and snapshot.rejections == 1
    assert snapshot.retry_rates["429"] == pytest.approx(0.2)
    assert snapshot.upstream_error_rates["429"] == pytest.approx(0.2)


# --------------------------------------------------------------------------- replicas, variants


def test_replicas_of_a_variant_are_summed_into_one_snapshot() -> None:
    a, b = "http://proxy-a:8080/metrics", "http://proxy-b:8080/metrics"
    collector = Collector([a, b], interval=5.0, epoch_ts=0.0)

    def text(ok: float, failed: float, concurrent: float, workers: float, rate: float) -> str:
        t = Text().requests("200", ok).requests("503", failed)
        t.gauge("zai_proxy_concurrent_requests", concurrent).gauge("zai_proxy_max_workers", workers)
        return str(t.gauge("zai_proxy_rate_limit_requests_per_second", rate))

    assert collector.observe(a, 0, at=0.0, text=text(0, 0, 0, 10, 5)) == []
    assert collector.observe(b, 0, at=0.1, text=text(0, 0, 0, 30, 5)) == []
    assert collector.observe(a, 1, at=5.0, text=text(50, 0, 1, 10, 5)) == []  # b not yet in
    # b's scrape came 0.1 s late both times: its own interval is still 5 s.
    (snapshot,) = collector.observe(b, 1, at=5.1, text=text(0, 25, 9, 30, 6))
    assert snapshot.targets_up == snapshot.targets_total == 2
    assert snapshot.req_rate == pytest.approx(10.0 + 5.0)
    assert snapshot.error_rate_pct == pytest.approx(100 * 25 / 75)
    assert snapshot.rate_limit_rps == 11
    assert snapshot.concurrent == 10 and snapshot.max_workers == 40
    assert snapshot.worker_utilization == pytest.approx(10 / 40)


@pytest.mark.parametrize(
    ("url", "variant"),
    [
        ("http://zai-proxy.mcp.svc:8080/metrics", "production"),
        ("http://zai-proxy-test.mcp.svc:8080/metrics", "canary"),
        ("http://zai-proxy-canary:8080/metrics", "canary"),
        ("http://10.0.0.1:8080/metrics?job=Test", "canary"),
        # Userinfo is not part of the decision.
        ("http://test:secret@zai-proxy:8080/metrics", "production"),
    ],
)
def test_variant_is_inferred_from_the_url(url: str, variant: str) -> None:
    assert infer_variant(url) == variant


def test_variant_label_wins_over_the_url() -> None:
    text = Text(variant="production").requests("200", 1)
    snapshot = two_scrapes(text, text, url=CANARY_URL)
    assert snapshot.variant == "production"


def test_without_a_variant_label_the_url_decides() -> None:
    text = Text(variant=None).requests("200", 1)
    assert two_scrapes(text, text, url=CANARY_URL).variant == "canary"


def test_userinfo_is_removed_for_display() -> None:
    assert without_userinfo("http://user:pass@host:9/metrics") == "http://host:9/metrics"
    assert without_userinfo("http://host/metrics") == "http://host/metrics"


# --------------------------------------------------------------------------- ticks


def test_first_scrape_only_primes() -> None:
    collector = Collector([URL], interval=5.0, epoch_ts=0.0)
    assert collector.observe(URL, 0, at=0.0, text=str(Text().requests("200", 5))) == []
    status = collector.status()[0]
    assert status.up and status.scrapes_ok == 1


def test_a_variant_with_no_target_up_gets_a_stale_snapshot() -> None:
    collector = Collector([URL], interval=5.0, epoch_ts=100.0)
    (snapshot,) = collector.observe(URL, 3, at=15.0, error="ConnectError")
    assert snapshot.stale and snapshot.ts == 115.0
    assert snapshot.targets_up == 0 and snapshot.targets_total == 1
    assert snapshot.req_rate is None and snapshot.interval_s == 0.0
    status = collector.status()[0]
    assert not status.up and status.last_error == "ConnectError"


def test_unparseable_answer_marks_the_target_down() -> None:
    collector = Collector([URL], interval=5.0, epoch_ts=0.0)
    (snapshot,) = collector.observe(URL, 0, at=0.0, text="<html>not metrics</html>")
    assert snapshot.stale
    assert "not a Prometheus text exposition" in (collector.status()[0].last_error or "")


def test_a_target_that_comes_back_covers_the_gap_without_negative_or_lost_counts() -> None:
    collector = Collector([URL], interval=5.0, epoch_ts=0.0)
    collector.observe(URL, 0, at=0.0, text=str(Text().requests("200", 100)))
    (down,) = collector.observe(URL, 1, at=5.0, error="timeout")
    assert down.stale
    (back,) = collector.observe(URL, 2, at=10.0, text=str(Text().requests("200", 200)))
    assert back.interval_s == 10.0 and back.req_rate == pytest.approx(10.0)


def test_one_replica_down_leaves_a_partial_not_stale_snapshot() -> None:
    a, b = "http://proxy-a/metrics", "http://proxy-b/metrics"
    collector = Collector([a, b], interval=5.0, epoch_ts=0.0)
    collector.observe(a, 0, at=0.0, text=str(Text().requests("200", 0)))
    collector.observe(b, 0, at=0.0, text=str(Text().requests("200", 0)))
    collector.observe(a, 1, at=5.0, text=str(Text().requests("200", 50)))
    (snapshot,) = collector.observe(b, 1, at=5.0, error="refused")
    assert not snapshot.stale
    assert (snapshot.targets_up, snapshot.targets_total) == (1, 2)
    assert snapshot.req_rate == pytest.approx(10.0)


def test_a_tick_a_target_never_reports_is_closed_by_the_next_one() -> None:
    a, b = "http://proxy-a/metrics", "http://proxy-b/metrics"
    collector = Collector([a, b], interval=5.0, epoch_ts=0.0)
    collector.observe(a, 0, at=0.0, text=str(Text().requests("200", 0)))
    collector.observe(b, 0, at=0.0, text=str(Text().requests("200", 0)))
    assert collector.observe(a, 1, at=5.0, text=str(Text().requests("200", 50))) == []
    # b's task is gone for tick 1; a reporting tick 2 closes tick 1 first.
    closed, *rest = collector.observe(a, 2, at=10.0, text=str(Text().requests("200", 100)))
    assert closed.ts == 5.0 and closed.targets_up == 1 and rest == []
    assert closed.req_rate == pytest.approx(10.0)


def test_a_failed_scrape_still_closes_the_tick_before_it() -> None:
    a, b = "http://proxy-a/metrics", "http://proxy-b/metrics"
    collector = Collector([a, b], interval=5.0, epoch_ts=0.0)
    collector.observe(a, 0, at=0.0, text=str(Text().requests("200", 0)))
    collector.observe(b, 0, at=0.0, text=str(Text().requests("200", 0)))
    collector.observe(a, 1, at=5.0, text=str(Text().requests("200", 50)))
    (closed,) = collector.observe(a, 2, at=10.0, error="timeout")
    assert (closed.ts, closed.targets_up, closed.targets_total) == (5.0, 1, 2)
    assert closed.req_rate == pytest.approx(10.0)


def test_the_first_tick_a_target_never_reports_is_closed_by_the_next_one() -> None:
    a, b = "http://proxy-a/metrics", "http://proxy-b/metrics"
    collector = Collector([a, b], interval=5.0, epoch_ts=0.0)
    assert collector.observe(a, 0, at=0.0, error="refused") == []
    assert collector.observe(a, 1, at=5.0, error="refused") == [
        Snapshot(ts=0.0, variant="production", stale=True, targets_up=0, targets_total=2)
    ]


def test_a_stale_snapshot_names_its_variant() -> None:
    collector = Collector([CANARY_URL], interval=5.0, epoch_ts=100.0)
    assert collector.observe(CANARY_URL, 1, at=5.0, error="refused") == [
        Snapshot(ts=105.0, variant="canary", stale=True, targets_up=0, targets_total=1)
    ]


def test_a_target_whose_label_names_another_variant_closes_its_urls_variant_tick() -> None:
    a, b = "http://proxy-a/metrics", "http://proxy-b/metrics"
    collector = Collector([a, b], interval=5.0, epoch_ts=0.0)
    assert collector.observe(a, 0, at=0.0, error="refused") == []  # b is still owed
    # b says canary: production's tick 0 no longer waits for it.
    out = collector.observe(b, 0, at=0.0, text=str(Text(variant="canary").requests("200", 0)))
    assert out == [
        Snapshot(ts=0.0, variant="production", stale=True, targets_up=0, targets_total=1)
    ]
    assert [s.variant for s in collector.status()] == ["production", "canary"]


def test_a_target_moving_variants_closes_the_ticks_left_open_in_both() -> None:
    a, mover = "http://proxy-a/metrics", "http://proxy-b/metrics"
    c, d = "http://proxy-canary-c/metrics", "http://proxy-canary-d/metrics"
    collector = Collector([a, mover, c, d], interval=5.0, epoch_ts=0.0)
    assert collector.observe(a, 0, at=0.0, error="refused") == []
    assert collector.observe(c, 0, at=0.0, error="refused") == []
    # The mover's first answer is for tick 1 and says canary: tick 0 is over in production
    # (which it leaves) and in canary (which it joins), where d never answered either.
    text = str(Text(variant="canary").requests("200", 0))
    assert collector.observe(mover, 1, at=5.0, text=text) == [
        Snapshot(ts=0.0, variant="production", stale=True, targets_up=0, targets_total=2),
        Snapshot(ts=0.0, variant="canary", stale=True, targets_up=0, targets_total=2),
    ]


# --------------------------------------------------------------------------- status


def test_a_collector_needs_a_target() -> None:
    with pytest.raises(ValueError, match=r"^at least one scrape target$"):
        Collector([], interval=5.0, epoch_ts=0.0)


def test_a_target_not_scraped_yet_is_down_with_no_times() -> None:
    collector = Collector(["http://scraper:pw@zai-proxy:8080/metrics"], interval=5.0, epoch_ts=0.0)
    assert [s.to_dict() for s in collector.status()] == [
        {
            "url": URL,
            "source": None,
            "variant": "production",
            "up": False,
            "stale": True,
            "last_scrape": None,
            "last_success": None,
            "last_error": None,
            "scrapes_ok": 0,
            "scrapes_failed": 0,
            "limiter": None,
        }
    ]
    assert collector.error_of("http://scraper:pw@zai-proxy:8080/metrics") == "not scraped yet"


def test_a_good_scrape_shows_the_target_up_as_of_its_tick() -> None:
    collector = Collector([URL], interval=5.0, epoch_ts=1000.0)
    collector.observe(URL, 2, at=10.0, text=str(Text().requests("200", 1)))
    assert [s.to_dict() for s in collector.status()] == [
        {
            "url": URL,
            "source": None,
            "variant": "production",
            "up": True,
            "stale": False,
            "last_scrape": 1010.0,
            "last_success": 1010.0,
            "last_error": None,
            "scrapes_ok": 1,
            "scrapes_failed": 0,
            "limiter": {
                "backend": "memory",
                "up": True,
                "judge": False,
                "replicas": None,
                "rate": None,
                "ceiling": None,
            },
        }
    ]
    assert collector.error_of(URL) is None


def test_a_failed_scrape_without_a_reason_is_no_answer_and_keeps_the_last_success() -> None:
    collector = Collector([URL], interval=5.0, epoch_ts=1000.0)
    collector.observe(URL, 2, at=10.0, text=str(Text().requests("200", 1)))
    collector.observe(URL, 3, at=15.0)
    (status,) = collector.status()
    assert status.to_dict() == {
        "url": URL,
        "source": None,
        "variant": "production",
        "up": False,
        "stale": True,
        "last_scrape": 1015.0,
        "last_success": 1010.0,
        "last_error": "no answer",
        "scrapes_ok": 1,
        "scrapes_failed": 1,
        "limiter": None,
    }
    assert collector.error_of(URL) == "no answer"


def test_a_good_scrape_after_a_failed_one_clears_the_error_and_both_are_counted() -> None:
    collector = Collector([URL], interval=5.0, epoch_ts=1000.0)
    collector.observe(URL, 0, at=0.0, text=str(Text().requests("200", 1)))
    collector.observe(URL, 1, at=5.0, error="refused")
    collector.observe(URL, 2, at=10.0, text=str(Text().requests("200", 2)))
    (status,) = collector.status()
    assert (status.up, status.last_error) == (True, None)
    assert (status.scrapes_ok, status.scrapes_failed) == (2, 1)
    assert (status.last_scrape, status.last_success) == (1010.0, 1010.0)


# --------------------------------------------------------------------------- dns pods

SOURCE = "dns+http://zai-proxy-production-headless:8080/metrics"
CANARY_SOURCE = "dns+http://zai-proxy-canary-headless:8080/metrics"


def pod(address: str) -> str:
    return f"http://{address}:8080/metrics"


def served(requests: float) -> str:
    return str(Text().requests("200", requests))


def test_plain_and_dns_targets_can_be_mixed() -> None:
    collector = Collector([CANARY_SOURCE, URL], interval=5.0, epoch_ts=0.0)
    assert collector.targets == [URL]
    assert collector.dns_targets == [CANARY_SOURCE]
    assert collector.variants() == ["canary", "production"]


def test_a_pod_that_joins_while_a_tick_is_open_does_not_hold_it_back() -> None:
    a, b, c = pod("10.0.0.1"), pod("10.0.0.2"), pod("10.0.0.3")
    collector = Collector([SOURCE], interval=5.0, epoch_ts=1000.0)
    collector.resolved(SOURCE, ["10.0.0.1", "10.0.0.2"], ts=1000.0)
    collector.observe(a, 0, at=0.0, text=served(0))
    collector.observe(b, 0, at=0.0, text=served(0))
    collector.observe(a, 1, at=5.0, text=served(50))
    change = collector.resolved(SOURCE, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], ts=1005.0)
    assert (change.added, change.removed, change.snapshots) == ((c,), (), [])
    (tick_1,) = collector.observe(b, 1, at=5.0, text=served(25))
    assert (tick_1.ts, tick_1.targets_up, tick_1.targets_total) == (1005.0, 2, 3)
    assert tick_1.req_rate == pytest.approx(15.0)


def test_the_first_pods_wait_for_each_others_first_scrape() -> None:
    a, b = pod("10.0.0.1"), pod("10.0.0.2")
    collector = Collector([SOURCE], interval=5.0, epoch_ts=1000.0)
    collector.resolved(SOURCE, ["10.0.0.1", "10.0.0.2"], ts=1000.0)
    assert collector.observe(a, 0, at=0.0, error="refused") == []
    assert collector.observe(b, 0, at=0.0, error="refused") == [
        Snapshot(ts=1000.0, variant="production", stale=True, targets_up=0, targets_total=2)
    ]


def test_pods_that_go_away_before_any_scrape_make_no_snapshot() -> None:
    collector = Collector([SOURCE], interval=5.0, epoch_ts=1000.0)
    collector.resolved(SOURCE, ["10.0.0.1", "10.0.0.2"], ts=1000.0)
    change = collector.resolved(SOURCE, ["10.0.0.1"], ts=1005.0)
    assert (change.added, change.removed, change.snapshots) == ((), (pod("10.0.0.2"),), [])


def test_pods_leaving_together_keep_the_snapshot_the_first_one_completed() -> None:
    a, b, c = pod("10.0.0.1"), pod("10.0.0.2"), pod("10.0.0.3")
    collector = Collector([SOURCE], interval=5.0, epoch_ts=1000.0)
    collector.resolved(SOURCE, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], ts=1000.0)
    for url in (a, b, c):
        collector.observe(url, 0, at=0.0, text=served(0))
    collector.observe(a, 1, at=5.0, text=served(50))
    collector.observe(c, 1, at=5.0, text=served(25))
    # b leaving completes tick 1; c leaving after it completes nothing more.
    change = collector.resolved(SOURCE, ["10.0.0.1"], ts=1005.0)
    assert change.removed == (b, c)
    (tick_1,) = change.snapshots
    assert (tick_1.ts, tick_1.targets_up, tick_1.targets_total) == (1005.0, 2, 2)
    assert tick_1.req_rate == pytest.approx(15.0)


def test_a_pod_without_a_variant_label_counts_in_its_dns_targets_variant() -> None:
    a = pod("10.0.0.1")  # a URL that alone would say production
    collector = Collector([CANARY_SOURCE], interval=5.0, epoch_ts=1000.0)
    collector.resolved(CANARY_SOURCE, ["10.0.0.1"], ts=1000.0)
    collector.observe(a, 0, at=0.0, text=str(Text(variant=None).requests("200", 0)))
    (snapshot,) = collector.observe(a, 1, at=5.0, text=str(Text(variant=None).requests("200", 5)))
    assert snapshot.variant == "canary"
    assert [s.variant for s in collector.status()] == ["canary"]


def test_a_resolution_after_a_failed_one_clears_its_error_and_counts() -> None:
    collector = Collector([SOURCE], interval=5.0, epoch_ts=1000.0)
    collector.resolved(SOURCE, ["10.0.0.1"], ts=1000.0)
    collector.resolution_failed(SOURCE, "gaierror: no such name", ts=1030.0)
    collector.resolved(SOURCE, ["10.0.0.1"], ts=1060.0)
    assert [s.to_dict() for s in collector.dns_status()] == [
        {
            "target": SOURCE,
            "variant": "production",
            "pods": [pod("10.0.0.1")],
            "last_resolution": 1060.0,
            "last_error": None,
            "resolutions_ok": 2,
            "resolutions_failed": 1,
        }
    ]


# --------------------------------------------------------------------------- the schedule


class FakeTarget:
    """A /metrics that counts 10 requests between scrapes, or misbehaves on request."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.requests = 0
        self.plan: list[Callable[[], str]] = []

    async def fetch(self, url: str) -> str:
        self.times.append(trio.current_time())
        if self.plan:
            return self.plan.pop(0)()
        self.requests += 10
        return str(Text().requests("200", self.requests))


async def test_scrapes_keep_a_fixed_schedule(autojump_clock: trio.testing.MockClock) -> None:
    target = FakeTarget()
    snapshots: list[Snapshot] = []

    async def emit(snapshot: Snapshot) -> None:
        snapshots.append(snapshot)

    collector = Collector([URL], interval=5.0, epoch_ts=1_000.0)
    loop = ScrapeLoop(collector, fetch=target.fetch, emit=emit, timeout=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run_target, URL)
        await trio.sleep(21)
        nursery.cancel_scope.cancel()
    assert target.times == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert [s.ts for s in snapshots] == [1005.0, 1010.0, 1015.0, 1020.0]
    assert all(s.req_rate == pytest.approx(2.0) for s in snapshots)


async def test_a_slow_or_failing_target_is_marked_down_and_the_task_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    snapshots: list[Snapshot] = []
    times: list[float] = []
    answers = iter(["timeout", "error", "ok", "ok"])
    count = 0

    async def fetch(url: str) -> str:
        nonlocal count
        times.append(trio.current_time())
        kind = next(answers)
        if kind == "timeout":
            await trio.sleep_forever()
        if kind == "error":
            raise ScrapeError("HTTP 500")
        count += 10
        return str(Text().requests("200", count))

    async def emit(snapshot: Snapshot) -> None:
        snapshots.append(snapshot)

    collector = Collector([URL], interval=5.0, epoch_ts=0.0)
    loop = ScrapeLoop(collector, fetch=fetch, emit=emit, timeout=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run_target, URL)
        await trio.sleep(16)
        nursery.cancel_scope.cancel()
    # The hung scrape was abandoned at 3 s; the next one still came at 5 s.
    assert times == [0.0, 5.0, 10.0, 15.0]
    assert [(s.ts, s.stale) for s in snapshots] == [(0.0, True), (5.0, True), (15.0, False)]
    assert snapshots[-1].req_rate == pytest.approx(2.0)
    assert collector.status()[0].scrapes_failed == 2


def test_a_late_report_is_not_lost_but_joins_the_next_snapshot() -> None:
    a, b = "http://proxy-a/metrics", "http://proxy-b/metrics"
    collector = Collector([a, b], interval=5.0, epoch_ts=0.0)
    collector.observe(a, 0, at=0.0, text=str(Text().requests("200", 0)))
    collector.observe(b, 0, at=0.0, text=str(Text().requests("200", 0)))
    collector.observe(a, 1, at=5.0, text=str(Text().requests("200", 50)))
    # a is at tick 2 before b's tick-1 answer arrives: tick 1 closes without b.
    (tick_1,) = collector.observe(a, 2, at=10.0, text=str(Text().requests("200", 100)))
    assert tick_1.req_rate == pytest.approx(10.0)
    assert collector.observe(b, 1, at=9.0, text=str(Text().requests("200", 90))) == []
    (tick_2,) = collector.observe(b, 2, at=10.0, text=str(Text().requests("200", 100)))
    # a's 50 in 5 s, and b's 90 + 10 over its two intervals (9 s + 1 s): every request
    # counted once.
    assert tick_2.req_rate == pytest.approx(10.0 + 10.0)
    assert tick_2.interval_s == pytest.approx(7.5)


# ---------------------------------------------------------------------------- the maths, directly


def exposition(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def reading(before: str, after: str, seconds: float = 5.0) -> Reading:
    return read(parse(before), parse(after), seconds)


def one(interval: float = 5.0, **values: object) -> Snapshot:
    return build_snapshot(
        ts=100.0,
        variant="canary",
        readings=[Reading(interval=interval, **values)],  # type: ignore[arg-type]
        expositions=[],
        targets_up=1,
        targets_total=2,
    )


def test_a_snapshot_of_requests_alone_has_zero_tokens_and_adjustments_not_null() -> None:
    assert one(requests=10.0, by_status={"200": 10.0}) == Snapshot(
        ts=100.0,
        variant="canary",
        interval_s=5.0,
        stale=False,
        targets_up=1,
        targets_total=2,
        req_rate=2.0,
        error_rate_pct=0.0,
        status_code_rates={"200": 2.0},
        token_rate_in=0.0,
        token_rate_out=0.0,
        token_rate_cache_read=0.0,
        token_rate_cache_write=0.0,
        tokens_in=0.0,
        tokens_out=0.0,
        tokens_cache_read=0.0,
        tokens_cache_write=0.0,
        rate_limit_adj_increase=0.0,
        rate_limit_adj_decrease=0.0,
        rate_limit_adj_probe=0.0,
        rejections=0.0,
        rate_limit_backend_error_rate=0.0,
    )


def test_probe_adjustments_are_counted() -> None:
    assert one(adjustments={"probe": 2.0}).rate_limit_adj_probe == 2.0


def test_one_failed_request_is_a_hundred_percent() -> None:
    assert one(requests=1.0, errors_5xx=1.0).error_rate_pct == 100.0


def test_a_snapshot_needs_a_reading() -> None:
    with pytest.raises(ValueError, match=r"^build_snapshot needs at least one reading$"):
        build_snapshot(
            ts=0.0, variant="canary", readings=[], expositions=[], targets_up=0, targets_total=1
        )


def test_a_one_second_reading_has_rates_and_a_zero_second_one_has_none() -> None:
    assert one(interval=1.0, requests=3.0).req_rate == 3.0
    both = build_snapshot(
        ts=0.0,
        variant="canary",
        readings=[Reading(interval=0.0, requests=7.0), Reading(interval=5.0, requests=10.0)],
        expositions=[],
        targets_up=2,
        targets_total=2,
    )
    assert (both.req_rate, both.interval_s) == (2.0, 2.5)


def gauges(concurrent: float, max_workers: float) -> str:
    return exposition(
        "# TYPE zai_proxy_concurrent_requests gauge",
        f"zai_proxy_concurrent_requests {concurrent}",
        "# TYPE zai_proxy_max_workers gauge",
        f"zai_proxy_max_workers {max_workers}",
    )


@pytest.mark.parametrize(
    ("concurrent", "max_workers", "utilization"),
    [(0.0, 4.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, None)],
)
def test_worker_utilization_is_in_use_over_capacity(
    concurrent: float, max_workers: float, utilization: float | None
) -> None:
    snapshot = build_snapshot(
        ts=0.0,
        variant="canary",
        readings=[Reading(interval=5.0)],
        expositions=[parse(gauges(concurrent, max_workers))],
        targets_up=1,
        targets_total=1,
    )
    assert snapshot.worker_utilization == utilization


def test_an_absurd_gauge_is_left_out_of_the_sum_not_the_others() -> None:
    snapshot = build_snapshot(
        ts=0.0,
        variant="canary",
        readings=[Reading(interval=5.0)],
        expositions=[parse(gauges(1e300, 8.0)), parse(gauges(2.0, 8.0))],
        targets_up=2,
        targets_total=2,
    )
    assert (snapshot.concurrent, snapshot.max_workers) == (2.0, 16.0)


def requests_counter(*lines: str) -> str:
    return exposition("# TYPE zai_proxy_requests_total counter", *lines)


def test_every_5xx_status_adds_to_the_errors() -> None:
    before = requests_counter(
        'zai_proxy_requests_total{status_code="500"} 0',
        'zai_proxy_requests_total{status_code="503"} 0',
    )
    after = requests_counter(
        'zai_proxy_requests_total{status_code="500"} 2',
        'zai_proxy_requests_total{status_code="503"} 3',
    )
    got = reading(before, after)
    assert (got.requests, got.errors_5xx) == (5.0, 5.0)


def test_request_sizes_add_up_across_label_sets() -> None:
    def sizes(total: float, count: float) -> str:
        return exposition(
            "# TYPE zai_proxy_request_size_bytes histogram",
            *(
                line
                for method in ("GET", "POST")
                for line in (
                    f'zai_proxy_request_size_bytes_bucket{{le="+Inf",method="{method}"}} {count}',
                    f'zai_proxy_request_size_bytes_count{{method="{method}"}} {count}',
                    f'zai_proxy_request_size_bytes_sum{{method="{method}"}} {total}',
                )
            ),
        )

    got = reading(sizes(0, 0), sizes(100.0, 2.0))
    assert (got.request_size_sum, got.request_size_count) == (200.0, 4.0)


def test_an_absurd_increase_is_skipped_not_the_series_after_it() -> None:
    before = requests_counter(
        'zai_proxy_requests_total{status_code="200"} 0',
        'zai_proxy_requests_total{status_code="201"} 0',
    )
    after = requests_counter(
        'zai_proxy_requests_total{status_code="200"} 1e300',
        'zai_proxy_requests_total{status_code="201"} 4',
    )
    got = reading(before, after)
    assert (got.requests, got.by_status) == (4.0, {"201": 4.0})


def test_an_increase_of_exactly_max_figure_counts() -> None:
    got = reading(
        requests_counter("zai_proxy_requests_total 0"),
        requests_counter(f"zai_proxy_requests_total {MAX_FIGURE!r}"),
    )
    assert got.requests == MAX_FIGURE


def test_a_bucket_without_a_numeric_bound_is_skipped_not_the_buckets_after_it() -> None:
    def buckets(count: float) -> str:
        return exposition(
            "# TYPE zai_proxy_request_duration_seconds histogram",
            f'zai_proxy_request_duration_seconds_bucket{{le="soon"}} {count}',
            f'zai_proxy_request_duration_seconds_bucket{{le="0.5"}} {count}',
            f'zai_proxy_request_duration_seconds_bucket{{le="+Inf"}} {count}',
        )

    assert reading(buckets(0), buckets(3)).duration_buckets == {0.5: 3.0, math.inf: 3.0}


def test_a_request_without_a_status_label_is_counted_under_the_empty_status() -> None:
    got = reading(
        requests_counter("zai_proxy_requests_total 0"),
        requests_counter("zai_proxy_requests_total 2"),
    )
    assert got.by_status == {"": 2.0}


def test_label_values_past_the_cap_are_counted_as_other() -> None:
    codes = [str(200 + i) for i in range(MAX_LABEL_VALUES + 2)]
    before = requests_counter(*(f'zai_proxy_requests_total{{status_code="{c}"}} 0' for c in codes))
    after = requests_counter(*(f'zai_proxy_requests_total{{status_code="{c}"}} 1' for c in codes))
    got = reading(before, after)
    assert list(got.by_status) == codes[:MAX_LABEL_VALUES] + ["other"]
    assert got.by_status["other"] == 2.0


def test_a_value_already_counted_is_counted_under_itself_past_the_cap() -> None:
    codes = [str(200 + i) for i in range(MAX_LABEL_VALUES)]
    lines = [f'zai_proxy_requests_total{{status_code="{c}",path="/a"}}' for c in codes]
    extra = [f'zai_proxy_requests_total{{status_code="{codes[0]}",path="/b"}}']
    before = requests_counter(*(f"{line} 0" for line in lines + extra))
    after = requests_counter(*(f"{line} 1" for line in lines + extra))
    got = reading(before, after)
    assert got.by_status[codes[0]] == 2.0
    assert "other" not in got.by_status


def test_absurd_sums_are_nulled_and_absurd_map_entries_dropped() -> None:
    huge = Reading(
        interval=1.0,
        requests=1.0,
        tokens={"input": MAX_FIGURE},
        by_status={"200": MAX_FIGURE, "500": 1.0},
    )
    snapshot = build_snapshot(
        ts=0.0,
        variant="canary",
        readings=[huge, huge],
        expositions=[],
        targets_up=2,
        targets_total=2,
    )
    assert (snapshot.tokens_in, snapshot.token_rate_in) == (None, None)
    assert snapshot.status_code_rates == {"500": 2.0}
    assert snapshot.req_rate == 2.0


# ---------------------------------------------------------------------- the shared limiter


def limiter_text(
    backend: str | None,
    *,
    up: float = 1,
    rate: float | None = None,
    ceiling: float | None = None,
    judge: float | None = None,
    replicas: float | None = None,
) -> Text:
    """A pod's limiter gauges; `backend` None is an older proxy without the new metrics."""
    t = Text()
    if backend is not None:
        t.gauge("zai_proxy_rate_limit_backend_up", up, backend=backend)
        t.counter("zai_proxy_rate_limit_backend_errors", 0)
    if judge is not None:
        t.gauge("zai_proxy_rate_limit_judge", judge)
    if replicas is not None:
        t.gauge("zai_proxy_rate_limit_replicas", replicas)
    if rate is not None:
        t.gauge("zai_proxy_rate_limit_requests_per_second", rate)
    if ceiling is not None:
        t.gauge("zai_proxy_rate_limit_ceiling_requests_per_second", ceiling)
    return t


def pods_snapshot(*pods: Text) -> Snapshot:
    return build_snapshot(
        ts=0.0,
        variant="production",
        readings=[Reading(interval=5.0)],
        expositions=[parse(str(p)) for p in pods],
        targets_up=len(pods),
        targets_total=len(pods),
    )


def limiter_fields(snapshot: Snapshot) -> tuple[object, ...]:
    return (
        snapshot.rate_limit_rps,
        snapshot.rate_limit_ceiling,
        snapshot.rate_limit_backend,
        snapshot.rate_limit_backend_up,
        snapshot.rate_limit_replicas,
    )


def test_pods_up_on_redis_give_the_shared_rate_once_not_summed() -> None:
    snapshot = pods_snapshot(
        limiter_text("redis", rate=6, ceiling=8, judge=1, replicas=3),
        limiter_text("redis", rate=6, ceiling=8, judge=0, replicas=3),
        limiter_text("redis", rate=6, ceiling=8, judge=0, replicas=3),
    )
    assert limiter_fields(snapshot) == (6.0, 8.0, "redis", 3.0, 3.0)


def test_pods_on_memory_are_summed_and_have_no_shared_replicas() -> None:
    snapshot = pods_snapshot(
        limiter_text("memory", rate=4, ceiling=10, judge=1, replicas=1),
        limiter_text("memory", rate=5, ceiling=12, judge=1, replicas=1),
    )
    assert limiter_fields(snapshot) == (9.0, 22.0, "memory", 2.0, None)


def test_proxies_without_the_backend_metrics_are_on_memory_and_summed() -> None:
    snapshot = pods_snapshot(limiter_text(None, rate=4), limiter_text(None, rate=5, ceiling=7))
    assert limiter_fields(snapshot) == (9.0, 7.0, "memory", 2.0, None)
    assert limiter_state(parse(str(limiter_text(None, rate=4)))) == LimiterState(
        backend="memory", up=True, judge=False, replicas=None, rate=4.0, ceiling=None
    )


def test_a_pod_down_on_redis_adds_its_local_bucket_to_the_shared_value() -> None:
    snapshot = pods_snapshot(
        limiter_text("redis", rate=6, ceiling=8, judge=1, replicas=2),
        limiter_text("redis", rate=6, ceiling=8, judge=0, replicas=2),
        limiter_text("redis", up=0, rate=1.5, judge=0, replicas=1),
    )
    assert limiter_fields(snapshot) == (7.5, 8.0, "redis", 2.0, 2.0)


def test_a_judge_down_on_redis_is_not_the_shared_value() -> None:
    snapshot = pods_snapshot(
        limiter_text("redis", up=0, rate=1, ceiling=2, judge=1, replicas=1),
        limiter_text("redis", rate=6, ceiling=8, judge=0, replicas=2),
    )
    assert limiter_fields(snapshot) == (7.0, 10.0, "redis", 1.0, 2.0)


def test_every_pod_down_on_redis_is_summed_and_there_are_no_shared_replicas() -> None:
    snapshot = pods_snapshot(
        limiter_text("redis", up=0, rate=2, ceiling=3, replicas=1),
        limiter_text("redis", up=0, rate=3, ceiling=4, replicas=1),
    )
    assert limiter_fields(snapshot) == (5.0, 7.0, "redis", 0.0, None)


def test_redis_and_memory_pods_of_one_variant_are_mixed() -> None:
    snapshot = pods_snapshot(
        limiter_text("redis", rate=6, ceiling=8, judge=1, replicas=2),
        limiter_text("memory", rate=3, ceiling=5, replicas=1),
    )
    assert limiter_fields(snapshot) == (9.0, 13.0, "mixed", 2.0, 2.0)


def test_the_judges_figures_are_the_shared_ones() -> None:
    snapshot = pods_snapshot(
        limiter_text("redis", rate=9, ceiling=10, judge=0, replicas=4),
        limiter_text("redis", rate=5, ceiling=6, judge=1, replicas=3),
        limiter_text("redis", rate=7, ceiling=8, judge=0, replicas=4),
    )
    assert limiter_fields(snapshot) == (5.0, 6.0, "redis", 3.0, 3.0)


def test_without_a_judge_the_shared_figure_is_the_low_median_of_the_pods() -> None:
    three = pods_snapshot(
        limiter_text("redis", rate=9, ceiling=12, replicas=3),
        limiter_text("redis", rate=5, ceiling=10, replicas=1),
        limiter_text("redis", rate=7, ceiling=14, replicas=2),
    )
    assert limiter_fields(three) == (7.0, 12.0, "redis", 3.0, 2.0)
    two = pods_snapshot(
        limiter_text("redis", rate=7, ceiling=12, replicas=3),
        limiter_text("redis", rate=5, ceiling=10, replicas=2),
    )
    assert limiter_fields(two) == (5.0, 10.0, "redis", 2.0, 2.0)


def test_two_judges_give_the_lower_of_their_figures() -> None:
    snapshot = pods_snapshot(
        limiter_text("redis", rate=7, ceiling=9, judge=1, replicas=3),
        limiter_text("redis", rate=5, ceiling=8, judge=1, replicas=2),
        limiter_text("redis", rate=3, ceiling=4, judge=0, replicas=1),
    )
    assert limiter_fields(snapshot) == (5.0, 8.0, "redis", 3.0, 2.0)


def test_a_judge_without_a_figure_leaves_it_to_the_other_pods() -> None:
    snapshot = pods_snapshot(
        limiter_text("redis", judge=1),
        limiter_text("redis", rate=4, ceiling=9, replicas=2),
        limiter_text("redis", rate=6, ceiling=7, replicas=3),
    )
    assert limiter_fields(snapshot) == (4.0, 7.0, "redis", 3.0, 2.0)


def test_no_pod_up_means_no_backend_and_no_limiter_figures() -> None:
    assert limiter_fields(pods_snapshot()) == (None, None, None, None, None)


@pytest.mark.parametrize(
    ("text", "state"),
    [
        (
            limiter_text("redis", rate=6, ceiling=8, judge=1, replicas=2),
            LimiterState(backend="redis", up=True, judge=True, replicas=2.0, rate=6.0, ceiling=8.0),
        ),
        (
            limiter_text("redis", up=0, rate=1, judge=0, replicas=1),
            LimiterState(
                backend="redis", up=False, judge=False, replicas=1.0, rate=1.0, ceiling=None
            ),
        ),
        # Memory always answers, whatever its gauge says; it shares nothing.
        (
            limiter_text("memory", up=0, replicas=1),
            LimiterState(
                backend="memory", up=True, judge=False, replicas=1.0, rate=None, ceiling=None
            ),
        ),
        # An absurd replica count is left out, like any absurd gauge.
        (
            limiter_text("redis", replicas=1e300),
            LimiterState(
                backend="redis", up=True, judge=False, replicas=None, rate=None, ceiling=None
            ),
        ),
    ],
)
def test_a_pods_limiter_state_comes_from_its_gauges(text: Text, state: LimiterState) -> None:
    assert limiter_state(parse(str(text))) == state
    assert state.shared is (state.backend == "redis" and state.up)


def test_a_limiter_state_as_json() -> None:
    state = LimiterState(backend="redis", up=False, judge=True, replicas=3.0, rate=1.5, ceiling=2)
    assert state.to_dict() == {
        "backend": "redis",
        "up": False,
        "judge": True,
        "replicas": 3.0,
        "rate": 1.5,
        "ceiling": 2,
    }


def test_backend_errors_are_a_rate_summed_over_pods() -> None:
    def errors(n: float) -> str:
        return str(Text().counter("zai_proxy_rate_limit_backend_errors", n))

    first = reading(errors(3), errors(13))
    second = reading(errors(0), errors(5), seconds=2.5)
    assert (first.backend_errors, second.backend_errors) == (10.0, 5.0)
    snapshot = build_snapshot(
        ts=0.0,
        variant="production",
        readings=[first, second],
        expositions=[],
        targets_up=2,
        targets_total=2,
    )
    assert snapshot.rate_limit_backend_error_rate == 4.0
    assert first.merge(second).backend_errors == 15.0


def test_backend_errors_of_every_label_set_add_up() -> None:
    def errors(n: float) -> str:
        t = Text().counter("zai_proxy_rate_limit_backend_errors", n, call="take")
        return str(t.counter("zai_proxy_rate_limit_backend_errors", 2 * n, call="judge"))

    assert reading(errors(1), errors(4)).backend_errors == 9.0


def test_a_targets_status_shows_its_limiter_until_a_scrape_fails() -> None:
    collector = Collector([URL], interval=5.0, epoch_ts=1000.0)
    collector.observe(URL, 0, at=0.0, text=str(limiter_text("redis", up=0, judge=1, rate=2)))
    (status,) = collector.status()
    assert status.limiter == LimiterState(
        backend="redis", up=False, judge=True, replicas=None, rate=2.0, ceiling=None
    )
    collector.observe(URL, 1, at=5.0, error="refused")
    (status,) = collector.status()
    assert status.limiter is None
    collector.observe(URL, 2, at=10.0, text=str(limiter_text(None)))
    (status,) = collector.status()
    assert status.limiter is not None and status.limiter.backend == "memory"
