"""Header rules for both hops, as pure functions: what goes upstream, what comes back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from zai_proxy.proxy import (
    ACCEPT_ENCODING,
    HOP_BY_HOP,
    header_value,
    headers,
    http_date,
    parse_retry_after,
    request_headers,
    response_headers,
)

KEY = b"Bearer sk-upstream"
# What the proxy adds to every upstream request, last: the codings it can decode, the key.
OURS = [(b"accept-encoding", ACCEPT_ENCODING), (b"authorization", KEY)]
# RFC 9110 section 7.6.1 and the proxy-era names: every one must stop at each hop.
HOP_NAMES = (
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
)


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in headers]


def test_the_hop_by_hop_set_is_exactly_the_rfc_names() -> None:
    assert frozenset(HOP_NAMES) == HOP_BY_HOP


@pytest.mark.parametrize("name", HOP_NAMES)
def test_each_hop_by_hop_header_stops_on_the_way_up(name: bytes) -> None:
    incoming = [(b"content-type", b"application/json"), (name, b"x")]
    assert names(request_headers(incoming, KEY)) == [
        b"content-type",
        b"accept-encoding",
        b"authorization",
    ]


@pytest.mark.parametrize("name", HOP_NAMES)
def test_each_hop_by_hop_header_stops_on_the_way_down(name: bytes) -> None:
    upstream = [(b"content-type", b"text/event-stream"), (name, b"x"), (b"date", b"d")]
    assert names(response_headers(upstream)) == [b"content-type", b"date"]


def test_a_chunked_request_goes_up_without_its_transfer_encoding() -> None:
    # The HTTP client frames the body again with Content-Length; passing the caller's
    # Transfer-Encoding on too would send both, which HTTP/1.1 forbids (RFC 9112 6.3).
    incoming = [(b"transfer-encoding", b"chunked"), (b"content-length", b"12")]
    assert request_headers(incoming, KEY) == [*OURS]


def test_headers_named_by_connection_stop_on_the_way_up() -> None:
    incoming = [
        (b"connection", b"keep-alive, X-Session-Hint ,  x-trace"),
        (b"x-session-hint", b"a"),
        (b"x-trace", b"b"),
        (b"x-kept", b"c"),
    ]
    assert request_headers(incoming, KEY) == [(b"x-kept", b"c"), *OURS]


def test_headers_named_by_connection_stop_on_the_way_down() -> None:
    upstream = [
        (b"Connection", b"close, X-Backend-Node"),
        (b"X-Backend-Node", b"node-7"),
        (b"x-kept", b"c"),
        (b"date", b"d"),
    ]
    assert response_headers(upstream) == [(b"x-kept", b"c"), (b"date", b"d")]


def test_callers_credentials_and_client_framing_never_go_up() -> None:
    incoming = [
        (b"Authorization", b"Bearer agent"),
        (b"x-api-key", b"agent-key"),
        (b"host", b"proxy:8080"),
        (b"content-length", b"5"),
        (b"expect", b"100-continue"),
        (b"anthropic-version", b"2023-06-01"),
    ]
    assert request_headers(incoming, KEY) == [
        (b"anthropic-version", b"2023-06-01"),
        *OURS,
    ]


def test_upstream_framing_headers_never_come_down() -> None:
    # The body may be decoded and re-framed, so the upstream's own framing would lie.
    upstream = [(b"content-length", b"10"), (b"content-encoding", b"gzip"), (b"date", b"d")]
    assert response_headers(upstream) == [(b"date", b"d")]


def test_the_upstreams_copies_of_the_proxys_own_headers_never_come_down() -> None:
    # The proxy adds its own x-request-id and x-token-input to every forwarded answer;
    # the upstream's would make each come twice.
    upstream = [(b"X-Request-Id", b"up-1"), (b"x-token-input", b"9"), (b"request-id", b"r")]
    assert names(response_headers(upstream)) == [b"request-id", b"date"]


def test_only_the_upstreams_first_date_comes_down() -> None:
    upstream = [(b"date", b"first"), (b"x-a", b"1"), (b"Date", b"second")]
    assert response_headers(upstream) == [(b"date", b"first"), (b"x-a", b"1")]


def test_a_date_is_added_only_when_the_upstream_sent_none() -> None:
    kept = response_headers([(b"Date", b"Tue, 01 Dec 2026 00:00:00 GMT")])
    assert kept == [(b"date", b"Tue, 01 Dec 2026 00:00:00 GMT")]
    added = response_headers([(b"x-a", b"1")])
    assert names(added) == [b"x-a", b"date"]
    assert added[1][1].endswith(b" GMT")


def test_header_value_is_the_first_match_by_lower_case_name() -> None:
    headers = [(b"X-A", b"1"), (b"x-a", b"2")]
    assert header_value(headers, b"x-a") == b"1"
    assert header_value(headers, b"x-b") is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"7", 7.0),
        (" 2.5 ", 2.5),
        (b"0", 0.0),
        (b"-1", None),
        (b"nan", None),
        (b"inf", None),
        (b"", None),
        (None, None),
        (b"soon", None),
        (b"Wed, 02 Dec 2026 10:00:30 GMT", 30.0),
        (b"Wed, 02 Dec 2026 09:59:00 GMT", 0.0),
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date(
    value: bytes | str | None, seconds: float | None
) -> None:
    now = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == seconds


def test_the_upstream_is_asked_only_for_codings_the_proxy_decodes() -> None:
    incoming = [(b"Accept-Encoding", b"br, zstd, gzip"), (b"x-kept", b"c")]
    assert request_headers(incoming, KEY) == [(b"x-kept", b"c"), *OURS]
    assert ACCEPT_ENCODING == b"gzip, deflate"


def test_connection_tokens_may_be_separated_by_commas_alone() -> None:
    incoming = [(b"connection", b"close,x-hint"), (b"x-hint", b"a"), (b"x-kept", b"c")]
    assert request_headers(incoming, KEY) == [(b"x-kept", b"c"), *OURS]


class FrozenTime:
    """Stands in for the `time` module: `time()` is whatever the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_the_date_is_now_in_imf_fixdate_and_changes_with_the_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FrozenTime(1_796_205_600.25)  # 2026-12-02 10:00:00.25 UTC
    monkeypatch.setattr(headers, "time", clock)
    assert http_date() == b"Wed, 02 Dec 2026 10:00:00 GMT"
    clock.now = 1_796_205_600.9
    assert http_date() == b"Wed, 02 Dec 2026 10:00:00 GMT"
    clock.now = 1_796_205_601.0
    assert http_date() == b"Wed, 02 Dec 2026 10:00:01 GMT"
    clock.now = 1_796_205_600.5  # a clock stepped back is followed, not ignored
    assert http_date() == b"Wed, 02 Dec 2026 10:00:00 GMT"


def test_a_retry_after_date_without_a_zone_is_read_as_utc() -> None:
    now = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after(b"Wed, 02 Dec 2026 10:00:30", now=now) == 30.0
    assert parse_retry_after(b"Wed, 02 Dec 2026 10:00:30 -0000", now=now) == 30.0


def test_a_retry_after_date_is_measured_from_the_real_clock_by_default() -> None:
    assert parse_retry_after(b"Mon, 01 Jan 2001 00:00:00 GMT") == 0.0
    far = parse_retry_after(b"Fri, 01 Jan 2100 00:00:00 GMT")
    assert far is not None and far > 365 * 24 * 3600


def test_headers_after_a_repeated_date_still_come_down() -> None:
    upstream = [(b"date", b"first"), (b"date", b"second"), (b"x-a", b"1")]
    assert response_headers(upstream) == [(b"date", b"first"), (b"x-a", b"1")]
