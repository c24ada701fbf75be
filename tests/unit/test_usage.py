from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from zai_proxy.proxy import (
    ApiStyle,
    SSEUsageTracker,
    Usage,
    extract_model,
    is_streaming_request,
    pricing_tier,
    usage_from_json,
)

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
