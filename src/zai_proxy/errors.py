"""The small tree of errors zai-proxy raises and answers with.

Foreign exceptions are mapped onto these at one boundary each: httpx's in
`proxy.upstream_errors` (one table), the scrape client's in `dashboard.scrape`, SQLite's
in `dashboard.store`.  Retry decisions look only at these classes.  Messages never contain the
upstream key: they are built from fixed text and from values the caller sent.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadRequest",
    "ClientStalled",
    "BodyTooLarge",
    "ConnectTimeout",
    "EmptyStream",
    "ListenError",
    "Overloaded",
    "ProxyError",
    "RateLimited",
    "RedisUnavailable",
    "RequestCreationError",
    "RequestTimeout",
    "RetryableError",
    "ScrapeError",
    "SettingsError",
    "StoreError",
    "StreamBroken",
    "StreamTimedOut",
    "TruncatedResponse",
    "Unauthorized",
    "UpstreamClosed",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamThrottled",
    "UpstreamTimeout",
]


class SettingsError(Exception):
    """A setting that stops start-up: one line naming the variable, its value, what's allowed."""

    def __init__(self, variable: str, value: str, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        shown = repr(value) if value else "(empty)"
        super().__init__(f"{variable}={shown} is not valid: expected {allowed}")


class ListenError(SettingsError):
    """LISTEN_ADDR names an address this process cannot listen on."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__("LISTEN_ADDR", value, "an address this host can listen on")
        self.reason = reason
        self.args = (f"LISTEN_ADDR={value!r} cannot be bound: {reason}",)


class StoreError(SettingsError):
    """DB_PATH cannot be used; the message says why in one line."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__("DB_PATH", path, f"a writable SQLite file path ({reason})")


class ScrapeError(Exception):
    """A scrape that gave no exposition; the message is safe to show (no userinfo)."""


class RedisUnavailable(Exception):
    """The demo's redis-server could not be started; the message says why, in one line."""


class ClientStalled(Exception):
    """A write to the client stalled past CLIENT_WRITE_TIMEOUT (it stopped reading);
    its connection has been closed.  Raised from the write, into the request's task."""


class ProxyError(Exception):
    """An error the proxy answers itself, in the caller's wire format."""

    status: ClassVar[int] = 500
    anthropic_type: ClassVar[str] = "api_error"
    openai_type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(ProxyError):
    status = 400
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class Unauthorized(ProxyError):
    status = 401
    anthropic_type = "authentication_error"
    openai_type = "invalid_request_error"


class RequestTimeout(ProxyError):
    """The client did not send its whole request body within CLIENT_BODY_TIMEOUT."""

    status = 408
    anthropic_type = "timeout_error"
    openai_type = "invalid_request_error"


class BodyTooLarge(ProxyError):
    status = 413
    anthropic_type = "request_too_large"
    openai_type = "invalid_request_error"


class RateLimited(ProxyError):
    """Our own limiter would make the caller wait longer than RATE_LIMIT_MAX_WAIT."""

    status = 429
    anthropic_type = "rate_limit_error"
    openai_type = "rate_limit_exceeded"


class Overloaded(ProxyError):
    """All MAX_WORKERS slots are busy: answered at once so the caller can go elsewhere."""

    status = 503
    anthropic_type = "overloaded_error"
    openai_type = "server_error"


class UpstreamError(ProxyError):
    """The upstream could not give a usable answer.  `error_type` is the metric label."""

    status = 502
    anthropic_type = "api_error"
    openai_type = "server_error"
    error_type: ClassVar[str] = "upstream_connection"


class RequestCreationError(UpstreamError):
    """The caller's request could not be turned into an upstream request (a header or URL
    that HTTP/1.1 cannot carry): nothing was sent, and another attempt would fail alike."""

    status = 400
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"
    error_type = "request_creation"


class UpstreamTimeout(UpstreamError):
    status = 504
    anthropic_type = "timeout_error"
    error_type = "timeout"


class StreamBroken(UpstreamError):
    """The upstream's stream broke after the answer was committed to the client: it is
    ended with an error event, never retried."""

    error_type = "read_error"


class StreamTimedOut(StreamBroken):
    status = 504
    anthropic_type = "timeout_error"
    error_type = "timeout"


class RetryableError(UpstreamError):
    """An attempt failed in a way another attempt may fix.  `reason` is the retry label.

    `after_sent`: the upstream had the whole request when this happened, so it may have
    acted on it; such a failure is retried only for a request that is safe to repeat."""

    reason: ClassVar[str] = "network_error"
    after_sent: ClassVar[bool] = False


class UpstreamConnectionError(RetryableError):
    reason = "network_error"
    error_type = "upstream_connection"


class UpstreamClosed(RetryableError):
    """The upstream closed the connection after the request went out, before answering."""

    reason = "network_error"
    error_type = "upstream_connection"
    after_sent = True


class ConnectTimeout(RetryableError):
    """No connection within the connect/pool timeout: nothing was sent, so retrying is safe."""

    status = 504
    anthropic_type = "timeout_error"
    reason = "network_error"
    error_type = "timeout"


class TruncatedResponse(RetryableError):
    reason = "truncated_response"
    error_type = "truncated_response"
    after_sent = True


class EmptyStream(RetryableError):
    reason = "empty_streaming"
    error_type = "empty_streaming"
    after_sent = True


class UpstreamThrottled(RetryableError):
    """The upstream answered 429.  Holds that answer so the last one can be passed on."""

    status = 429
    anthropic_type = "rate_limit_error"
    reason = "429"
    error_type = "429"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.headers = headers
        self.body = body
