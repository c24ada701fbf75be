from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from zai_proxy.errors import BadRequest
from zai_proxy.proxy import (
    ApiStyle,
    SSEUsageTracker,
    Usage,
    extract_model,
    is_streaming_request,
    pricing_tier,
    usage_from_json,
)
from zai_proxy.proxy.body import declared_length

# --------------------------------------------------------------------------------------
# Usage


def test_usage_total_and_merge_keep_the_less_exact_source() -> None:
    a = Usage(input=10, output=5, cache_read=100, cache_write=7)
    b = Usage(input=1, output=2, cache_read=3, cache_write=4, source="estimate")
    merged = a.merge(b)
    assert merged == Usage(input=11, output=7, cache_read=103, cache_write=11, source="estimate")
    assert a.total == 122
    assert a.prompt == 117


# --------------------------------------------------------------------------------------
# Non-streaming JSON


def test_anthropic_json_without_cache_fields() -> None:
    body = b'{"type":"message","usage":{"input_tokens":25,"output_tokens":150}}'
    assert usage_from_json(body, "anthropic") == Usage(input=25, output=150)


def test_anthropic_json_with_cache_fields() -> None:
    body = json.dumps(
        {
            "usage": {
                "input_tokens": 12,
                "output_tokens": 40,
                "cache_read_input_tokens": 9000,
                "cache_creation_input_tokens": 350,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 350,
                    "ephemeral_1h_input_tokens": 0,
                },
            }
        }
    ).encode()
    assert usage_from_json(body, "anthropic") == Usage(
        input=12, output=40, cache_read=9000, cache_write=350
    )


def test_anthropic_nested_cache_creation_used_when_flat_field_is_absent() -> None:
    body = json.dumps(
        {
            "usage": {
                "input_tokens": 3,
                "output_tokens": 4,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 100,
                    "ephemeral_1h_input_tokens": 20,
                },
            }
        }
    ).encode()
    assert usage_from_json(body, "anthropic") == Usage(input=3, output=4, cache_write=120)


def test_openai_json_without_cached_tokens() -> None:
    body = b'{"usage":{"prompt_tokens":100,"completion_tokens":20,"total_tokens":120}}'
    assert usage_from_json(body, "openai") == Usage(input=100, output=20)


def test_openai_json_cached_tokens_are_not_billed_as_input() -> None:
    body = json.dumps(
        {
            "usage": {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 1920},
            }
        }
    ).encode()
    assert usage_from_json(body, "openai") == Usage(input=86, output=300, cache_read=1920)


def test_openai_json_null_details_count_as_no_cache() -> None:
    body = b'{"usage":{"prompt_tokens":7,"completion_tokens":1,"prompt_tokens_details":null}}'
    assert usage_from_json(body, "openai") == Usage(input=7, output=1)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"usage"',
        b"{}",
        b'{"usage": null}',
        b'{"usage": {"input_tokens": null, "output_tokens": null}}',
        b'{"usage": [1]}',
    ],
)
def test_json_without_usage_is_none(body: bytes) -> None:
    assert usage_from_json(body, "anthropic") is None
    assert usage_from_json(body, "openai") is None


def test_negative_float_and_boolean_counts_are_ignored() -> None:
    body = b'{"usage":{"input_tokens":-5,"output_tokens":12,"cache_read_input_tokens":1.5,'
    body += b'"cache_creation_input_tokens":true}}'
    assert usage_from_json(body, "anthropic") == Usage(input=0, output=12)


# --------------------------------------------------------------------------------------
# SSE streams


def _anthropic_stream(
    *, input_tokens: int = 25, cache_read: int = 0, cache_write: int = 0
) -> bytes:
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "role": "assistant",
                    "content": [],
                    "usage": {
                        "input_tokens": input_tokens,
                        "output_tokens": 1,
                        "cache_read_input_tokens": cache_read,
                        "cache_creation_input_tokens": cache_write,
                    },
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "!"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


def _openai_stream() -> bytes:
    chunks = [
        {
            "id": "c1",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
            "usage": None,
        },
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hello"}}], "usage": None},
        {
            "id": "c1",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": None,
        },
        {
            "id": "c1",
            "choices": [],
            "usage": {
                "prompt_tokens": 500,
                "completion_tokens": 9,
                "total_tokens": 509,
                "prompt_tokens_details": {"cached_tokens": 384},
            },
        },
    ]
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
    return body + b"data: [DONE]\n\n"


def test_anthropic_stream_usage_from_message_start_and_message_delta() -> None:
    tracker = SSEUsageTracker("anthropic")
    tracker.feed(_anthropic_stream())
    assert tracker.usage == Usage(input=25, output=15)
    assert tracker.input_known == 25
    assert tracker.saw_message_stop
    assert tracker.complete
    assert tracker.error is None
    assert tracker.events == 8
    assert tracker.malformed == 0


