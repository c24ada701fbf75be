"""Header rules for both hops: what goes upstream, what comes back, and Retry-After."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime

__all__ = [
    "ACCEPT_ENCODING",
    "HOP_BY_HOP",
    "OWN_HEADERS",
    "header_value",
    "http_date",
    "parse_retry_after",
    "request_headers",
    "response_headers",
]

# RFC 9110 section 7.6.1, plus the proxy-era names still seen in the wild.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Never forwarded upstream: the caller's credentials (replaced by ours), and headers the
# HTTP client computes itself for the upstream hop.
_DROP_UPSTREAM = HOP_BY_HOP | {
    b"authorization",
    b"x-api-key",
    b"host",
    b"content-length",
    b"expect",
    b"accept-encoding",
}

# The proxy reads every answer it relays (validation, usage) and passes it on decoded,
# so the upstream is asked only for codings it can always decode, whatever the caller
# accepts (curl --compressed and SDKs with brotli or zstandard installed ask for br
# and zstd, which would come back undecodable).
ACCEPT_ENCODING = b"gzip, deflate"

# Never passed back: the body may be decoded and re-framed by us, so the upstream's
# framing headers would lie; and the headers the proxy sets itself on every forwarded
# answer, which would otherwise come twice.
OWN_HEADERS = frozenset({b"x-request-id", b"x-token-input", b"x-token-input-source"})
_DROP_DOWNSTREAM = HOP_BY_HOP | OWN_HEADERS | {b"content-length", b"content-encoding"}


def token_input_headers(tokens: int | None, source: str | None) -> list[tuple[bytes, bytes]]:
    """X-Token-Input and X-Token-Input-Source (which count it is); none when unknown."""
    if tokens is None or source is None:
        return []
    return [(b"x-token-input", str(tokens).encode()), (b"x-token-input-source", source.encode())]


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def request_headers(
    incoming: list[tuple[bytes, bytes]], authorization: bytes
) -> list[tuple[bytes, bytes]]:
    """Headers for the upstream request: the caller's, minus hop-by-hop and credentials,
    plus ours.  `authorization` is the full header value (b"Bearer ...")."""
    drop = _DROP_UPSTREAM | _connection_tokens(incoming)
    out = [(name, value) for name, value in incoming if name.lower() not in drop]
    out.append((b"accept-encoding", ACCEPT_ENCODING))
    out.append((b"authorization", authorization))
    return out


def response_headers(upstream: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers for the client: the upstream's, minus hop-by-hop and framing.

    The upstream's first Date is kept (hypercorn adds none of its own, so there is one),
    and one is added when it sent none, as a forwarding recipient with a clock must."""
    pairs = [(name.lower(), value) for name, value in upstream]
    drop = _DROP_DOWNSTREAM | _connection_tokens(pairs)
    out: list[tuple[bytes, bytes]] = []
    dated = False
    for name, value in pairs:
        if name == b"date":
            # A singleton field: the first one only, however many the upstream sent.
            if dated:
                continue
            dated = True
        elif name in drop:
            continue
        out.append((name, value))
    if not dated:
        out.append((b"date", http_date()))
    return out


_date_second = -1
_date_value = b""


def http_date() -> bytes:
    """Now as an HTTP-date (IMF-fixdate), formatted once a second."""
    global _date_second, _date_value
    second = int(time.time())
    if second != _date_second:
        _date_value = email.utils.formatdate(second, usegmt=True).encode()
        _date_second = second
    return _date_value


def parse_retry_after(value: bytes | str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), or None.

    A date in the past means "now" (0.0); anything unparseable is ignored rather than
    trusted, so a garbage header falls back to our own backoff.
    """
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of `name` (lower-case) in a header list."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
