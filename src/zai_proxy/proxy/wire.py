"""Errors the proxy makes itself, in the caller's wire format.

Anthropic: ``{"type":"error","error":{"type":...,"message":...}}``; OpenAI-style paths:
``{"error":{"message":...,"type":...,"code":null}}``.  SDKs map the status code to their
exception classes and show the message, so both carry enough to act on.
"""

from __future__ import annotations

import json
import math

from ..errors import ProxyError
from .headers import http_date
from .paths import ApiStyle

__all__ = ["error_body", "error_headers", "sse_error_event"]


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


def error_headers(error: ProxyError, body: bytes, request_id: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", request_id.encode()),
        (b"x-request-id", request_id.encode()),
        (b"date", http_date()),
    ]
    if error.retry_after is not None:
        headers.append((b"retry-after", retry_after_value(error.retry_after)))
    return headers


def sse_error_event(error_type: str, message: str) -> bytes:
    """A complete Anthropic `error` event that ends a stream the upstream broke."""
    data = json.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}},
        separators=(",", ":"),
    )
    return b"event: error\ndata: " + data.encode() + b"\n\n"
