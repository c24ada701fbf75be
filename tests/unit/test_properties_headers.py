"""Properties of the header rules: whatever headers arrive from either side, what is
passed on holds no hop-by-hop field, no caller credential and no stale framing."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from zai_proxy.proxy import (
    ACCEPT_ENCODING,
    HOP_BY_HOP,
    OWN_HEADERS,
    request_headers,
    response_headers,
)

# Deterministic and database-free, so CI runs the same examples every time.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=100)

OURS = b"Bearer sk-ours"
# The fields the proxy itself sets upstream.
OURS_NAMES = frozenset({b"authorization", b"accept-encoding"})
CREDENTIALS = frozenset({b"authorization", b"x-api-key"})
# The HTTP client computes these itself for the upstream hop, or the proxy sets its own.
CLIENT_COMPUTED = frozenset({b"host", b"content-length", b"expect", b"accept-encoding"})
FRAMING = frozenset({b"content-length", b"content-encoding"})

KNOWN = sorted(
    HOP_BY_HOP
    | CREDENTIALS
    | CLIENT_COMPUTED
    | FRAMING
    | OWN_HEADERS
    | {b"date", b"content-type", b"x-custom", b"retry-after", b"anthropic-version"}
)


@st.composite
def any_case(draw: st.DrawFn, name: bytes) -> bytes:
    upper = draw(st.integers(0, 2 ** len(name) - 1))
    return bytes(c - 32 if upper >> i & 1 and 97 <= c <= 122 else c for i, c in enumerate(name))


names = st.one_of(
    st.sampled_from(KNOWN).flatmap(any_case),
    st.binary(min_size=1, max_size=12),
)
# A Connection value: comma-separated tokens with optional whitespace, often naming
# headers that are present.
connection_values = st.lists(
    st.tuples(st.sampled_from([b"", b" ", b"\t"]), names, st.sampled_from([b"", b" "])),
    max_size=4,
).map(lambda tokens: b",".join(a + n + b for a, n, b in tokens))
headers = st.lists(
    st.one_of(
        st.tuples(names, st.binary(max_size=16)),
        st.tuples(st.sampled_from([b"connection", b"Connection"]), connection_values),
    ),
    max_size=12,
)


def connection_tokens(fields: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {
        token.strip().lower()
        for name, value in fields
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }


@PROPERTY
@given(incoming=headers)
def test_upstream_gets_our_credential_and_coding_once_and_no_hop_by_hop_field(
    incoming: list[tuple[bytes, bytes]],
) -> None:
    out = request_headers(incoming, OURS)
    names_out = [name.lower() for name, _ in out]
    assert [v for n, v in out if n.lower() == b"authorization"] == [OURS]
    assert [v for n, v in out if n.lower() == b"accept-encoding"] == [ACCEPT_ENCODING]
    assert b"x-api-key" not in names_out
    assert not set(names_out) & HOP_BY_HOP
    assert not set(names_out) & (connection_tokens(incoming) - OURS_NAMES)


@PROPERTY
@given(incoming=headers)
def test_upstream_gets_every_other_field_in_order_then_ours(
    incoming: list[tuple[bytes, bytes]],
) -> None:
    dropped = HOP_BY_HOP | CREDENTIALS | CLIENT_COMPUTED | connection_tokens(incoming)
    kept = [(name, value) for name, value in incoming if name.lower() not in dropped]
    assert request_headers(incoming, OURS) == [
        *kept,
        (b"accept-encoding", ACCEPT_ENCODING),
        (b"authorization", OURS),
    ]


@PROPERTY
@given(upstream=headers)
def test_downstream_gets_no_hop_by_hop_field_and_no_stale_framing(
    upstream: list[tuple[bytes, bytes]],
) -> None:
    out = response_headers(upstream)
    names_out = {name for name, _ in out}
    assert all(name == name.lower() for name in names_out)
    assert not names_out & (HOP_BY_HOP | FRAMING | OWN_HEADERS)
    assert not names_out & (connection_tokens(upstream) - {b"date"})


@PROPERTY
@given(upstream=headers)
def test_downstream_gets_every_other_field_and_the_first_date_in_order(
    upstream: list[tuple[bytes, bytes]],
) -> None:
    dropped = HOP_BY_HOP | FRAMING | OWN_HEADERS | connection_tokens(upstream)
    lowered = [(name.lower(), value) for name, value in upstream]
    first_date = next((i for i, (name, _) in enumerate(lowered) if name == b"date"), None)
    kept = [
        (name, value)
        for i, (name, value) in enumerate(lowered)
        if i == first_date or (name != b"date" and name not in dropped)
    ]
    out = response_headers(upstream)
    if first_date is None:
        assert out[:-1] == kept
        assert out[-1][0] == b"date"
    else:
        assert out == kept


@PROPERTY
@given(upstream=headers)
@example(upstream=[(b"date", b"a"), (b"Date", b"b")])
@example(upstream=[(b"connection", b"date"), (b"date", b"a")])
def test_downstream_always_gets_exactly_one_date(upstream: list[tuple[bytes, bytes]]) -> None:
    assert sum(name == b"date" for name, _ in response_headers(upstream)) == 1
