"""Properties of the SSE usage tracker: what it reads from a stream does not depend on
how the stream is cut into chunks, any bytes are survived, and memory stays bounded."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from zai_proxy.proxy import ApiStyle, SSEUsageTracker, Usage

# Deterministic and database-free, so CI runs the same examples every time.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=100)

counts = st.integers(0, 2**40)
# Generated text: multi-byte UTF-8, quotes and backslashes, newlines (escaped in JSON).
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['"', "\\", '\\"', "\n", "\r\n", "é", "€", "😀", "data: x", "[DONE]"]),
)


@dataclass(frozen=True)
class Stream:
    style: ApiStyle
    body: bytes
    usage: Usage
    text: str
    error: str | None


def sse(events: list[tuple[str | None, object]], newline: bytes) -> bytes:
    out = b""
    for name, data in events:
        if name == ":":
            out += b": keep-alive" + newline + newline
            continue
        if name is not None:
            out += b"event: " + name.encode() + newline
        payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        out += b"data: " + payload.encode() + newline + newline
    return out


@st.composite
def anthropic_streams(draw: st.DrawFn) -> Stream:
    start = {
        "input_tokens": draw(counts),
        "output_tokens": draw(st.integers(0, 5)),
        "cache_read_input_tokens": draw(counts),
        "cache_creation_input_tokens": draw(counts),
    }
    output = draw(counts)
    deltas = draw(st.lists(texts, max_size=6))
    events: list[tuple[str | None, object]] = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "usage": start}}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
    ]
    for text in deltas:
        if draw(st.booleans()):
            events.append(("ping", {"type": "ping"}) if draw(st.booleans()) else (":", None))
        delta = {"type": "text_delta", "text": text}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    error = draw(st.sampled_from([None, "overloaded_error", "api_error"]))
    if error is not None:
        events.append(("error", {"type": "error", "error": {"type": error, "message": "x"}}))
    # The cumulative counts again, a placeholder 0 for input as some upstreams send.
    final = {
        "input_tokens": draw(st.sampled_from([0, start["input_tokens"]])),
        "output_tokens": output,
    }
    events.append(("message_delta", {"type": "message_delta", "delta": {}, "usage": final}))
    events.append(("message_stop", {"type": "message_stop"}))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    usage = Usage(
        input=start["input_tokens"],
        output=max(output, start["output_tokens"]),
        cache_read=start["cache_read_input_tokens"],
        cache_write=start["cache_creation_input_tokens"],
    )
    return Stream("anthropic", sse(events, newline), usage, "".join(deltas), error)


@st.composite
def openai_streams(draw: st.DrawFn) -> Stream:
    deltas = draw(st.lists(texts, max_size=6))
    events: list[tuple[str | None, object]] = []
    for text in deltas:
        if draw(st.booleans()):
            events.append((":", None))
        choice = {"index": 0, "delta": {"content": text}}
        events.append((None, {"id": "c", "choices": [choice], "usage": None}))
    error = draw(st.sampled_from([None, "server_error"]))
    if error is not None:
        events.append((None, {"error": {"type": error, "message": "x"}}))
    prompt, cached, completion = draw(counts), draw(counts), draw(counts)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    events.append((None, {"id": "c", "choices": [], "usage": usage}))
    events.append((None, "[DONE]"))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    read = min(cached, prompt)
    expected = Usage(input=prompt - read, output=completion, cache_read=read, cache_write=0)
    return Stream("openai", sse(events, newline), expected, "".join(deltas), error)


streams = st.one_of(anthropic_streams(), openai_streams())


@st.composite
def cuts(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """`body` cut anywhere: often right after a CR or inside a multi-byte character."""
    awkward = [i + 1 for i, byte in enumerate(body) if byte == 0x0D or byte >= 0x80]
    if draw(st.integers(0, 9)) == 0:
        return [body[i : i + 1] for i in range(len(body))]
    index = st.integers(0, len(body))
    if awkward:
        index = st.one_of(index, st.sampled_from(awkward))
    points = sorted(draw(st.lists(index, max_size=12)))
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def read(
    style: ApiStyle, chunks: list[bytes], max_line: int = 1 << 20, capture: int = 10_000
) -> SSEUsageTracker:
    tracker = SSEUsageTracker(style, capture_text=capture, max_line=max_line)
    for chunk in chunks:
        tracker.feed(chunk)
        assert tracker.buffered_bytes <= 2 * max_line
    tracker.finish()
    return tracker


def outcome(tracker: SSEUsageTracker) -> tuple[object, ...]:
    return (
        tracker.usage,
        tracker.input_known,
        tracker.complete,
        tracker.error,
        tracker.text,
        tracker.events,
        tracker.malformed,
        tracker.dropped_lines,
        tracker.text_truncated,
    )


@PROPERTY
@given(stream=streams)
def test_a_whole_stream_reports_its_usage_text_and_end(stream: Stream) -> None:
    tracker = read(stream.style, [stream.body])
    assert tracker.usage == stream.usage
    assert tracker.input_known == (stream.usage.input or None)
    assert tracker.complete
    assert tracker.error == stream.error
    assert tracker.text == stream.text
    assert tracker.malformed == 0


# Capturing no text, some (then truncated) or all of it reads different events.
captures = st.sampled_from([0, 5, 10_000])


@PROPERTY
@given(data=st.data(), stream=streams, capture=captures)
def test_how_a_stream_is_cut_changes_nothing(
    data: st.DataObject, stream: Stream, capture: int
) -> None:
    chunks = data.draw(cuts(stream.body))
    assert b"".join(chunks) == stream.body
    whole = read(stream.style, [stream.body], capture=capture)
    assert outcome(read(stream.style, chunks, capture=capture)) == outcome(whole)


@PROPERTY
@given(data=st.data(), stream=streams, max_line=st.integers(16, 400), capture=captures)
def test_how_a_stream_is_cut_changes_nothing_when_lines_are_dropped(
    data: st.DataObject, stream: Stream, max_line: int, capture: int
) -> None:
    chunks = data.draw(cuts(stream.body))
    whole = read(stream.style, [stream.body], max_line, capture)
    assert outcome(read(stream.style, chunks, max_line, capture)) == outcome(whole)


garbage = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.lists(
            st.sampled_from(
                [
                    *(b"\n", b"\r\n", b"\r", b"data: ", b"data:", b"event: ", b":", b"{", b"}"),
                    *(b'"usage":', b'"error":', b"[DONE]", b"message_stop", b"message_start"),
                    *(b'{"type":"message_delta","usage":{"output_tokens":7}}', b"\xe2\x82"),
                ]
            ),
            max_size=12,
        ).map(b"".join),
    ),
    max_size=10,
).map(b"".join)
styles = st.sampled_from(["anthropic", "openai"])


@settings(PROPERTY, max_examples=150)
@given(style=styles, body=garbage, data=st.data(), max_line=st.sampled_from([8, 64, 1 << 20]))
def test_any_bytes_are_read_within_bounded_memory_without_the_safety_net(
    style: ApiStyle, body: bytes, data: st.DataObject, max_line: int
) -> None:
    tracker = SSEUsageTracker(style, capture_text=100, max_line=max_line)
    for chunk in data.draw(cuts(body)):
        # `feed` swallows what `_feed` raises; that net must never be what catches.
        tracker._feed(chunk)
        assert tracker.buffered_bytes <= 2 * max_line
    tracker.finish()
    assert tracker.usage is None or tracker.usage.total >= 0


@settings(PROPERTY, max_examples=150)
@given(style=styles, body=garbage, data=st.data(), max_line=st.sampled_from([8, 64, 1 << 20]))
def test_how_any_bytes_are_cut_changes_nothing(
    style: ApiStyle, body: bytes, data: st.DataObject, max_line: int
) -> None:
    chunks = data.draw(cuts(body))
    assert outcome(read(style, chunks, max_line)) == outcome(read(style, [body], max_line))
