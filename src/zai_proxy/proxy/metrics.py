"""The proxy's Prometheus surface, in a registry of the app's own.

Names, labels and buckets are those of the Go proxy this replaces (seed 000's tables and
seed 004's definitions), each with a `variant` label.  Values that change all the time
(requests in flight, utilisation, the limiter's rate) are read when scraped, by
`_LiveCollector`, so they are never stale and cost nothing per request.

Label values come from small fixed sets: `path` from `paths.ROUTES` or "other", `method`
from `METHODS` or "other", `model` from the first `MODEL_LABEL_CAP` distinct names seen
(then "other"), `status_code` as sent (bounded by HTTP itself).

Two labels need a word:
- `zai_proxy_retry_attempts_total{reason="retry"}` counts every retry attempt; the other
  reasons count what caused it.  So `reason!="retry"` sums to `reason="retry"`.
- `zai_proxy_rate_limit_rejections_total` adds `reason`: `rate_limit` (the limiter's
  wait would exceed RATE_LIMIT_MAX_WAIT, answered 429) or `capacity` (all MAX_WORKERS busy,
  or all MAX_WEBSOCKETS sessions, answered 503).

WebSocket sessions (websocket.py) have their own: `zai_proxy_websocket_sessions_open` and
`zai_proxy_max_websockets` (read when scraped), `zai_proxy_websocket_sessions_total
{close_code}` (the code that ended the session: one of `WEBSOCKET_CLOSE_CODES`, else
"other"), and `zai_proxy_websocket_messages_total` / `_bytes_total{direction}`, where
`upstream` is what clients sent towards the upstream and `downstream` what came back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from .paths import ROUTES

__all__ = [
    "METHODS",
    "MODEL_LABEL_CAP",
    "WEBSOCKET_CLOSE_CODES",
    "WEBSOCKET_DIRECTIONS",
    "LiveState",
    "ModelLabels",
    "ProxyMetrics",
    "close_code_label",
    "method_label",
]

# `_created` series double the exposition for no use on our dashboards or alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]

MODEL_LABEL_CAP = 20
_MODEL_LABEL_MAX_LEN = 64

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
SIZE_BUCKETS = (100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8)
TOKEN_COUNT_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
TOKEN_RATE_BUCKETS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 25000.0)
SECONDS_PER_TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RELATIVE_ERROR_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)

RETRY_REASONS = ("retry", "network_error", "429", "truncated_response", "empty_streaming")
UPSTREAM_ERROR_TYPES = (
    "422",
    "429",
    "truncated_response",
    "empty_streaming",
    "upstream_connection",
    "write_error",
    "read_error",
    "request_creation",
    "timeout",
    "stream_error_event",
)
ADJUST_DIRECTIONS = ("increase", "decrease", "probe")
REJECTION_REASONS = ("rate_limit", "capacity")
WEBSOCKET_DIRECTIONS = ("upstream", "downstream")
# The close codes RFC 6455 and IANA's registry define, each its own label; the
# application ranges (3000-4999) are "other", so the label stays bounded.
WEBSOCKET_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015}
)


# The `method` label: the methods an HTTP API uses; anything else a caller invents is
# "other", so the label stays bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def close_code_label(code: int) -> str:
    return str(code) if code in WEBSOCKET_CLOSE_CODES else "other"


class ModelLabels:
    """Maps model names from request bodies onto a bounded label set."""

    def __init__(self, default: str, cap: int = MODEL_LABEL_CAP) -> None:
        self._default = default
        self._cap = cap
        self._seen: set[str] = set()

    def label(self, model: str | None) -> str:
        if not model:
            return self._default
        name = model[:_MODEL_LABEL_MAX_LEN]
        if name in self._seen:
            return name
        if len(self._seen) >= self._cap:
            return "other"
        self._seen.add(name)
        return name


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the scrape-time collector reads; the app passes a function returning this."""

    concurrent: int
    max_workers: int
    rate_limit_rps: float
    rate_limit_ceiling: float | None
    rate_limit_backend: str = "memory"
    """"memory" or "redis" (RATE_LIMIT_BACKEND)."""
    rate_limit_backend_up: bool = True
    """False while a shared limiter's replica runs on its local fallback bucket."""
    rate_limit_replicas: int = 1
    """Proxies live on the shared limiter, as this one last saw them."""
    rate_limit_judge: bool = True
    """Whether this replica judges the limiter's windows (holds the lease)."""
    websocket_sessions: int = 0
    """WebSocket sessions open or being opened (each holds one of MAX_WEBSOCKETS)."""
    max_websockets: int = 0


