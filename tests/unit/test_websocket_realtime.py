"""The pure parts of WebSocket sessions: Realtime events' usage and model, close-code labels."""

from __future__ import annotations

import json

import pytest

from zai_proxy.proxy import (
    MAX_EVENT_CHARS,
    RealtimeEvents,
    Usage,
    close_code_label,
    model_from_query,
    realtime_usage,
)


def done(usage: object) -> str:
    return json.dumps({"type": "response.done", "event_id": "e1", "response": {"usage": usage}})


def test_cached_tokens_are_taken_out_of_input_and_counted_as_cache_reads() -> None:
    usage = {
        "total_tokens": 150,
        "input_tokens": 120,
        "output_tokens": 30,
        "input_token_details": {"cached_tokens": 64, "text_tokens": 120, "audio_tokens": 0},
    }
    assert realtime_usage(usage) == Usage(input=56, output=30, cache_read=64)


def test_the_responses_api_spelling_of_the_details_is_read_too() -> None:
    usage = {"input_tokens": 10, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 4}}
    assert realtime_usage(usage) == Usage(input=6, output=2, cache_read=4)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, None),
        ([], None),
        ({}, None),
        ({"input_tokens": True, "output_tokens": None}, None),
        ({"input_tokens": -1, "output_tokens": "3"}, None),
        ({"output_tokens": 7}, Usage(output=7)),
        ({"input_tokens": 9}, Usage(input=9)),
        # More cached than input is nonsense: capped, input never negative.
        ({"input_tokens": 5, "input_token_details": {"cached_tokens": 8}}, Usage(cache_read=5)),
        ({"input_tokens": 5, "input_token_details": {"cached_tokens": 1.5}}, Usage(input=5)),
    ],
)
def test_bad_or_partial_usage_is_read_as_far_as_it_goes(
    usage: object, expected: Usage | None
) -> None:
    assert realtime_usage(usage) == expected


def test_only_response_done_reports_usage_and_responses_are_counted() -> None:
    events = RealtimeEvents()
    assert events.feed(json.dumps({"type": "response.created", "response": {}})) is None
    # The name inside an event is not the event.
    delta = {"type": "response.output_text.delta", "delta": "response.done"}
    assert events.feed(json.dumps(delta)) is None
    created = {"type": "response.created", "response": {"usage": {"input_tokens": 1}}}
    assert events.feed(json.dumps({**created, "note": "response.done"})) is None
    assert events.feed(done({"input_tokens": 3, "output_tokens": 4})) == Usage(input=3, output=4)
    assert events.feed(done(None)) is None  # a response without usage is still a response
    assert events.responses == 2


@pytest.mark.parametrize(
    "text",
    ["not json", "[1, 2]", '"response.done"', '{"type": "response.done", "response": 3}', "{"],
)
def test_malformed_events_are_skipped_without_raising(text: str) -> None:
    events = RealtimeEvents()
    assert events.feed(text) is None
    assert events.responses == 0


def test_an_event_over_the_size_cap_is_not_parsed() -> None:
    padded = done({"input_tokens": 3, "output_tokens": 4})[:-1] + ', "pad": "'
    big = padded + "x" * MAX_EVENT_CHARS + '"}'
    assert json.loads(big)["type"] == "response.done"
    assert RealtimeEvents().feed(big) is None


def test_the_model_comes_from_the_session_events_unless_the_url_named_one() -> None:
    created = json.dumps({"type": "session.created", "session": {"model": "glm-realtime"}})
    updated = json.dumps({"type": "session.updated", "session": {"model": "glm-realtime-2"}})
    events = RealtimeEvents()
    assert events.feed(created) is None
    assert events.model == "glm-realtime"
    events.feed(updated)
    assert events.model == "glm-realtime"  # the first name stands
    named = RealtimeEvents("from-the-url")
    named.feed(created)
    assert named.model == "from-the-url"
    nameless = RealtimeEvents()
    nameless.feed(json.dumps({"type": "session.created", "session": {"model": 5}}))
    assert nameless.model is None


@pytest.mark.parametrize(
    ("query", "model"),
    [
        (b"model=gpt-realtime", "gpt-realtime"),
        (b"x=1&model=glm%2Drealtime", "glm-realtime"),
        (b"model=", None),
        (b"", None),
        (b"other=1", None),
        (b"model=" + b"m" * 1000, "m" * 256),
    ],
)
def test_the_model_of_a_url_query(query: bytes, model: str | None) -> None:
    assert model_from_query(query) == model


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (1000, "1000"),
        (1001, "1001"),
        (1006, "1006"),
        (1011, "1011"),
        (1015, "1015"),
        (1004, "other"),
        (3000, "other"),
        (4001, "other"),
        (999, "other"),
    ],
)
def test_close_code_labels_are_the_defined_codes_or_other(code: int, label: str) -> None:
    assert close_code_label(code) == label