def test_anthropic_stream_reports_cache_tokens() -> None:
    # LiteLLM #5364: streamed cache reads and writes were lost.
    tracker = SSEUsageTracker("anthropic")
    tracker.feed(_anthropic_stream(input_tokens=4, cache_read=12000, cache_write=800))
    assert tracker.usage == Usage(input=4, output=15, cache_read=12000, cache_write=800)


def test_input_known_after_message_start_alone() -> None:
    tracker = SSEUsageTracker("anthropic")
    stream = _anthropic_stream(input_tokens=321)
    tracker.feed(stream[: stream.index(b"event: content_block_start")])
    assert tracker.input_known == 321
    assert tracker.usage == Usage(input=321, output=1)
    assert not tracker.saw_message_stop


def test_message_delta_input_fields_replace_a_placeholder_zero() -> None:
    tracker = SSEUsageTracker("anthropic")
    tracker.feed(
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":0,"output_tokens":0}}}\n\n'
    )
    assert tracker.input_known is None
    tracker.feed(
        b'event: message_delta\ndata: {"type":"message_delta","delta":{},"usage":'
        b'{"input_tokens":700,"output_tokens":42,"cache_read_input_tokens":64}}\n\n'
    )
    assert tracker.input_known == 700
    assert tracker.usage == Usage(input=700, output=42, cache_read=64)


def test_a_later_placeholder_zero_never_erases_a_real_count() -> None:
    # Real count first, placeholder after: only taking the maximum keeps 700 (a
    # "latest wins" rule would pass the 0-then-700 test above and fail this one).
    tracker = SSEUsageTracker("anthropic")
    tracker.feed(
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":700,"output_tokens":1,"cache_read_input_tokens":64,'
        b'"cache_creation_input_tokens":32}}}\n\n'
    )
    tracker.feed(
        b'event: message_delta\ndata: {"type":"message_delta","delta":{},"usage":'
        b'{"input_tokens":0,"output_tokens":42,"cache_read_input_tokens":0,'
        b'"cache_creation_input_tokens":0}}\n\n'
    )
    assert tracker.input_known == 700
    assert tracker.usage == Usage(input=700, output=42, cache_read=64, cache_write=32)


def test_output_tokens_take_the_latest_cumulative_value() -> None:
    tracker = SSEUsageTracker("anthropic")
    for n in (3, 10, 27):
        tracker.feed(
            b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":'
            + str(n).encode()
            + b"}}\n\n"
        )
    assert tracker.usage == Usage(input=0, output=27)


def test_anthropic_stream_without_event_lines_still_read() -> None:
    stream = b"".join(
        line + b"\n" for line in _anthropic_stream().split(b"\n") if not line.startswith(b"event:")
    )
    tracker = SSEUsageTracker("anthropic")
    tracker.feed(stream)
    assert tracker.usage == Usage(input=25, output=15)
    assert tracker.saw_message_stop


def test_openai_stream_final_usage_chunk() -> None:
    tracker = SSEUsageTracker("openai")
    tracker.feed(_openai_stream())
    assert tracker.usage == Usage(input=116, output=9, cache_read=384)
    assert tracker.saw_message_stop
    assert tracker.events == 5


