"""X-Token-Input on every answer to a request the proxy forwards (also its own 429, 502 or
504 once forwarding began), through the real SDKs, against a real proxy.

The upstream's own input count goes in when it is known before the headers; otherwise the
proxy's count of the prompt, made while the upstream worked (X-Token-Input-Source says
which).  The count never holds an answer and never blocks the event loop.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from tests.conftest import StartProxy
from tests.integration.test_forwarding import ProxyHandle
from zai_proxy.proxy import TokenCounter, pricing_tier
from zai_proxy.proxy.forward import INPUT_COUNT_WAIT
from zai_proxy.proxy.tokenizer import InputCount
from zai_proxy.settings import ProxySettings
from zai_proxy.sim.upstream import Fault, SimUpstream

MESSAGES: list[Any] = [{"role": "user", "content": "Explain reverse proxies in one line."}]


def anthropic_client(proxy: ProxyHandle) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=proxy.url, api_key="agent-token", max_retries=0)


def openai_client(proxy: ProxyHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="agent-token", max_retries=0)


def local_count(body: dict[str, Any]) -> int:
    """What the proxy's own count of this request body is."""
    count = TokenCounter().count_request(json.dumps(body).encode())
    assert count is not None
    return count


def input_metric(proxy: ProxyHandle, model: str) -> float | None:
    tier = pricing_tier(datetime.now(UTC))
    return proxy.sample("zai_proxy_tokens_total", direction="input", model=model, pricing_tier=tier)


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "zai_proxy.access"]


async def test_anthropic_answer_carries_the_upstreams_input_count(proxy: ProxyHandle) -> None:
    with trio.fail_after(10):
        raw = await anthropic_client(proxy).messages.with_raw_response.create(
            model="glm-4.6", max_tokens=64, messages=MESSAGES
        )
    message = await raw.parse()
    assert raw.headers["x-token-input"] == str(message.usage.input_tokens)
    assert raw.headers["x-token-input-source"] == "upstream"


async def test_anthropic_stream_carries_the_input_from_message_start(proxy: ProxyHandle) -> None:
    with trio.fail_after(10):
        raw = await anthropic_client(proxy).messages.with_raw_response.create(
            model="glm-4.6", max_tokens=64, messages=MESSAGES, stream=True
        )
        events = [event async for event in await raw.parse()]
    start = events[0]
    assert isinstance(start, anthropic.types.RawMessageStartEvent)
    assert raw.headers["x-token-input"] == str(start.message.usage.input_tokens)
    assert raw.headers["x-token-input-source"] == "upstream"


async def test_openai_answer_carries_the_upstreams_uncached_prompt(proxy: ProxyHandle) -> None:
    with trio.fail_after(10):
        raw = await openai_client(proxy).chat.completions.with_raw_response.create(
            model="glm-4.5", messages=MESSAGES
        )
    usage = raw.parse().usage
    assert usage is not None
    assert raw.headers["x-token-input"] == str(usage.prompt_tokens)
    assert raw.headers["x-token-input-source"] == "upstream"


@pytest.mark.parametrize("include_usage", [False, True])
async def test_openai_stream_carries_the_proxys_count(
    proxy: ProxyHandle, upstream: SimUpstream, include_usage: bool
) -> None:
    # Without stream_options the upstream never reports usage; with them it does, but in
    # the last chunk, long after the headers went.  Either way the header is our count.
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    with trio.fail_after(10):
        raw = await openai_client(proxy).chat.completions.with_raw_response.create(
            model="glm-4.5", messages=MESSAGES, stream=True, **extra
        )
        chunks = [chunk async for chunk in raw.parse()]
    assert chunks and (chunks[-1].usage is not None) is include_usage
    sent = upstream.records[-1].json()
    assert raw.headers["x-token-input"] == str(local_count(sent))
    assert raw.headers["x-token-input-source"] == "estimate"


