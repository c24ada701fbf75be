"""Relaying whole SSE events: a client never holds half of one."""

from __future__ import annotations

import pytest

from zai_proxy.proxy import WholeEvents

STREAM = (
    b'event: message_start\ndata: {"type":"message_start"}\n\n'
    b": ping\n\n"
    b'event: content_block_delta\ndata: {"delta":{"text":"hi"}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def relay(chunks: list[bytes], events: WholeEvents) -> list[bytes]:
    return [events.take(chunk) for chunk in chunks]


def test_whole_events_go_out_the_moment_they_arrive() -> None:
    events = WholeEvents()
    assert relay([STREAM], events) == [STREAM]
    assert events.pending == 0 and events.finish() == b""


def test_a_partial_event_waits_for_its_end() -> None:
    events = WholeEvents()
    cut = STREAM.index(b"hi")
    out = relay([STREAM[:cut], STREAM[cut:]], events)
    assert out[0] == STREAM[: STREAM.index(b"event: content_block_delta")]
    assert b"".join(out) == STREAM


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_split_gives_back_the_same_bytes_in_whole_events(size: int) -> None:
    events = WholeEvents()
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    out = relay(chunks, events)
    assert b"".join(out) + events.finish() == STREAM
    for piece in out:
        assert piece == b"" or piece.endswith(b"\n\n")


@pytest.mark.parametrize("boundary", [b"\r\n\r\n", b"\r\r"])
def test_every_blank_line_form_ends_an_event(boundary: bytes) -> None:
    events = WholeEvents()
    one = b"data: 1" + boundary
    assert events.take(one + b"data: 2") == one
    assert events.take(boundary) == b"data: 2" + boundary


def test_a_heartbeat_is_not_held_behind_nothing() -> None:
    events = WholeEvents()
    assert events.take(b": ping\n\n") == b": ping\n\n"


def test_a_broken_stream_drops_the_partial_event() -> None:
    events = WholeEvents()
    out = events.take(b'data: {"a":1}\n\ndata: {"trunc')
    assert out == b'data: {"a":1}\n\n'
    assert events.abandon() == b""
    assert events.pending == 0


def test_a_clean_end_passes_on_a_last_event_without_its_blank_line() -> None:
    events = WholeEvents()
    assert events.take(b"data: [DONE]") == b""
    assert events.finish() == b"data: [DONE]"


def test_an_oversized_partial_event_is_passed_on_and_a_blank_line_owed() -> None:
    events = WholeEvents(limit=16)
    big = b"data: " + b"x" * 20
    assert events.take(big) == big
    assert events.pending == 0 and events.mid_event
    # Broken here: our error event must start on a fresh event.
    assert events.abandon() == b"\n\n"


def test_after_an_oversized_event_ends_whole_events_resume() -> None:
    events = WholeEvents(limit=16)
    events.take(b"data: " + b"x" * 20)
    assert events.take(b"yy\n\ndata: next") == b"yy\n\n"
    assert not events.mid_event
    assert events.abandon() == b""


@pytest.mark.parametrize("blank", [b"\n\r\n", b"\r\n\n", b"\n\r", b"\r\r\n"])
def test_mixed_line_ends_make_a_blank_line_too(blank: bytes) -> None:
    events = WholeEvents()
    event = b"data: 1" + blank
    assert events.take(event + b"data: 2") == event


def test_the_lf_of_a_crlf_split_after_its_cr_goes_out_at_once() -> None:
    events = WholeEvents()
    assert events.take(b"data: 1\r\n\r") == b"data: 1\r\n\r"
    assert events.take(b"\n") == b"\n"
    assert events.take(b"data: 2\r\n\r\n") == b"data: 2\r\n\r\n"


def test_a_fresh_relay_is_not_inside_an_event() -> None:
    events = WholeEvents()
    assert events.mid_event is False
    assert events.take(b"data: 1") == b""
    assert events.abandon() == b""


def test_a_line_end_at_the_start_of_a_fresh_stream_is_held_with_its_event() -> None:
    events = WholeEvents()
    assert events.take(b"\ndata: 1") == b""
    assert events.pending == len(b"\ndata: 1")


def test_a_blank_line_at_the_start_of_a_fresh_stream_goes_out_at_once() -> None:
    events = WholeEvents()
    assert events.take(b"\n\ndata: x") == b"\n\n"
    assert events.pending == len(b"data: x")


def test_the_lf_of_a_split_crlf_goes_out_alone_before_the_next_event() -> None:
    events = WholeEvents()
    events.take(b"data: 1\r\n\r")
    assert events.take(b"\ndata: 2") == b"\n"
    assert events.pending == len(b"data: 2")


def test_the_lf_of_a_split_crlf_goes_out_with_the_event_it_precedes() -> None:
    events = WholeEvents()
    events.take(b"data: 1\r\n\r")
    assert events.take(b"\ndata: 2\n\n") == b"\ndata: 2\n\n"


def test_a_cr_inside_an_event_makes_no_lf_after_it_go_out_early() -> None:
    events = WholeEvents()
    assert events.take(b"data: 1\r") == b""
    assert events.take(b"\n") == b""
    assert events.pending == len(b"data: 1\r\n")


def test_a_line_end_after_a_lf_boundary_waits_for_its_event() -> None:
    events = WholeEvents()
    assert events.take(b"data: 1\n\n") == b"data: 1\n\n"
    assert events.take(b"\ndata: 2") == b""


def test_after_an_oversized_event_a_leading_lf_waits_with_the_rest() -> None:
    events = WholeEvents(limit=4)
    events.take(b"data: 12345\r")
    assert events.take(b"\nx") == b""
    assert events.pending == 2


def test_an_oversized_event_still_open_still_owes_its_blank_line() -> None:
    events = WholeEvents(limit=16)
    events.take(b"data: " + b"x" * 20)
    assert events.take(b"yy") == b""
    assert events.mid_event is True
    assert events.abandon() == b"\n\n"


def test_the_end_of_an_oversized_event_clears_the_flag_to_false() -> None:
    events = WholeEvents(limit=16)
    events.take(b"data: " + b"x" * 20)
    events.take(b"\n\n")
    assert events.mid_event is False


def test_a_partial_event_of_exactly_the_limit_is_held() -> None:
    events = WholeEvents(limit=8)
    assert events.take(b"data: 12") == b""
    assert events.pending == 8 and events.mid_event is False


def test_a_partial_event_one_byte_over_the_limit_is_passed_on() -> None:
    events = WholeEvents(limit=8)
    assert events.take(b"data: 123") == b"data: 123"
    assert events.pending == 0 and events.mid_event is True


def test_nothing_is_held_after_a_clean_end() -> None:
    events = WholeEvents()
    events.take(b"data: [DONE]")
    events.finish()
    assert events.pending == 0
    assert events.finish() == b""