def test_openai_stream_without_usage_reports_none() -> None:
    tracker = SSEUsageTracker("openai")
    tracker.feed(b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\ndata: [DONE]\n\n')
    assert tracker.usage is None
    assert tracker.saw_message_stop


@pytest.mark.parametrize("style", ["anthropic", "openai"])
def test_event_split_across_two_chunks_at_every_offset(style: ApiStyle) -> None:
    stream = _anthropic_stream(cache_read=5) if style == "anthropic" else _openai_stream()
    whole = SSEUsageTracker(style)
    whole.feed(stream)
    for cut in range(len(stream) + 1):
        tracker = SSEUsageTracker(style)
        tracker.feed(stream[:cut])
        tracker.feed(stream[cut:])
        assert (tracker.usage, tracker.events, tracker.saw_message_stop) == (
            whole.usage,
            whole.events,
            True,
        ), cut


def test_stream_fed_one_byte_at_a_time() -> None:
    tracker = SSEUsageTracker("anthropic")
    for byte in _anthropic_stream(cache_write=9):
        tracker.feed(bytes([byte]))
    assert tracker.usage == Usage(input=25, output=15, cache_write=9)


def test_crlf_line_endings() -> None:
    tracker = SSEUsageTracker("anthropic")
    stream = _anthropic_stream(cache_read=77).replace(b"\n", b"\r\n")
    # Split inside a "\r\n" pair, too.
    cut = stream.index(b"\r\n\r\nevent: message_delta") + 1
    tracker.feed(stream[:cut])
    tracker.feed(stream[cut:])
    assert tracker.usage == Usage(input=25, output=15, cache_read=77)
    assert tracker.saw_message_stop


def test_malformed_event_among_good_ones_is_ignored() -> None:
    stream = _anthropic_stream()
    bad = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tok\n\n'
    at = stream.index(b"event: message_delta")
    tracker = SSEUsageTracker("anthropic")
    tracker.feed(stream[:at] + bad + stream[at:])
    assert tracker.usage == Usage(input=25, output=15)
    assert tracker.malformed == 1
    assert tracker.saw_message_stop


def test_oversized_line_is_dropped_with_memory_bounded() -> None:
    cap = 64 * 1024
    tracker = SSEUsageTracker("anthropic", max_line=cap)
    stream = _anthropic_stream()
    at = stream.index(b"event: message_delta")
    tracker.feed(stream[:at])
    tracker.feed(b'event: content_block_delta\ndata: {"type":"content_block_delta","text":"')
    peak = 0
    for _ in range(80):  # 5 MiB without a newline
        tracker.feed(b"x" * 65536)
        peak = max(peak, tracker.buffered_bytes)
    tracker.feed(b'"}\n\n')
    tracker.feed(stream[at:])
    assert peak <= cap
    assert tracker.buffered_bytes == 0
    assert tracker.dropped_lines == 1
    assert tracker.usage == Usage(input=25, output=15)
    assert tracker.saw_message_stop


def test_oversized_line_in_a_single_chunk_is_dropped() -> None:
    tracker = SSEUsageTracker("openai", max_line=1024)
    tracker.feed(b'data: {"usage":{"prompt_tokens":' + b" " * 2000 + b"1}}\n\n")
    tracker.feed(b'data: {"usage":{"prompt_tokens":5,"completion_tokens":6}}\n\n')
    assert tracker.dropped_lines == 1
    assert tracker.usage == Usage(input=5, output=6)


def test_many_data_lines_in_one_event_are_bounded() -> None:
    tracker = SSEUsageTracker("openai", max_line=1024)
    tracker.feed(b"data: 0123456789\n" * 500)
    assert tracker.buffered_bytes <= 1024
    tracker.feed(b"\n")
    assert tracker.buffered_bytes == 0
    assert tracker.events == 1


def test_mid_stream_error_event_is_detected() -> None:
    stream = _anthropic_stream()
    at = stream.index(b"event: content_block_stop")
    tracker = SSEUsageTracker("anthropic")
    tracker.feed(stream[:at])
    tracker.feed(
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )
    assert tracker.error == "overloaded_error"
    assert not tracker.saw_message_stop
    assert tracker.usage == Usage(input=25, output=1)


def test_openai_mid_stream_error_is_detected() -> None:
    tracker = SSEUsageTracker("openai")
    tracker.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
    tracker.feed(b'data: {"error":{"message":"busy","type":"server_error"}}\n\n')
    assert tracker.error == "server_error"


def test_comments_and_unknown_fields_are_ignored() -> None:
    tracker = SSEUsageTracker("anthropic")
    tracker.feed(b": keep-alive\n\nid: 7\nretry: 100\n\n" + _anthropic_stream())
    assert tracker.usage == Usage(input=25, output=15)


def test_finish_handles_a_last_event_without_blank_line() -> None:
    tracker = SSEUsageTracker("openai")
    tracker.feed(b'data: {"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\ndata: [DONE]')
    assert not tracker.saw_message_stop
    tracker.finish()
    assert tracker.saw_message_stop
    assert tracker.usage == Usage(input=3, output=4)


def test_text_capture_collects_anthropic_deltas_up_to_the_cap() -> None:
    tracker = SSEUsageTracker("anthropic", capture_text=100)
    tracker.feed(_anthropic_stream())
    tracker.feed(
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
        b'"delta":{"type":"input_json_delta","partial_json":"{\\"a\\": 1}"}}\n\n'
    )
    assert tracker.text == 'Hi!{"a": 1}'
    small = SSEUsageTracker("anthropic", capture_text=2)
    small.feed(_anthropic_stream())
    assert small.text == "Hi"
    assert small.text_truncated


def test_text_capture_collects_openai_deltas() -> None:
    tracker = SSEUsageTracker("openai", capture_text=1000)
    tracker.feed(_openai_stream())
    assert tracker.text == "Hello"
    assert tracker.usage == Usage(input=116, output=9, cache_read=384)


def test_no_text_is_captured_by_default() -> None:
    tracker = SSEUsageTracker("anthropic")
    tracker.feed(_anthropic_stream())
    assert tracker.text == ""


@pytest.mark.parametrize(
    "chunk",
    [
        b"\xff\xfe\x00garbage\n\n",
        b"data: \xff\xfe\n\n",
        b"event: message_start\ndata: [[[[[[[[\n\n",
        b"event: message_start\ndata: " + b"[" * 100_000 + b"\n\n",
        b"event: message_delta\ndata: 17\n\n",
        b'event: message_start\ndata: {"type":"message_start","message":7}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","usage":"lots"}\n\n',
        b'event: error\ndata: {"type":"error","error":"x"}\n\n',
        b"\n\n\n",
        b"data\n\n",
    ],
)
def test_garbage_never_raises(chunk: bytes) -> None:
    for style in ("anthropic", "openai"):
        tracker = SSEUsageTracker(style)
        tracker.feed(chunk)
        tracker.finish()
        assert tracker.usage is None


# --------------------------------------------------------------------------------------
# Pricing tier


def _utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("when", "tier"),
    [
        # Winter, EST = UTC-5: peak is 07:00-11:00 UTC.
        (_utc(2026, 1, 15, 6, 59), "off_peak"),  # 01:59 EST
        (_utc(2026, 1, 15, 7, 0), "peak"),  # 02:00 EST
        (_utc(2026, 1, 15, 10, 59), "peak"),  # 05:59 EST
        (_utc(2026, 1, 15, 11, 0), "off_peak"),  # 06:00 EST
        # Summer, EDT = UTC-4: peak is 06:00-10:00 UTC.
        (_utc(2026, 7, 15, 5, 59), "off_peak"),  # 01:59 EDT
        (_utc(2026, 7, 15, 6, 0), "peak"),  # 02:00 EDT
        (_utc(2026, 7, 15, 9, 59), "peak"),  # 05:59 EDT
        (_utc(2026, 7, 15, 10, 0), "off_peak"),  # 06:00 EDT
    ],
)
def test_pricing_tier_winter_and_summer(when: datetime, tier: str) -> None:
    assert pricing_tier(when) == tier