@pytest.mark.parametrize(
    ("style", "code"), [("anthropic", 400), ("anthropic", 500), ("openai", 404), ("openai", 503)]
)
async def test_an_upstream_error_answer_carries_the_proxys_count(
    proxy: ProxyHandle, upstream: SimUpstream, style: str, code: int
) -> None:
    upstream.script(Fault.status(code))
    with trio.fail_after(10):
        if style == "anthropic":
            with pytest.raises(anthropic.APIStatusError) as anthropic_caught:
                await anthropic_client(proxy).messages.create(
                    model="glm-4.6", max_tokens=64, messages=MESSAGES
                )
            response = anthropic_caught.value.response
        else:
            with pytest.raises(openai.APIStatusError) as openai_caught:
                await openai_client(proxy).chat.completions.create(
                    model="glm-4.5", messages=MESSAGES
                )
            response = openai_caught.value.response
    assert response.status_code == code
    assert response.headers["x-token-input"] == str(local_count(upstream.records[-1].json()))
    assert response.headers["x-token-input-source"] == "estimate"


async def test_the_access_log_says_which_count_the_answer_carried(
    proxy: ProxyHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zai_proxy.access")
    with trio.fail_after(10):
        answer = await anthropic_client(proxy).messages.create(
            model="glm-4.6", max_tokens=64, messages=MESSAGES
        )
        stream = await openai_client(proxy).chat.completions.create(
            model="glm-4.5", messages=MESSAGES, stream=True
        )
        async for _ in stream:
            pass
    await proxy.settled()
    first, second = access_records(caplog)
    assert (first.token_input, first.token_input_source) == (answer.usage.input_tokens, "upstream")
    assert second.token_input_source == "estimate" and second.token_input > 0


async def test_an_upstream_cannot_set_the_token_headers(start_proxy: StartProxy) -> None:
    # The "upstream" here is another zai-proxy, which sets both headers on its answers.
    # The outer one counts nothing itself, and the upstream reports no usage on an OpenAI
    # stream, so any X-Token-Input the client sees would be the inner one's.
    inner = await start_proxy()
    outer = await start_proxy(ZAI_TARGET_URL=inner.url, TOKEN_COUNTING_ENABLED="false")
    body = {"model": "glm-4.5", "stream": True, "messages": MESSAGES}
    async with httpx.AsyncClient(timeout=10) as client:
        direct = await client.post(inner.url + "/v1/chat/completions", json=body)
        relayed = await client.post(outer.url + "/v1/chat/completions", json=body)
    assert direct.headers["x-token-input-source"] == "estimate"
    assert relayed.status_code == 200 and b"[DONE]" in relayed.content
    assert "x-token-input" not in relayed.headers
    assert "x-token-input-source" not in relayed.headers


async def test_a_prompt_is_counted_once_and_its_tokens_recorded_once(
    proxy: ProxyHandle, upstream: SimUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The count made for the header is the one accounting records: not a second count,
    # and not the header's tokens added to the metric's.
    counter = proxy.running.app.counter
    assert counter is not None
    calls: list[bytes] = []
    real = counter.count_request

    def spy(body: bytes) -> int | None:
        calls.append(body)
        return real(body)

    monkeypatch.setattr(counter, "count_request", spy)
    with trio.fail_after(10):
        raw = await openai_client(proxy).chat.completions.with_raw_response.create(
            model="glm-4.5", messages=MESSAGES, stream=True
        )
        async for _ in raw.parse():
            pass
    await proxy.settled()
    assert len(calls) == 1
    assert input_metric(proxy, "glm-4.5") == int(raw.headers["x-token-input"])
    assert proxy.sample("zai_proxy_token_count_duration_seconds_count") == 1


async def test_an_answer_does_not_wait_for_a_count_that_is_not_ready(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Counts stuck in the worker thread: an answer whose upstream reported its input goes
    # without waiting; one that needs our count goes after INPUT_COUNT_WAIT without the
    # headers, the log says why, and accounting still counts it once the thread is free.
    proxy = await start_proxy(TOKEN_ACCURACY_SAMPLE="0")
    caplog.set_level(logging.INFO, logger="zai_proxy")
    counter = proxy.running.app.counter
    assert counter is not None
    release = threading.Event()
    real = counter.count_request

    def stuck(body: bytes) -> int | None:
        release.wait(10)
        return real(body)

    monkeypatch.setattr(counter, "count_request", stuck)
    # Over INLINE_MAX_BYTES, so it is counted in the worker thread, not on the loop.
    big = [{"role": "user", "content": "word " * 20_000}]
    try:
        with trio.fail_after(10):
            raw = await anthropic_client(proxy).messages.with_raw_response.create(
                model="glm-4.6", max_tokens=64, messages=big, stream=True
            )
            async for _ in await raw.parse():
                pass
            started = trio.current_time()
            chat = await openai_client(proxy).chat.completions.with_raw_response.create(
                model="glm-4.5", messages=big, stream=True
            )
            waited = trio.current_time() - started
            async for _ in chat.parse():
                pass
    finally:
        release.set()
    assert raw.headers["x-token-input-source"] == "upstream"
    assert "x-token-input" not in chat.headers and "x-token-input-source" not in chat.headers
    assert INPUT_COUNT_WAIT <= waited < INPUT_COUNT_WAIT + 1
    [note] = [r for r in caplog.records if "not ready" in r.getMessage()]
    assert note.request_id == chat.headers["x-request-id"]
    await proxy.settled()
    *_, record = access_records(caplog)
    assert record.request_id == chat.headers["x-request-id"]
    assert not hasattr(record, "token_input_source")
    assert input_metric(proxy, "glm-4.5") == local_count({"messages": big})


async def test_counting_the_largest_body_leaves_the_event_loop_free() -> None:
    # A body of MAX_BODY_BYTES, counted as forward.py counts it, while another task ticks
    # every 5 ms: the ticks go on throughout (counted on the loop, there would be none
    # for seconds).
    size = ProxySettings(api_key="unused").max_body_bytes
    text = "The proxy counts this prompt while the upstream thinks.\n" * 900
    count = 1 + size // (len(text) + 40)
    body = json.dumps(
        {"model": "glm-4.6", "messages": [{"role": "user", "content": text}] * count}
    ).encode()[:size]
    body = body[: body.rindex(b"}, {")] + b"}]}"
    assert len(body) > size * 0.99
    gaps: list[float] = []
    count_task = InputCount(TokenCounter(), body)

    async def tick(stop: Callable[[], bool]) -> None:
        last = trio.current_time()
        while not stop():
            await trio.sleep(0.005)
            now = trio.current_time()
            gaps.append(now - last)
            last = now

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick, lambda: count_task.done)
            await count_task.run()
    assert count_task.tokens is not None and count_task.tokens > size // 8
    assert len(gaps) > 20
    assert max(gaps) < 0.25, sorted(gaps)[-5:]


# ------------------------------------------------- answers the proxy makes after forwarding


async def test_the_upstreams_last_429_passed_on_carries_the_proxys_count(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(MAX_RETRIES="1", RETRY_BACKOFF_BASE="10ms")
    upstream.script(Fault.status(429, retry_after=0.01), Fault.status(429, retry_after=0.01))
    body = {"model": "glm-4.6", "max_tokens": 64, "messages": MESSAGES}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(proxy.url + "/v1/messages", json=body)
    assert response.status_code == 429 and len(upstream.records) == 2
    assert response.headers["x-token-input"] == str(local_count(body))
    assert response.headers["x-token-input-source"] == "estimate"


async def test_the_limiters_own_429_carries_the_proxys_count(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        RATE_LIMIT_INITIAL="1", RATE_LIMIT_MIN="1", RATE_LIMIT_MAX="1", RATE_LIMIT_MAX_WAIT="0s"
    )
    body = {"model": "glm-4.5", "messages": MESSAGES}
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.post(proxy.url + "/v1/chat/completions", json=body)
        refused = await client.post(proxy.url + "/v1/chat/completions", json=body)
    assert first.status_code == 200
    assert refused.status_code == 429 and "rate_limit" in refused.json()["error"]["type"]
    assert refused.headers["x-token-input"] == str(local_count(body))
    assert refused.headers["x-token-input-source"] == "estimate"


async def test_an_unreachable_upstreams_502_carries_the_proxys_count(
    start_proxy: StartProxy,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proxy = await start_proxy(ZAI_TARGET_URL=dead, MAX_RETRIES="0")
    body = {"model": "glm-4.6", "max_tokens": 64, "messages": MESSAGES}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(proxy.url + "/v1/messages", json=body)
    assert response.status_code == 502
    assert response.headers["x-token-input"] == str(local_count(body))
    assert response.headers["x-token-input-source"] == "estimate"
