"""`zai-proxy check`'s judges: each a pure function of what a proxy or dashboard said.
The metrics are a real `ProxyMetrics` registry's exposition, as /metrics serves it."""

from __future__ import annotations

import json

from prometheus_client import generate_latest

from zai_proxy.ops.check import (
    SEED_METRICS,
    Check,
    format_checks,
    judge_dashboard,
    judge_health,
    judge_limiter,
    judge_metrics,
    judge_stream,
    judge_token_header,
)
from zai_proxy.proxy.metrics import LiveState, ProxyMetrics

STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
    b'{"input_tokens":9,"output_tokens":1}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":'
    b'{"type":"text_delta","text":"ok"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":2}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def exposition(variant: str = "canary", *, rate: float = 7.5, traffic: bool = True) -> str:
    metrics = ProxyMetrics(
        variant=variant,
        live=lambda: LiveState(
            concurrent=0, max_workers=10, rate_limit_rps=rate, rate_limit_ceiling=None
        ),
    )
    if traffic:
        # What one answered request leaves behind (accounting.py does this per request).
        metrics.request_done("POST", "/v1/messages", "200", 0.2, 120, 300)
        metrics.tokens.labels("input", "glm-4.6", variant, "off_peak").inc(9)
        metrics.token_rate.labels("output", "glm-4.6", variant).observe(10.0)
        metrics.token_rate_seconds.labels("output", "glm-4.6", variant).observe(0.1)
    return generate_latest(metrics.registry).decode()


def test_every_seed_metric_of_a_proxy_that_served_a_request_passes() -> None:
    check = judge_metrics(exposition(), "canary")
    assert check.ok, check.detail
    assert f"all {len(SEED_METRICS)} seed metrics" in check.detail


def test_a_missing_seed_metric_is_named() -> None:
    text = "\n".join(
        line for line in exposition().splitlines() if "zai_proxy_retry_attempts" not in line
    )
    check = judge_metrics(text + "\n", "canary")
    assert not check.ok
    assert "missing zai_proxy_retry_attempts" in check.detail


def test_a_metric_with_no_series_yet_fails() -> None:
    # No request served: the per-request families are declared but empty.
    check = judge_metrics(exposition(traffic=False), "canary")
    assert not check.ok
    assert "no series yet" in check.detail and "zai_proxy_requests" in check.detail


def test_a_series_without_the_variant_label_fails() -> None:
    text = exposition()
    text = text.replace('zai_proxy_max_workers{variant="canary"}', "zai_proxy_max_workers")
    check = judge_metrics(text, "canary")
    assert not check.ok
    assert "without variant zai_proxy_max_workers" in check.detail


def test_a_variant_other_than_healthz_says_fails() -> None:
    check = judge_metrics(exposition("production"), "canary")
    assert not check.ok
    assert "variant production where /healthz says canary" in check.detail


def test_limiter_reads_the_rate_and_backend_from_metrics() -> None:
    check = judge_limiter(exposition(rate=7.5))
    assert check == Check("limiter", True, check.detail)
    assert "rate 7.5 req/s" in check.detail and "backend memory up" in check.detail
    assert not judge_limiter(exposition(rate=0.0)).ok
    missing = judge_limiter("# nothing here\n")
    assert not missing.ok and "requests_per_second is missing" in missing.detail


def test_health_needs_status_ok_and_a_version() -> None:
    body = {"status": "ok", "version": "1.2.3", "variant": "canary", "in_flight": 1}
    check, variant = judge_health(200, json.dumps(body | {"max_workers": 10}).encode())
    assert check.ok and variant == "canary"
    assert "version 1.2.3" in check.detail and "1/10 workers busy" in check.detail
    check, variant = judge_health(200, json.dumps({"status": "ok"}).encode())
    assert not check.ok and variant is None
    check, _ = judge_health(503, b'{"status":"stopping"}')
    assert not check.ok and "HTTP 503" in check.detail


def test_a_whole_stream_passes_a_cut_or_failed_one_does_not() -> None:
    ok = judge_stream("stream", 200, "text/event-stream", STREAM, "anthropic", 0.5)
    assert ok.ok and "4 events, complete" in ok.detail
    cut = STREAM.rsplit(b"event: message_stop", 1)[0]
    assert not judge_stream("stream", 200, "text/event-stream", cut, "anthropic", 0.5).ok
    error = cut + b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
    failed = judge_stream("stream", 200, "text/event-stream", error, "anthropic", 0.5)
    assert not failed.ok and "overloaded_error" in failed.detail
    plain = judge_stream("stream", 200, "application/json", STREAM, "anthropic", 0.5)
    assert not plain.ok and "content-type" in plain.detail


def test_token_header_must_be_a_positive_count_on_every_answer() -> None:
    assert judge_token_header({"messages": "12", "stream": "12"}).ok
    named = judge_token_header({"messages": "12", "stream": "9"}, {"messages": "upstream"})
    assert named.detail == "messages 12 (upstream), stream 9"
    missing = judge_token_header({"messages": "12", "stream": None})
    assert not missing.ok and missing.detail == "stream: missing"
    assert not judge_token_header({"messages": "zero"}).ok
    assert not judge_token_header({"messages": "0"}).ok
    assert not judge_token_header({}).ok


def status_body(**variants: dict[str, object] | None) -> bytes:
    return json.dumps(
        {
            "variants": {
                name: {
                    "stale": entry is None or bool(entry.get("stale")),
                    "snapshot": None if entry is None else {"targets_up": 1, "targets_total": 1},
                }
                for name, entry in variants.items()
            }
        }
    ).encode()


def test_dashboard_must_see_both_variants_fresh() -> None:
    both = judge_dashboard(200, status_body(production={}, canary={}))
    assert both.ok
    assert both.detail == "production fresh (1/1 targets up), canary fresh (1/1 targets up)"
    one = judge_dashboard(200, status_body(production={}))
    assert not one.ok and "canary not seen" in one.detail
    stale = judge_dashboard(200, status_body(production={}, canary={"stale": True}))
    assert not stale.ok and "canary stale" in stale.detail
    assert not judge_dashboard(200, b"[]").ok
    assert not judge_dashboard(500, b"oops").ok


def test_output_is_one_line_per_check_then_the_count() -> None:
    text = format_checks([Check("health", True, "fine"), Check("metrics", False, "missing x")])
    assert text.splitlines() == [
        "ok    health          fine",
        "FAIL  metrics         missing x",
        "1 of 2 checks passed",
    ]
