"""Every answer the proxy makes itself, in the caller's wire format.

Anthropic: ``{"type":"error","error":{"type":...,"message":...}}``; OpenAI-style paths:
``{"error":{"message":...,"type":...,"code":null}}``.  SDKs map the status code to their
exception classes and show the message, so both carry enough to act on.  A stream the
upstream broke ends with that format's error event; a 429 always carries Retry-After.
"""

from __future__ import annotations

import json
import math

from ..errors import ProxyError, UpstreamThrottled
from .headers import header_value, http_date, parse_retry_after, response_headers
from .paths import ApiStyle

__all__ = [
    "Answer",
    "error_answer",
    "error_body",
    "retry_after_value",
    "stream_error_event",
    "throttled_answer",
]

Answer = tuple[list[tuple[bytes, bytes]], bytes]
"""Headers and the whole body of an answer."""


def error_body(error: ProxyError, style: ApiStyle) -> bytes:
    if style == "openai":
        payload: dict[str, object] = {
            "error": {"message": error.message, "type": error.openai_type, "code": None}
        }
    else:
        payload = {
            "type": "error",
            "error": {"type": error.anthropic_type, "message": error.message},
        }
    return json.dumps(payload, separators=(",", ":")).encode()


def retry_after_value(seconds: float) -> bytes:
    """Whole seconds, rounded up and at least 1: what clients expect to parse."""
    return str(max(1, math.ceil(seconds))).encode()


def _framing(body: bytes, request_id: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]


def error_answer(error: ProxyError, style: ApiStyle, request_id: str) -> Answer:
    """The proxy's own error: JSON in the caller's format, dated, with Retry-After when
    the error names a delay."""
    body = error_body(error, style)
    headers = [
        (b"content-type", b"application/json"),
        *_framing(body, request_id),
        (b"request-id", request_id.encode()),
        (b"date", http_date()),
    ]
    if error.retry_after is not None:
        headers.append((b"retry-after", retry_after_value(error.retry_after)))
    return headers, body


def throttled_answer(
    error: UpstreamThrottled, request_id: str, fallback_retry_after: float
) -> Answer:
    """The upstream's last 429, passed on with a Retry-After the client can rely on."""
    headers = response_headers(error.headers)
    if parse_retry_after(header_value(headers, b"retry-after")) is None:
        # Missing or not a delay a client can parse: ours replaces it.
        headers = [(name, value) for name, value in headers if name != b"retry-after"]
        headers.append((b"retry-after", retry_after_value(fallback_retry_after)))
    headers.extend(_framing(error.body, request_id))
    return headers, error.body


def stream_error_event(style: ApiStyle, message: str) -> bytes:
    """A complete error event, to end a stream the upstream broke after it began."""
    if style == "openai":
        data = json.dumps({"error": {"message": message, "type": "server_error"}})
        return b"data: " + data.encode() + b"\n\n"
    data = json.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
    return b"event: error\ndata: " + data.encode() + b"\n\n"