@pytest.mark.parametrize(
    ("when", "tier"),
    [
        # 2026-03-08: 02:00 EST jumps to 03:00 EDT; the window is 03:00-06:00 EDT.
        (_utc(2026, 3, 8, 6, 59), "off_peak"),  # 01:59 EST
        (_utc(2026, 3, 8, 7, 0), "peak"),  # 03:00 EDT
        (_utc(2026, 3, 8, 9, 59), "peak"),  # 05:59 EDT
        (_utc(2026, 3, 8, 10, 0), "off_peak"),  # 06:00 EDT
    ],
)
def test_pricing_tier_on_spring_forward_day(when: datetime, tier: str) -> None:
    assert pricing_tier(when) == tier


@pytest.mark.parametrize(
    ("when", "tier"),
    [
        # 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:00-01:59 happens twice.
        (_utc(2026, 11, 1, 5, 59), "off_peak"),  # 01:59 EDT
        (_utc(2026, 11, 1, 6, 0), "off_peak"),  # 01:00 EST (second time)
        (_utc(2026, 11, 1, 6, 59), "off_peak"),  # 01:59 EST
        (_utc(2026, 11, 1, 7, 0), "peak"),  # 02:00 EST
        (_utc(2026, 11, 1, 10, 59), "peak"),  # 05:59 EST
        (_utc(2026, 11, 1, 11, 0), "off_peak"),  # 06:00 EST
    ],
)
def test_pricing_tier_on_fall_back_day(when: datetime, tier: str) -> None:
    assert pricing_tier(when) == tier


def test_pricing_tier_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        pricing_tier(datetime(2026, 1, 15, 3, 0))


# --------------------------------------------------------------------------------------
# Request fields

_PAD = "x" * 200_000  # pushes a body past the 64 KiB head window


def _tool_use_message(model: str) -> dict[str, object]:
    return {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "Task", "input": {"model": model}}],
    }


def test_extract_model_first_key() -> None:
    assert extract_model(b'{"model": "glm-4.6", "messages": []}') == "glm-4.6"


def test_extract_model_ignores_nested_model_when_top_level_follows() -> None:
    body = json.dumps(
        {
            "max_tokens": 10,
            "messages": [_tool_use_message("haiku"), {"role": "user", "content": "hi"}],
            "metadata": {"model": "meta"},
            "model": "glm-4.5-air",
        }
    ).encode()
    assert extract_model(body) == "glm-4.5-air"


def test_extract_model_ignores_nested_model_when_no_top_level_exists() -> None:
    body = json.dumps({"messages": [_tool_use_message("haiku")]}).encode()
    assert extract_model(body) is None


def test_extract_model_large_body_alphabetical_keys() -> None:
    # The Anthropic and OpenAI Python SDKs write keys alphabetically: messages first.
    body = json.dumps(
        {
            "max_tokens": 10,
            "messages": [
                _tool_use_message("haiku"),
                {"role": "user", "content": _PAD},
                _tool_use_message("opus"),
            ],
            "model": "glm-4.6",
            "stream": True,
            "system": [{"type": "text", "text": _PAD}],
            "tools": [{"name": "t", "input_schema": {"properties": {"model": {"type": "string"}}}}],
        }
    ).encode()
    assert len(body) > 256 * 1024
    assert extract_model(body) == "glm-4.6"
    assert is_streaming_request(body)


def test_extract_model_large_body_model_first() -> None:
    body = json.dumps({"model": "glm-4.6", "messages": [{"role": "user", "content": _PAD}]})
    assert extract_model(body.encode()) == "glm-4.6"


def test_extract_model_large_body_with_only_nested_models() -> None:
    body = json.dumps(
        {
            "messages": [
                {"role": "user", "content": _PAD},
                _tool_use_message("haiku"),
                {"role": "user", "content": [{"type": "tool_result", "content": _PAD}]},
            ],
            "metadata": {"model": "deep"},
        }
    ).encode()
    assert extract_model(body) is None