class _LiveCollector(Collector):
    def __init__(self, variant: str, read: Callable[[], LiveState]) -> None:
        self._variant = variant
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        v = self._variant

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["variant"])
            family.add_metric([v], value)
            return family

        yield gauge(
            "zai_proxy_concurrent_requests",
            "Requests currently being processed.",
            state.concurrent,
        )
        yield gauge(
            "zai_proxy_max_workers",
            "Maximum concurrent requests (MAX_WORKERS).",
            state.max_workers,
        )
        yield gauge(
            "zai_proxy_worker_utilization_ratio",
            "concurrent_requests / max_workers.",
            state.concurrent / state.max_workers if state.max_workers else 0.0,
        )
        yield gauge(
            "zai_proxy_rate_limit_requests_per_second",
            "Current rate of the adaptive limiter (requests/s).",
            state.rate_limit_rps,
        )
        if state.rate_limit_ceiling is not None:
            yield gauge(
                "zai_proxy_rate_limit_ceiling_requests_per_second",
                "The limiter's estimate of the upstream's limit (absent until a 429 storm).",
                state.rate_limit_ceiling,
            )
        up = GaugeMetricFamily(
            "zai_proxy_rate_limit_backend_up",
            "1 while the limiter's backend answers (always for memory); 0 while this replica "
            "runs on its local fallback bucket.",
            labels=["variant", "backend"],
        )
        up.add_metric([v, state.rate_limit_backend], 1.0 if state.rate_limit_backend_up else 0.0)
        yield up
        yield gauge(
            "zai_proxy_rate_limit_replicas",
            "Proxies live on the shared limiter as this one sees them (1 for memory).",
            state.rate_limit_replicas,
        )
        yield gauge(
            "zai_proxy_rate_limit_judge",
            "1 on the replica that judges the limiter's windows.",
            1.0 if state.rate_limit_judge else 0.0,
        )
        yield gauge(
            "zai_proxy_websocket_sessions_open",
            "WebSocket sessions open now (or being opened).",
            state.websocket_sessions,
        )
        yield gauge(
            "zai_proxy_max_websockets",
            "Maximum concurrent WebSocket sessions (MAX_WEBSOCKETS).",
            state.max_websockets,
        )


