"""The proxy branch: its public names, one import away.

Each room holds one concern; README's architecture section has the map."""

from __future__ import annotations

from .accounting import (
    Accountant,
    PricingTier,
    pricing_tier,
)
from .app import (
    ProxyApp,
    create_app,
    make_gate,
)
from .body import (
    DRAIN_LIMIT,
    DRAIN_SECONDS,
    ClientGone,
    extract_model,
    is_streaming_request,
    read_body,
)
from .exchange import (
    Downstream,
    Exchange,
    Outcome,
)
from .forward import (
    Forwarder,
)
from .headers import (
    ACCEPT_ENCODING,
    HOP_BY_HOP,
    OWN_HEADERS,
    header_value,
    http_date,
    parse_retry_after,
    request_headers,
    response_headers,
)
from .limiter import (
    AdaptiveLimiter,
    Adjustment,
    Learned,
    LimiterConfig,
    Ticket,
)
from .limiter_loop import (
    limiter_config,
    report_adjustment,
    run_limiter,
)
from .metrics import (
    METHODS,
    MODEL_LABEL_CAP,
    WEBSOCKET_CLOSE_CODES,
    WEBSOCKET_DIRECTIONS,
    LiveState,
    ModelLabels,
    ProxyMetrics,
    close_code_label,
    method_label,
)
from .paths import (
    IDEMPOTENT_METHODS,
    JSON_ROUTES,
    ROUTES,
    ApiStyle,
    Target,
    api_style,
    route_label,
    upstream_path,
    upstream_target,
)
from .rate_gate import (
    LocalGate,
    RateGate,
)
from .realtime import (
    MAX_EVENT_CHARS,
    RealtimeEvents,
    model_from_query,
    realtime_usage,
)
from .server import (
    RunningProxy,
    serve_proxy,
)
from .shared_limiter import (
    SharedGate,
    Timing,
    default_namespace,
)
from .sse import (
    PARTIAL_EVENT_LIMIT,
    WholeEvents,
)
from .texts import (
    request_texts,
    response_texts,
    tool_call_texts,
)
from .tokenizer import (
    ENCODING_NAME,
    INLINE_MAX_BYTES,
    TokenCounter,
    count_request_async,
    count_response_async,
    count_text_async,
    estimate_tokens,
    get_counter,
    relative_error,
)
from .upstream import (
    SHARD_SIZE,
    UpstreamTransport,
)
from .upstream_errors import (
    HTTPX_ERRORS,
    Phase,
    map_upstream_error,
    upstream_errors,
)
from .usage import (
    DIRECTIONS,
    SSEUsageTracker,
    Usage,
    usage_from_answer,
    usage_from_json,
)
from .websocket import (
    CLOSE_TIMEOUT,
    MAX_MESSAGE_BYTES,
    WebSocketRelay,
    message_cap,
)
from .wire import (
    error_answer,
    error_body,
    retry_after_value,
    stream_error_event,
    throttled_answer,
)

__all__ = [
    "ACCEPT_ENCODING",
    "CLOSE_TIMEOUT",
    "MAX_EVENT_CHARS",
    "MAX_MESSAGE_BYTES",
    "WEBSOCKET_CLOSE_CODES",
    "WEBSOCKET_DIRECTIONS",
    "RealtimeEvents",
    "WebSocketRelay",
    "close_code_label",
    "message_cap",
    "model_from_query",
    "realtime_usage",
    "PARTIAL_EVENT_LIMIT",
    "WholeEvents",
    "IDEMPOTENT_METHODS",
    "JSON_ROUTES",
    "DIRECTIONS",
    "DRAIN_LIMIT",
    "DRAIN_SECONDS",
    "ENCODING_NAME",
    "HOP_BY_HOP",
    "OWN_HEADERS",
    "HTTPX_ERRORS",
    "INLINE_MAX_BYTES",
    "METHODS",
    "MODEL_LABEL_CAP",
    "ROUTES",
    "SHARD_SIZE",
    "Accountant",
    "AdaptiveLimiter",
    "Adjustment",
    "ApiStyle",
    "ClientGone",
    "Downstream",
    "Exchange",
    "Forwarder",
    "Learned",
    "LocalGate",
    "RateGate",
    "SharedGate",
    "Timing",
    "default_namespace",
    "LimiterConfig",
    "LiveState",
    "ModelLabels",
    "Outcome",
    "Phase",
    "PricingTier",
    "ProxyApp",
    "ProxyMetrics",
    "RunningProxy",
    "SSEUsageTracker",
    "Target",
    "Ticket",
    "TokenCounter",
    "UpstreamTransport",
    "Usage",
    "api_style",
    "count_request_async",
    "count_response_async",
    "count_text_async",
    "create_app",
    "make_gate",
    "error_answer",
    "error_body",
    "estimate_tokens",
    "extract_model",
    "get_counter",
    "header_value",
    "http_date",
    "is_streaming_request",
    "limiter_config",
    "map_upstream_error",
    "method_label",
    "parse_retry_after",
    "pricing_tier",
    "read_body",
    "relative_error",
    "report_adjustment",
    "request_headers",
    "request_texts",
    "response_headers",
    "response_texts",
    "retry_after_value",
    "route_label",
    "run_limiter",
    "serve_proxy",
    "stream_error_event",
    "throttled_answer",
    "tool_call_texts",
    "upstream_errors",
    "upstream_path",
    "upstream_target",
    "usage_from_answer",
    "usage_from_json",
]