def test_extract_model_escaped_strings() -> None:
    assert extract_model(b'{"model": "glm-\\"4\\"\\u00e9"}') == 'glm-"4"\u00e9'
    # A quoted `"model": "fake"` inside message text is escaped, so never a key.
    text = json.dumps({"messages": [{"role": "user", "content": 'set "model": "fake"'}]})
    assert extract_model(text.encode()) is None
    padded = json.dumps({"messages": [{"content": 'say "model": "fake" ' + _PAD}], "model": "m"})
    assert extract_model(padded.encode()) == "m"


def test_extract_model_string_value_named_model_is_not_a_key() -> None:
    assert extract_model(b'{"kind": "model", "model": "m1"}') == "m1"


@pytest.mark.parametrize(
    "body",
    [b"", b"garbage", b"[]", b'"model"', b'{"model": 5}', b'{"model": null}', b'{"model": "x"'],
)
def test_extract_model_without_a_usable_value_is_none(body: bytes) -> None:
    assert extract_model(body) is None


def test_is_streaming_request_top_level_true_only() -> None:
    assert is_streaming_request(b'{"model":"m","stream":true}')
    assert not is_streaming_request(b'{"model":"m","stream":false}')
    assert not is_streaming_request(b'{"model":"m","stream":"true"}')
    assert not is_streaming_request(b'{"model":"m","metadata":{"stream":true}}')
    assert not is_streaming_request(b'{"model":"m"}')
    assert not is_streaming_request(b"nonsense")


def test_is_streaming_request_large_body_nested_only() -> None:
    body = json.dumps(
        {"messages": [{"role": "user", "content": _PAD}], "metadata": {"stream": True}}
    ).encode()
    assert not is_streaming_request(body)
    body = json.dumps({"messages": [{"role": "user", "content": _PAD}], "stream": True}).encode()
    assert is_streaming_request(body)


# --------------------------------------------------------------------------------------
# More of the usage rules and the stream tracker's edges


def test_by_direction_names_the_four_directions() -> None:
    usage = Usage(input=1, output=2, cache_read=3, cache_write=4)
    assert usage.by_direction() == {"input": 1, "output": 2, "cache_read": 3, "cache_write": 4}


def test_an_estimate_merged_with_a_tiktoken_count_stays_an_estimate() -> None:
    a = Usage(input=1, source="tiktoken")
    b = Usage(output=1, source="estimate")
    assert a.merge(b).source == "estimate"
    assert b.merge(a).source == "estimate"


def test_an_answer_reporting_zero_tokens_is_a_usage_of_zeros() -> None:
    body = b'{"usage":{"input_tokens":0,"output_tokens":0}}'
    assert usage_from_json(body, "anthropic") == Usage()


def test_a_missing_output_count_is_zero_not_one() -> None:
    assert usage_from_json(b'{"usage":{"input_tokens":5}}', "anthropic") == Usage(input=5)


def anthropic_event(name: str | None, data: object) -> bytes:
    head = b"" if name is None else f"event: {name}\n".encode()
    text = data if isinstance(data, str) else json.dumps(data)
    return head + f"data: {text}\n\n".encode()


def fed(style: ApiStyle, *chunks: bytes, **options: int) -> SSEUsageTracker:
    tracker = SSEUsageTracker(style, **options)
    for chunk in chunks:
        tracker.feed(chunk)
    return tracker


def test_a_new_tracker_has_seen_nothing() -> None:
    tracker = SSEUsageTracker("anthropic")
    assert (tracker.usage, tracker.input_known, tracker.error) == (None, None, None)
    assert (tracker.complete, tracker.text_truncated) == (False, False)
    assert (tracker.events, tracker.malformed, tracker.dropped_lines) == (0, 0, 0)
    assert (tracker.text, tracker.buffered_bytes) == ("", 0)


def test_blank_lines_between_events_are_not_events() -> None:
    tracker = fed("anthropic", b"\n\n", _anthropic_stream(), b"\n\n\n")
    assert tracker.events == 8


def test_an_event_line_alone_is_an_event() -> None:
    tracker = fed("anthropic", b"event: message_stop\n\n")
    assert (tracker.events, tracker.complete) == (1, True)


def test_an_event_with_a_name_but_no_data_is_not_malformed() -> None:
    tracker = fed("anthropic", b"event: message_delta\n\n")
    assert (tracker.events, tracker.malformed) == (1, 0)


def test_event_less_anthropic_data_without_usage_is_not_parsed() -> None:
    # Neither the first event nor one after a named event: no keyword, no parse.
    tracker = fed(
        "anthropic",
        b"data: hello\n\n",
        anthropic_event("ping", {"type": "ping"}),
        b"data: {broken\n\n",
    )
    assert (tracker.events, tracker.malformed) == (3, 0)


