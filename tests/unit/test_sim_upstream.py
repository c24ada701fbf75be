"""The simulated upstream speaks the real wire formats and plays its faults."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from zai_proxy.sim.upstream import Fault, SimUpstream, UpstreamConfig

KEY = "sk-sim-test"
FAST = UpstreamConfig(api_key=KEY, latency=0.0, stream_gap=0.0)
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about reverse proxies, please."}]
BODY: dict[str, Any] = {"model": "glm-4.6", "max_tokens": 256, "messages": MESSAGES}


async def start(nursery: trio.Nursery, config: UpstreamConfig = FAST) -> SimUpstream:
    upstream = SimUpstream(config)
    await nursery.start(upstream.serve)
    return upstream


def http_client(upstream: SimUpstream) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {KEY}"}
    return httpx.AsyncClient(base_url=upstream.url, headers=headers, timeout=5)


async def test_anthropic_sdk_reads_a_message(nursery: trio.Nursery) -> None:
    upstream = await start(nursery)
    client = anthropic.AsyncAnthropic(base_url=upstream.url, auth_token=KEY, max_retries=0)
    with trio.fail_after(5):
        message = await client.messages.create(model="glm-4.6", max_tokens=256, messages=MESSAGES)
    assert message.id.startswith("msg_")
    assert message.model == "glm-4.6"
    assert message.stop_reason == "end_turn"
    assert isinstance(block := message.content[0], anthropic.types.TextBlock)
    assert message.usage.output_tokens == len(block.text.split()) == 24
    assert message.usage.input_tokens == 10  # 38 characters / 4, rounded up
    assert upstream.records[0].header("authorization") == f"Bearer {KEY}"


async def test_anthropic_sdk_streams_with_cache_usage(nursery: trio.Nursery) -> None:
    upstream = await start(nursery)
    client = anthropic.AsyncAnthropic(base_url=upstream.url, auth_token=KEY, max_retries=0)
    cached = {"type": "ephemeral"}
    system: list[Any] = [{"type": "text", "text": "x" * 400, "cache_control": cached}]
    finals = []
    for _ in range(2):
        with trio.fail_after(5):
            async with client.messages.stream(
                model="glm-4.6", max_tokens=256, messages=MESSAGES, system=system
            ) as stream:
                streamed = "".join([text async for text in stream.text_stream])
                finals.append(await stream.get_final_message())
        assert isinstance(block := finals[-1].content[0], anthropic.types.TextBlock)
        assert block.text == streamed
    first, second = (final.usage for final in finals)
    assert (first.cache_creation_input_tokens, first.cache_read_input_tokens) == (100, 0)
    assert (second.cache_creation_input_tokens, second.cache_read_input_tokens) == (0, 100)
    assert first.input_tokens == second.input_tokens == 10
    assert first.output_tokens == 24


async def test_openai_sdk_gets_usage_in_body_and_stream(nursery: trio.Nursery) -> None:
    upstream = await start(nursery)
    client = openai.AsyncOpenAI(base_url=upstream.url + "/v1", api_key=KEY, max_retries=0)
    with trio.fail_after(5):
        completion = await client.chat.completions.create(model="glm-4.6", messages=MESSAGES)
        chunks = await client.chat.completions.create(
            model="glm-4.6",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usages = [], []
        async for chunk in chunks:
            pieces += [choice.delta.content or "" for choice in chunk.choices]
            usages += [chunk.usage] if chunk.usage else []
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 24)
    assert len("".join(pieces).split()) == 24
    assert [(u.prompt_tokens, u.completion_tokens, u.total_tokens) for u in usages] == [
        (10, 24, 34)
    ]


async def test_scripted_429_carries_retry_after_then_succeeds(nursery: trio.Nursery) -> None:
    upstream = await start(nursery)
    upstream.script(Fault.status(429, retry_after=2))
    async with http_client(upstream) as client:
        with trio.fail_after(5):
            limited = await client.post("/v1/messages", json=BODY)
            answered = await client.post("/v1/messages", json=BODY)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert answered.status_code == 200
    assert upstream.rate_limited == 1


async def test_hidden_limit_rejects_requests_above_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    config = UpstreamConfig(api_key=KEY, latency=0.0, hidden_limit=2.0, hidden_limit_burst=2)
    upstream = await start(nursery, config)
    async with http_client(upstream) as client:
        with trio.fail_after(5):
            burst = [(await client.post("/v1/messages", json=BODY)).status_code for _ in range(4)]
            await trio.sleep(0.5)  # one token back at 2 requests/s
            later = await client.post("/v1/messages", json=BODY)
    assert burst == [200, 200, 429, 429]
    assert later.status_code == 200
    assert upstream.hidden_limit_hits == 2


async def test_die_mid_stream_leaves_the_chunked_body_incomplete(nursery: trio.Nursery) -> None:
    upstream = await start(nursery)
    upstream.script(Fault.die_mid_stream(after=2))
    received = b""
    async with http_client(upstream) as client:
        with trio.fail_after(5), pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("POST", "/v1/messages", json=BODY | {"stream": True}) as r:
                async for chunk in r.aiter_raw():
                    received += chunk
    assert received.startswith(b"event: message_start\n")
    assert received.count(b"\n\n") == 2


async def test_wrong_key_gets_authentication_error(nursery: trio.Nursery) -> None:
    upstream = await start(nursery)
    client = anthropic.AsyncAnthropic(base_url=upstream.url, auth_token="wrong", max_retries=0)
    with trio.fail_after(5), pytest.raises(anthropic.AuthenticationError):
        await client.messages.create(model="glm-4.6", max_tokens=256, messages=MESSAGES)


async def test_client_leaving_mid_stream_is_counted(nursery: trio.Nursery) -> None:
    upstream = await start(nursery)
    async with http_client(upstream) as client:
        with trio.fail_after(5):
            headers = {"x-sim-fault": "slow;delay=0;gap=60"}
            body = BODY | {"stream": True}
            async with client.stream("POST", "/v1/messages", json=body, headers=headers) as r:
                first = await r.aiter_raw().__anext__()
            await upstream.wait_for(lambda up: up.cancelled_streams == 1)
    assert first.startswith(b"event: message_start\n")
    assert upstream.records[0].outcome == "disconnected"


def test_fault_header_syntax() -> None:
    assert Fault.parse("429;retry-after=2") == Fault.status(429, retry_after=2)
    assert Fault.parse("die_mid_stream;after=3") == Fault.die_mid_stream(after=3)
    assert Fault.parse("slow;delay=0.5") == Fault.slow(delay=0.5)
    assert Fault.parse("empty-stream") == Fault.empty_stream()
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault.parse("explode")
