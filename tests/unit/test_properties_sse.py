"""Properties of relaying whole SSE events: however the upstream cuts its stream, every
byte goes out once and in order, a run passed on ends where an event ends, and what is
held back stays bounded."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from zai_proxy.proxy import WholeEvents

# Deterministic and database-free, so CI runs the same examples every time.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150)

CR, LF = 0x0D, 0x0A


def blank_line_ends(stream: bytes) -> tuple[set[int], set[int]]:
    """Where a blank line ends, by the SSE spec's line ends (CRLF, LF or CR): all of
    them, and those that end an event with at least one line in it.  A CR counts as a
    line end at once; the LF of a CRLF adds nothing."""
    ends, event_ends = {0}, set()
    line_empty, after_cr, event_has_lines = True, False, False
    for index, byte in enumerate(stream):
        if byte == LF and after_cr:
            after_cr = False
            if index in ends:
                ends.add(index + 1)
            if index in event_ends:
                event_ends.add(index + 1)
        elif byte in (CR, LF):
            if line_empty:
                ends.add(index + 1)
                if event_has_lines:
                    event_ends.add(index + 1)
                event_has_lines = False
            else:
                event_has_lines = True
            line_empty, after_cr = True, byte == CR
        else:
            line_empty, after_cr = False, False
    return ends, event_ends


streams = st.lists(
    st.one_of(
        st.sampled_from([b"data: {}", b"event: x", b": ping", b"data:", b"\xe2\x82\xac"]),
        st.binary(max_size=6),
    ).flatmap(
        lambda line: st.sampled_from([b"\n", b"\r\n", b"\r", b""]).map(lambda end: line + end)
    ),
    max_size=16,
).map(b"".join)


@st.composite
def uniform_streams(draw: st.DrawFn) -> bytes:
    """Streams as the APIs send them: one kind of line end throughout."""
    end = draw(st.sampled_from([b"\n", b"\r\n"]))
    lines = st.sampled_from([b"data: {}", b"event: x", b": ping", b"data: \xe2\x82\xac"])
    events = draw(st.lists(st.lists(lines, max_size=4), max_size=6))
    return b"".join(b"".join(line + end for line in event) + end for event in events)


@st.composite
def cuts(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def assert_no_complete_event_is_held_back(chunks: list[bytes]) -> None:
    stream = b"".join(chunks)
    _, event_ends = blank_line_ends(stream)
    relay = WholeEvents()
    sent = received = 0
    for chunk in chunks:
        sent += len(relay.take(chunk))
        received += len(chunk)
        # A CR at the end of what arrived may be the first half of a CRLF.
        settled = received - (received > 0 and stream[received - 1] == CR)
        assert sent >= max((end for end in event_ends if end <= settled), default=0)


@PROPERTY
@given(chunks=streams.flatmap(cuts), limit=st.sampled_from([4, 16, 1 << 20]))
def test_every_byte_goes_out_once_in_order_and_held_bytes_stay_bounded(
    chunks: list[bytes], limit: int
) -> None:
    relay = WholeEvents(limit)
    sent = b""
    for chunk in chunks:
        sent += relay.take(chunk)
        assert relay.pending <= limit
    assert sent + relay.finish() == b"".join(chunks)


@PROPERTY
@given(chunks=streams.flatmap(cuts))
def test_what_goes_out_ends_where_a_blank_line_ends(chunks: list[bytes]) -> None:
    ends, _ = blank_line_ends(b"".join(chunks))
    relay = WholeEvents()
    sent = 0
    for chunk in chunks:
        sent += len(relay.take(chunk))
        assert sent in ends
    assert relay.abandon() == b""


@PROPERTY
@given(chunks=uniform_streams().flatmap(cuts))
def test_a_complete_event_is_never_held_back(chunks: list[bytes]) -> None:
    assert_no_complete_event_is_held_back(chunks)


@PROPERTY
@given(chunks=streams.flatmap(cuts))
@example(chunks=[b"a\n\r\n"])
def test_a_complete_event_is_never_held_back_whatever_its_line_ends(chunks: list[bytes]) -> None:
    assert_no_complete_event_is_held_back(chunks)