def test_unwanted_anthropic_events_are_neither_parsed_nor_buffered() -> None:
    tracker = fed("anthropic", b"event: content_block_delta\ndata: {broken\n\n")
    assert tracker.malformed == 0
    tracker.feed(b"event: ping\ndata: " + b"x" * 100 + b"\n")
    assert tracker.buffered_bytes == 0


def test_only_event_lines_name_an_event() -> None:
    tracker = fed("anthropic", b'id: message_stop\ndata: {"type":"ping"}\n\n')
    assert tracker.complete is False


def test_a_bare_colon_is_a_comment() -> None:
    tracker = fed("anthropic", b":\n", _anthropic_stream())
    assert (tracker.malformed, tracker.usage) == (0, Usage(input=25, output=15))


def test_every_malformed_event_is_counted() -> None:
    bad = b'event: message_delta\ndata: {"usage":\n\n'
    assert fed("anthropic", bad, bad).malformed == 2
    bad_openai = b'data: {"usage": {\n\n'
    assert fed("openai", bad_openai, bad_openai).malformed == 2


def test_a_non_object_event_is_malformed_and_the_rest_of_the_chunk_still_read() -> None:
    chunk = anthropic_event("message_delta", [1]) + anthropic_event(
        "message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}}
    )
    tracker = fed("anthropic", chunk)
    assert (tracker.malformed, tracker.usage) == (1, Usage(output=7))


def test_data_lines_of_one_event_are_joined_by_newlines() -> None:
    tracker = fed(
        "anthropic",
        b'event: message_delta\ndata: {"type":"message_delta",\n'
        b'data: "usage":{"output_tokens":3}}\n\n',
    )
    assert tracker.usage == Usage(output=3)


@pytest.mark.parametrize(
    ("chunk", "error"),
    [
        (anthropic_event("error", {"error": {"type": "overloaded_error"}}), "overloaded_error"),
        (anthropic_event(None, {"type": "error", "error": {"type": "api_error"}}), "api_error"),
        (anthropic_event("error", {"type": "error", "error": {"code": "busy"}}), "busy"),
        (anthropic_event("error", {"type": "error", "error": {"code": 429}}), "error"),
        (anthropic_event("error", {"type": "error", "error": {"type": ""}}), "error"),
        (anthropic_event("error", {"type": "error"}), "error"),
        (anthropic_event("error", {"message": "no error key"}), None),
        (
            anthropic_event(
                "message_delta",
                {"type": "message_delta", "error": "x", "usage": {"output_tokens": 3}},
            ),
            None,
        ),
        (anthropic_event(None, {"error": "x", "usage": {"output_tokens": 3}}), None),
    ],
)
def test_anthropic_error_events_name_their_type(chunk: bytes, error: str | None) -> None:
    assert fed("anthropic", chunk).error == error


def block_start(block: dict[str, object]) -> bytes:
    return anthropic_event(
        "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
    )


def block_delta(delta: dict[str, object], named: bool = True) -> bytes:
    data = {"type": "content_block_delta", "index": 0, "delta": delta}
    return anthropic_event("content_block_delta" if named else None, data)


def test_captured_text_includes_block_starts_thinking_and_tool_names() -> None:
    tracker = fed(
        "anthropic",
        block_start({"type": "thinking", "thinking": "Hmm."}),
        block_delta({"type": "thinking_delta", "thinking": " Yes."}),
        block_start({"type": "text", "text": "A"}),
        block_start({"type": "tool_use", "id": "t", "name": "calc", "input": {}}),
        block_delta({"type": "input_json_delta", "partial_json": "{}"}),
        capture_text=100,
    )
    assert tracker.text == "Hmm. Yes.Acalc{}"


def test_event_less_text_deltas_are_captured_too() -> None:
    tracker = fed("anthropic", block_delta({"text": "Hi"}, named=False), capture_text=100)
    assert tracker.text == "Hi"


def test_without_capture_event_less_text_deltas_are_not_parsed() -> None:
    tracker = fed(
        "anthropic",
        b'data: {"type":"content_block_delta" broken\n\n',
        block_delta({"type": "text_delta", "text": "usage"}, named=False),
        anthropic_event(
            None,
            {"type": "content_block_start", "content_block": {"type": "text", "text": "usage"}},
        ),
    )
    assert (tracker.malformed, tracker.text, tracker.text_truncated) == (0, "", False)


def test_a_capture_of_one_character_keeps_one_character() -> None:
    anthropic = fed("anthropic", _anthropic_stream(), capture_text=1)
    assert (anthropic.text, anthropic.text_truncated) == ("H", True)
    event_less = fed("anthropic", block_delta({"text": "Hi"}, named=False), capture_text=1)
    assert event_less.text == "H"
    started = fed("anthropic", block_start({"type": "text", "text": "Hi"}), capture_text=1)
    assert started.text == "H"
    openai = fed("openai", _openai_stream(), capture_text=1)
    assert (openai.text, openai.text_truncated) == ("H", True)


def test_text_that_fits_the_capture_exactly_is_not_truncated() -> None:
    tracker = fed("anthropic", _anthropic_stream(), capture_text=3)
    assert (tracker.text, tracker.text_truncated) == ("Hi!", False)


