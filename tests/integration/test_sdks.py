"""The real `anthropic` and `openai` SDKs, pointed at the proxy with a throwaway token."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
import trio

from tests.conftest import StartProxy, StartUpstream
from tests.integration.test_forwarding import ProxyHandle
from zai_proxy.sim.upstream import Fault, SimUpstream

MESSAGES: list[Any] = [{"role": "user", "content": "Explain reverse proxies in one line."}]


def anthropic_client(proxy: ProxyHandle) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=proxy.url, api_key="agent-token", max_retries=0)


async def test_anthropic_sdk_creates_a_message(proxy: ProxyHandle, upstream: SimUpstream) -> None:
    client = anthropic_client(proxy)
    with trio.fail_after(10):
        message = await client.messages.create(model="glm-4.6", max_tokens=128, messages=MESSAGES)
    assert message.type == "message" and message.model == "glm-4.6"
    assert isinstance(message.content[0], anthropic.types.TextBlock)
    assert message.usage.output_tokens > 0
    assert upstream.records[-1].target == "/api/anthropic/v1/messages"


async def test_anthropic_sdk_streams_through_the_proxy(proxy: ProxyHandle) -> None:
    client = anthropic_client(proxy)
    cached: Any = [{"type": "text", "text": "y" * 800, "cache_control": {"type": "ephemeral"}}]
    with trio.fail_after(10):
        async with client.messages.stream(
            model="glm-4.6", max_tokens=128, messages=MESSAGES, system=cached
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert text and isinstance(final.content[0], anthropic.types.TextBlock)
    assert final.content[0].text == text
    assert final.usage.cache_creation_input_tokens == 200


async def test_anthropic_sdk_raises_a_clear_error_for_a_broken_stream(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.die_mid_stream(after=3))
    client = anthropic_client(proxy)
    with trio.fail_after(10), pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model="glm-4.6", max_tokens=128, messages=MESSAGES
        ) as stream:
            async for _ in stream.text_stream:
                pass
    assert "interrupted" in str(caught.value)


@pytest.mark.parametrize("after", [0, 1, 3])
async def test_anthropic_sdk_raises_an_api_error_when_the_stream_dies_inside_an_event(
    proxy: ProxyHandle, upstream: SimUpstream, after: int
) -> None:
    # The upstream dies halfway through a data: line. The half event never reaches the
    # client, so the SDK reads our error event as one and raises its API error (not a
    # JSONDecodeError from half an event glued to ours).
    upstream.script(Fault.cut_mid_event(after=after))
    client = anthropic_client(proxy)
    with trio.fail_after(10), pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model="glm-4.6", max_tokens=128, messages=MESSAGES
        ) as stream:
            async for _ in stream:
                pass
    assert "interrupted" in str(caught.value)


async def test_openai_sdk_raises_an_api_error_when_the_stream_dies_inside_a_chunk(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.cut_mid_event(after=2))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="agent-token", max_retries=0)
    with trio.fail_after(10), pytest.raises(openai.APIError) as caught:
        stream = await client.chat.completions.create(
            model="glm-4.6", messages=MESSAGES, stream=True
        )
        async for _ in stream:
            pass
    assert "interrupted" in str(caught.value)


async def test_anthropic_sdk_gets_a_502_for_an_answer_that_cannot_be_decoded(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(*[Fault.bad_gzip()] * 4)
    client = anthropic_client(proxy)
    with trio.fail_after(10), pytest.raises(anthropic.APIStatusError) as caught:
        await client.messages.create(model="glm-4.6", max_tokens=16, messages=MESSAGES)
    assert caught.value.status_code == 502
    assert upstream.total_requests == 4  # retried like any cut-off answer


async def test_anthropic_sdk_raises_an_api_error_when_a_gzip_stream_goes_bad(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.bad_gzip(after=2))
    client = anthropic_client(proxy)
    with trio.fail_after(10), pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model="glm-4.6", max_tokens=128, messages=MESSAGES
        ) as stream:
            async for _ in stream:
                pass
    assert "interrupted" in str(caught.value)
    await proxy.settled()
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="read_error") == 1
    assert (
        proxy.sample(
            "zai_proxy_requests_total", method="POST", path="/v1/messages", status_code="502"
        )
        == 1
    )


async def test_anthropic_sdk_sees_503_as_overloaded(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(upstream, MAX_WORKERS="1")
    upstream.script(Fault.hang())
    client = anthropic_client(proxy)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: client.messages.create(model="glm-4.6", max_tokens=16, messages=MESSAGES)
        )
        with trio.fail_after(5):
            await upstream.wait_for(lambda s: s.requests_in_flight >= 1)
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model="glm-4.6", max_tokens=16, messages=MESSAGES)
        nursery.cancel_scope.cancel()
    assert caught.value.status_code == 503
    assert "capacity" in caught.value.message


async def test_openai_sdk_completes_and_streams(proxy: ProxyHandle) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="agent-token", max_retries=0)
    with trio.fail_after(10):
        completion = await client.chat.completions.create(model="glm-4.6", messages=MESSAGES)
        stream = await client.chat.completions.create(
            model="glm-4.6",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert "".join(pieces).strip()
    assert usage is not None and usage.completion_tokens > 0


async def test_openai_sdk_gets_an_openai_shaped_proxy_error(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(upstream, MAX_BODY_BYTES="50")
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="agent-token", max_retries=0)
    with trio.fail_after(10), pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="glm-4.6", messages=MESSAGES)
    assert caught.value.status_code == 413
    assert "limit" in caught.value.message