class ProxyMetrics:
    """Every proxy metric, bound to one registry and one variant."""

    def __init__(
        self,
        *,
        variant: str,
        live: Callable[[], LiveState],
        version: str = __version__,
        commit: str = "unknown",
        build_time: str = "unknown",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.variant = variant
        self.registry = registry if registry is not None else CollectorRegistry()
        # Bounded: methods, routes and status codes all come from small fixed sets.
        self._request_series: dict[
            tuple[str, str, str], tuple[Counter, Histogram, Histogram, Histogram]
        ] = {}
        r = self.registry
        v = variant

        self.requests = Counter(
            "zai_proxy_requests_total",
            "Requests handled, by method, API route and status code sent.",
            ["method", "path", "status_code", "variant"],
            registry=r,
        )
        self.duration = Histogram(
            "zai_proxy_request_duration_seconds",
            "Time from request received to last byte sent.",
            ["method", "path", "status_code", "variant"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.request_size = Histogram(
            "zai_proxy_request_size_bytes",
            "Request body size.",
            ["method", "path", "variant"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.response_size = Histogram(
            "zai_proxy_response_size_bytes",
            "Response body size sent to the client.",
            ["method", "path", "status_code", "variant"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "zai_proxy_tokens",
            "Tokens by direction, model and pricing tier (API-reported, else counted locally).",
            ["direction", "model", "variant", "pricing_tier"],
            registry=r,
        )
        self.token_count_duration = Histogram(
            "zai_proxy_token_count_duration_seconds",
            "Time spent counting tokens locally.",
            ["variant"],
            buckets=TOKEN_COUNT_BUCKETS,
            registry=r,
        )
        self.token_rate = Histogram(
            "zai_proxy_token_rate",
            "Tokens per second of request duration, per request.",
            ["direction", "model", "variant"],
            buckets=TOKEN_RATE_BUCKETS,
            registry=r,
        )
        self.token_rate_seconds = Histogram(
            "zai_proxy_token_rate_seconds",
            "Seconds of request duration per token, per request (time per output token).",
            ["direction", "model", "variant"],
            buckets=SECONDS_PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.token_estimate_error = Histogram(
            "zai_proxy_token_estimate_relative_error",
            "|local estimate - API count| / API count, on a sample of requests.",
            ["direction", "variant"],
            buckets=RELATIVE_ERROR_BUCKETS,
            registry=r,
        )
        self.rate_limit_wait = Histogram(
            "zai_proxy_rate_limit_wait_seconds",
            "Time an upstream attempt waited for a limiter token.",
            ["variant"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.rate_limit_adjustments = Counter(
            "zai_proxy_rate_limit_adjustments",
            "Adaptive limiter decisions, by direction.",
            ["direction", "variant"],
            registry=r,
        )
        self.rate_limit_backend_errors = Counter(
            "zai_proxy_rate_limit_backend_errors",
            "Calls to the shared limiter's backend (Redis) that failed or timed out.",
            ["variant"],
            registry=r,
        )
        self.rate_limit_rejections = Counter(
            "zai_proxy_rate_limit_rejections",
            "Requests turned away: rate_limit (429, wait too long) or capacity (503, full).",
            ["variant", "reason"],
            registry=r,
        )
        self.retry_attempts = Counter(
            "zai_proxy_retry_attempts",
            'Retry attempts; reason="retry" counts all of them, the others their cause.',
            ["reason", "variant"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "zai_proxy_upstream_errors",
            "Upstream failures by type.",
            ["error_type", "variant"],
            registry=r,
        )
        self.websocket_sessions = Counter(
            "zai_proxy_websocket_sessions",
            "WebSocket sessions ended, by the close code that ended them.",
            ["close_code", "variant"],
            registry=r,
        )
        self.websocket_messages = Counter(
            "zai_proxy_websocket_messages",
            "WebSocket messages relayed: upstream (client to upstream) or downstream.",
            ["direction", "variant"],
            registry=r,
        )
        self.websocket_bytes = Counter(
            "zai_proxy_websocket_bytes",
            "WebSocket message payload bytes relayed (text as UTF-8), by direction.",
            ["direction", "variant"],
            registry=r,
        )
        self.task_restarts = Counter(
            "zai_proxy_task_restarts",
            "Background tasks restarted by the supervisor after a crash.",
            ["task", "variant"],
            registry=r,
        )
        build = Gauge(
            "zai_proxy_build_info",
            "Build information; the value is always 1.",
            ["version", "variant", "commit", "build_time"],
            registry=r,
        )
        build.labels(version, v, commit, build_time).set(1)
        r.register(_LiveCollector(v, live))

        # Series that exist from the start, so dashboards and alerts see 0 rather than
        # "no data" before the first event.
        for direction in ADJUST_DIRECTIONS:
            self.rate_limit_adjustments.labels(direction, v)
        for reason in REJECTION_REASONS:
            self.rate_limit_rejections.labels(v, reason)
        for reason in RETRY_REASONS:
            self.retry_attempts.labels(reason, v)
        for error_type in UPSTREAM_ERROR_TYPES:
            self.upstream_errors.labels(error_type, v)
        for direction in WEBSOCKET_DIRECTIONS:
            self.websocket_messages.labels(direction, v)
            self.websocket_bytes.labels(direction, v)
        self.websocket_sessions.labels("1000", v)
        self.token_count_duration.labels(v)
        self.rate_limit_wait.labels(v)
        for route in ROUTES[:1]:
            self.request_size.labels("POST", route, v)

    def request_done(
        self,
        method: str,
        route: str,
        status: str,
        duration: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """The four per-request series; their label children are looked up once per
        label set (prometheus_client's labels() validates and locks on every call)."""
        key = (method, route, status)
        series = self._request_series.get(key)
        if series is None:
            v = self.variant
            series = (
                self.requests.labels(method, route, status, v),
                self.duration.labels(method, route, status, v),
                self.request_size.labels(method, route, v),
                self.response_size.labels(method, route, status, v),
            )
            self._request_series[key] = series
        requests, durations, request_sizes, response_sizes = series
        requests.inc()
        durations.observe(duration)
        request_sizes.observe(request_bytes)
        response_sizes.observe(response_bytes)

    def retry(self, reason: str) -> None:
        self.retry_attempts.labels("retry", self.variant).inc()
        self.retry_attempts.labels(reason, self.variant).inc()

    def upstream_error(self, error_type: str) -> None:
        self.upstream_errors.labels(error_type, self.variant).inc()

    def rejection(self, reason: str) -> None:
        self.rate_limit_rejections.labels(self.variant, reason).inc()

    def websocket_ended(self, close_code: int) -> None:
        self.websocket_sessions.labels(close_code_label(close_code), self.variant).inc()