def test_the_capture_cap_counts_every_piece_captured() -> None:
    tracker = fed(
        "anthropic",
        block_delta({"text": "Hi"}),
        block_delta({"text": "!"}),
        block_delta({"text": "?"}),
        capture_text=3,
    )
    assert (tracker.text, tracker.text_truncated) == ("Hi!", True)


def test_non_text_values_are_not_captured() -> None:
    tracker = fed("anthropic", block_delta({"text": 5}), block_delta({"text": ""}), capture_text=9)
    assert (tracker.text, tracker.malformed, tracker.text_truncated) == ("", 0, False)


def test_openai_capture_takes_reasoning_content_and_tool_calls_and_skips_odd_choices() -> None:
    chunk = {
        "choices": [
            7,
            {"delta": 5},
            {
                "delta": {
                    "reasoning_content": "Think.",
                    "content": "Say.",
                    "tool_calls": [{"function": {"name": "calc", "arguments": "{}"}}],
                }
            },
        ]
    }
    tracker = fed("openai", f"data: {json.dumps(chunk)}\n\n".encode(), capture_text=100)
    assert tracker.text == "Think.Say.calc{}"


def test_without_capture_openai_chunks_without_usage_are_not_parsed() -> None:
    usage_and_text = (
        b'data: {"choices":[{"delta":{"content":"x"}}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    )
    tracker = fed("openai", b"data: {broken\n\n", _openai_stream(), usage_and_text)
    assert (tracker.malformed, tracker.text, tracker.text_truncated) == (0, "", False)


MAX = 16


def data_line(size: int) -> bytes:
    """A `data:` line of exactly `size` bytes, newline excluded."""
    return b"data: " + b"x" * (size - 6) + b"\n"


def test_a_line_of_exactly_max_line_bytes_is_kept_in_one_chunk() -> None:
    assert fed("openai", data_line(MAX), max_line=MAX).dropped_lines == 0
    assert fed("openai", data_line(MAX + 1), max_line=MAX).dropped_lines == 1


def test_a_line_of_exactly_max_line_bytes_is_kept_across_chunks() -> None:
    for size, dropped in ((MAX, 0), (MAX + 1, 1)):
        line = data_line(size)
        # after an earlier line in the same chunk, then completed by the next chunk
        tracker = fed("openai", b": hi\n" + line[:-3], line[-3:], max_line=MAX)
        assert tracker.dropped_lines == dropped, size
        # a partial line whose own chunk already passes the limit
        tracker = fed("openai", b": hi\n" + line[:-1], b"\n", max_line=MAX)
        assert tracker.dropped_lines == dropped, size


def test_data_of_exactly_max_line_bytes_in_one_event_is_kept() -> None:
    # Each data line counts its value plus one (the newline joining it to the next).
    tracker = fed("openai", b"data: 1234567\ndata: 1234567\n", max_line=MAX)
    assert (tracker.dropped_lines, tracker.buffered_bytes) == (0, MAX)
    tracker = fed("openai", b"data: 1234567\ndata: 12345678\n", max_line=MAX)
    assert (tracker.dropped_lines, tracker.buffered_bytes) == (1, 0)


def test_an_event_whose_data_overflowed_is_dropped_whole() -> None:
    usage = b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}\n'
    tracker = fed("openai", b"data: " + b"x" * 40 + b"\n" + usage + b"\n", max_line=64)
    assert (tracker.dropped_lines, tracker.usage) == (1, None)
    tracker = fed("openai", b"data: " + b"x" * 100 + b"\n" + usage + b"\n", max_line=64)
    assert (tracker.dropped_lines, tracker.usage) == (1, None)
    tracker = fed("openai", b"data: " + b"x" * 100, b"\n" + usage + b"\n", max_line=64)
    assert (tracker.dropped_lines, tracker.usage) == (1, None)
    tracker = fed("openai", b"data: " + b"x" * 50, b"x" * 50, b"\n" + usage + b"\n", max_line=64)
    assert (tracker.dropped_lines, tracker.usage) == (1, None)
    tracker = fed("openai", b"data: " + b"x" * 50, b"x" * 50 + b"\n" + usage + b"\n", max_line=64)
    assert (tracker.dropped_lines, tracker.usage) == (1, None)
    two = b"data: " + b"x" * 40 + b"\n"
    tracker = fed("openai", two * 2 + usage + b"\n", max_line=64)
    assert (tracker.dropped_lines, tracker.usage) == (1, None)


def test_every_dropped_line_is_counted() -> None:
    long = b"data: " + b"x" * 100 + b"\n\n"
    assert fed("openai", long, long, max_line=64).dropped_lines == 2
    assert fed("openai", long[:50], long[50:], long[:50], long[50:], max_line=64).dropped_lines == 2
    assert (
        fed(
            "openai", b"x" * 40, b"x" * 40 + b"\n", b"x" * 40, b"x" * 40 + b"\n", max_line=64
        ).dropped_lines
        == 2
    )
    x40 = b"x" * 40
    assert fed("openai", x40, x40, b"\n", x40, x40, b"\n", max_line=64).dropped_lines == 2
    many = b"data: " + x40 + b"\n"
    assert fed("openai", many * 2 + b"\n" + many * 2 + b"\n", max_line=64).dropped_lines == 2


