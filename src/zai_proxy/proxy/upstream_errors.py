"""The one map from httpx's exceptions to ours, by where the exchange had got to.

The same httpx exception means different things at different points: a read error
before the status line means the upstream could not be reached, while reading a whole
answer it means the answer was cut off (retryable), and in a stream already passed to
the client it means the stream broke (an error event, no retry).  So the table is keyed
by `Phase`, and every call that touches the upstream runs inside
``with upstream_errors(phase):``, which raises our class ``from`` httpx's, the way
httpx's own transport maps httpcore's exceptions.  Nothing else catches httpx errors.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from ..errors import (
    ConnectTimeout,
    EmptyStream,
    RequestCreationError,
    StreamBroken,
    StreamTimedOut,
    TruncatedResponse,
    UpstreamClosed,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = ["HTTPX_ERRORS", "Phase", "map_upstream_error", "upstream_errors"]


class Phase(enum.Enum):
    BUILD = "build"
    """Turning the client's request into an upstream request: nothing was sent."""
    SEND = "send"
    """From connecting until the status line."""
    BODY = "body"
    """Reading a whole (non-streaming) answer before it is passed on."""
    STREAM_START = "stream_start"
    """Waiting for a stream's first bytes, before anything was passed on."""
    STREAM = "stream"
    """Relaying a stream the client is already receiving."""


# Every exception httpx raises: its HTTPError tree and the few outside it.
HTTPX_ERRORS: tuple[type[Exception], ...] = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpx.StreamError,
    httpx.CookieConflict,
)

# Building a request also fails with the ValueError or TypeError of a header value
# HTTP cannot carry.
_CAUGHT: dict[Phase, tuple[type[Exception], ...]] = {
    phase: HTTPX_ERRORS + (ValueError, TypeError) if phase is Phase.BUILD else HTTPX_ERRORS
    for phase in Phase
}

_Row = tuple[type[Exception], type[UpstreamError], str]

# Most specific first; the last row of each phase catches the rest.  `{name}` in a
# message becomes httpx's class name (never its text, which may quote a URL).
_TABLE: dict[Phase, tuple[_Row, ...]] = {
    Phase.BUILD: (
        (Exception, RequestCreationError, "could not build the upstream request: {name}"),
    ),
    Phase.SEND: (
        # Refused by our own HTTP/1.1 layer before anything went out.
        (
            httpx.LocalProtocolError,
            RequestCreationError,
            "could not build the upstream request: {name}",
        ),
        (httpx.ConnectTimeout, ConnectTimeout, "timed out connecting to the upstream"),
        (httpx.PoolTimeout, ConnectTimeout, "timed out connecting to the upstream"),
        (httpx.TimeoutException, UpstreamTimeout, "the upstream did not answer in time"),
        # The request went out whole; the upstream closed before its status line.
        (httpx.ReadError, UpstreamClosed, "the upstream closed the connection: {name}"),
        (
            httpx.RemoteProtocolError,
            UpstreamClosed,
            "the upstream closed the connection: {name}",
        ),
        (Exception, UpstreamConnectionError, "could not reach the upstream: {name}"),
    ),
    Phase.BODY: (
        (httpx.TimeoutException, UpstreamTimeout, "the upstream stopped sending its answer"),
        (Exception, TruncatedResponse, "the upstream's answer was cut off"),
    ),
    Phase.STREAM_START: (
        (
            httpx.TimeoutException,
            UpstreamTimeout,
            "the upstream's stream did not start in time",
        ),
        (Exception, EmptyStream, "the upstream's stream closed before its first byte"),
    ),
    Phase.STREAM: (
        (httpx.TimeoutException, StreamTimedOut, "the upstream stream timed out"),
        (Exception, StreamBroken, "the upstream stream was interrupted"),
    ),
}


def map_upstream_error(phase: Phase, exc: Exception) -> UpstreamError:
    """Our error for `exc` raised during `phase` (not raised; its cause is not set)."""
    for kind, ours, message in _TABLE[phase]:
        if isinstance(exc, kind):
            return ours(message.format(name=type(exc).__name__))
    raise AssertionError("every phase ends with a catch-all row")  # pragma: no cover


@contextmanager
def upstream_errors(phase: Phase) -> Iterator[None]:
    """Raise our error, from httpx's, for any httpx exception in the block."""
    try:
        yield
    except _CAUGHT[phase] as exc:
        raise map_upstream_error(phase, exc) from exc
