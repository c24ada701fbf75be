"""The one map from httpx's exceptions to ours: complete, and right for each phase."""

from __future__ import annotations

import httpx
import pytest

from zai_proxy.errors import (
    ConnectTimeout,
    EmptyStream,
    RequestCreationError,
    RetryableError,
    StreamBroken,
    StreamTimedOut,
    TruncatedResponse,
    UpstreamClosed,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
)
from zai_proxy.proxy import HTTPX_ERRORS, Phase, map_upstream_error, upstream_errors


def every_httpx_exception() -> list[type[Exception]]:
    found = {
        value
        for value in vars(httpx).values()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    return sorted(found, key=lambda cls: cls.__name__)


def instance(cls: type[Exception]) -> Exception:
    return cls.__new__(cls)


@pytest.mark.parametrize("cls", every_httpx_exception(), ids=lambda cls: cls.__name__)
def test_every_httpx_exception_maps_to_one_of_ours_in_every_phase(cls: type[Exception]) -> None:
    assert issubclass(cls, HTTPX_ERRORS)
    for phase in Phase:
        assert isinstance(map_upstream_error(phase, instance(cls)), UpstreamError), phase


@pytest.mark.parametrize(
    ("phase", "raised", "expected", "retryable"),
    [
        (Phase.SEND, httpx.LocalProtocolError, RequestCreationError, False),
        (Phase.SEND, httpx.ConnectTimeout, ConnectTimeout, True),
        (Phase.SEND, httpx.PoolTimeout, ConnectTimeout, True),
        (Phase.SEND, httpx.ReadTimeout, UpstreamTimeout, False),
        (Phase.SEND, httpx.ConnectError, UpstreamConnectionError, True),
        (Phase.SEND, httpx.WriteError, UpstreamConnectionError, True),
        (Phase.SEND, httpx.RemoteProtocolError, UpstreamClosed, True),
        (Phase.SEND, httpx.ReadError, UpstreamClosed, True),
        (Phase.BODY, httpx.ReadTimeout, UpstreamTimeout, False),
        (Phase.BODY, httpx.ReadError, TruncatedResponse, True),
        (Phase.BODY, httpx.DecodingError, TruncatedResponse, True),
        (Phase.STREAM_START, httpx.ReadTimeout, UpstreamTimeout, False),
        (Phase.STREAM_START, httpx.RemoteProtocolError, EmptyStream, True),
        (Phase.STREAM, httpx.ReadTimeout, StreamTimedOut, False),
        (Phase.STREAM, httpx.ReadError, StreamBroken, False),
        (Phase.STREAM, httpx.DecodingError, StreamBroken, False),
        (Phase.BUILD, httpx.InvalidURL, RequestCreationError, False),
    ],
)
def test_each_phase_gives_the_error_its_point_calls_for(
    phase: Phase,
    raised: type[Exception],
    expected: type[UpstreamError],
    retryable: bool,
) -> None:
    ours = map_upstream_error(phase, raised("boom"))
    assert type(ours) is expected
    assert isinstance(ours, RetryableError) is retryable


def test_only_failures_after_the_request_went_out_are_marked_after_sent() -> None:
    # Nothing reached the upstream: always safe to send again.
    for cls in (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError):
        ours = map_upstream_error(Phase.SEND, cls("x"))
        assert isinstance(ours, RetryableError) and not ours.after_sent, cls
    # The upstream had the whole request: it may have acted on it.
    for phase, cls in (
        (Phase.SEND, httpx.RemoteProtocolError),
        (Phase.BODY, httpx.ReadError),
        (Phase.STREAM_START, httpx.ReadError),
    ):
        ours = map_upstream_error(phase, cls("x"))
        assert isinstance(ours, RetryableError) and ours.after_sent, (phase, cls)


def test_a_broken_stream_is_502_and_a_stalled_one_504() -> None:
    broken = map_upstream_error(Phase.STREAM, httpx.ReadError("reset"))
    stalled = map_upstream_error(Phase.STREAM, httpx.ReadTimeout("slow"))
    assert (broken.status, broken.error_type) == (502, "read_error")
    assert (stalled.status, stalled.error_type) == (504, "timeout")


def test_the_context_manager_raises_ours_from_httpx() -> None:
    cause = httpx.ConnectError("refused by 10.0.0.1")
    with pytest.raises(UpstreamConnectionError) as caught, upstream_errors(Phase.SEND):
        raise cause
    assert caught.value.__cause__ is cause
    # httpx's text can name hosts and URLs; ours names only the class.
    assert caught.value.message == "could not reach the upstream: ConnectError"


def test_a_header_value_http_cannot_carry_is_a_request_creation_error() -> None:
    with pytest.raises(RequestCreationError), upstream_errors(Phase.BUILD):
        httpx.Request("POST", "http://x/", headers={"x-a": "\u2603"})


def test_exceptions_that_are_not_httpx_pass_through() -> None:
    with pytest.raises(KeyError), upstream_errors(Phase.SEND):
        raise KeyError("a bug, not an upstream failure")