# --------------------------------------------------------------------------------------
# More request fields: the exact small-body rules and the large-body walk


def _compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


_BEYOND_HEAD = "x" * 70_000  # one member that pushes what follows past the 64 KiB head


def test_with_duplicate_keys_the_last_wins_like_json_loads() -> None:
    assert extract_model(b'{"model":"a","model":"b"}') == "b"
    # A body of exactly 64 KiB is still walked to its end.
    template = b'{"model":"a","pad":"%s","model":"b"}'
    body = template % (b"x" * (64 * 1024 - len(template) + 2))
    assert len(body) == 64 * 1024
    assert extract_model(body) == json.loads(body)["model"] == "b"


@pytest.mark.parametrize("trailing", [b"x", b"X", b"\x0c", b"}"])
def test_a_body_with_more_than_whitespace_after_it_has_no_model(trailing: bytes) -> None:
    assert extract_model(b'{"model":"m"}' + trailing) is None


def test_json_whitespace_after_the_body_is_fine() -> None:
    assert extract_model(b'{"model":"m"} \r\n\t') == "m"


def test_a_small_malformed_body_has_no_model_even_if_one_follows() -> None:
    assert extract_model(b'{"a": oops, "model": "m"}') is None


def test_bytes_that_are_not_utf8_elsewhere_do_not_hide_the_model() -> None:
    assert extract_model(b'{"model":"m","x":"\xff"}') == "m"


def test_a_key_that_only_ends_in_an_escaped_quote_and_the_name_is_not_that_name() -> None:
    # `"note \"stream": true` is a member named `note "stream`; past the head, where the
    # body is searched for `"stream":`, the backslash before the quote tells them apart.
    pad = f'{{"pad":"{_BEYOND_HEAD}",'.encode()
    escaped = pad + b'"note \\"stream": true}'
    assert list(json.loads(escaped)) == ["pad", 'note "stream']
    assert not is_streaming_request(escaped)
    both = pad + b'"note \\"stream": true,"stream":true}'
    assert is_streaming_request(both)


def test_a_body_with_many_nested_candidates_falls_back_to_a_full_parse() -> None:
    # Forty nested "model" keys, each walked 64 KiB before it shows it is nested: past
    # a budget of four times the body the rest is left to json.loads.
    body = _compact(
        {
            "pad": _BEYOND_HEAD,
            "messages": [{"model": "nested"} for _ in range(40)],
            "system": _BEYOND_HEAD * 3,
            "model": "m",
            "stream": True,
        }
    )
    assert extract_model(body) == "m"
    assert is_streaming_request(body)
    only_nested = _compact(
        {
            "pad": _BEYOND_HEAD,
            "messages": [{"model": "n"} for _ in range(40)],
            "s": _BEYOND_HEAD * 3,
        }
    )
    assert extract_model(only_nested) is None


def test_a_walk_window_that_cuts_a_character_in_two_still_finds_the_model() -> None:
    body = _compact({"pad": _BEYOND_HEAD, "model": "m", "messages": [{"content": "数" * 40_000}]})
    start = body.index(b'"model"')
    with pytest.raises(UnicodeDecodeError):  # the first 64 KiB window ends mid-character
        body[start : start + 64 * 1024].decode()
    assert extract_model(body) == "m"


def test_a_top_level_model_followed_by_over_a_mebibyte_is_found() -> None:
    body = _compact({"pad": _BEYOND_HEAD, "model": "m", "a": 1, "rest": "y" * (1100 * 1024)})
    assert len(body) > 1024 * 1024 + 70_000
    assert extract_model(body) == "m"


@pytest.mark.parametrize("trailing", [b"x", b"X", b"\x0c"])
def test_a_large_body_with_more_than_whitespace_after_it_has_no_model(trailing: bytes) -> None:
    assert extract_model(_compact({"pad": _BEYOND_HEAD, "model": "m"}) + trailing) is None


def test_whitespace_after_the_body_longer_than_a_walk_window_is_fine() -> None:
    body = _compact({"pad": _BEYOND_HEAD, "model": "m"}) + b"\n" * 70_000
    assert extract_model(body) == "m"


def test_the_request_field_readers_never_raise() -> None:
    assert extract_model(None) is None  # type: ignore[arg-type]
    assert is_streaming_request(None) is False  # type: ignore[arg-type]


def test_the_declared_length_is_the_content_length_header_or_none() -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"123")]
    assert declared_length(headers) == 123
    assert declared_length([(b"content-type", b"application/json")]) is None


def test_a_content_length_that_is_not_a_number_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as caught:
        declared_length([(b"content-length", b"12abc")])
    assert caught.value.message == "Content-Length is not a number"
