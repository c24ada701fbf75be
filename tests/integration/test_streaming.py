"""Streams: relayed chunk by chunk, cancelled with the client, broken streams end well."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import ProxyHandle, StartProxy, StartUpstream
from zai_proxy.sim.upstream import Fault, SimUpstream

STREAM = {
    "model": "glm-4.6",
    "max_tokens": 256,
    "stream": True,
    "messages": [{"role": "user", "content": "Tell me a story."}],
}


def parse_events(raw: bytes) -> list[tuple[str | None, dict[str, object] | str]]:
    events: list[tuple[str | None, dict[str, object] | str]] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name = None
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip().decode())
        if data:
            text = "\n".join(data)
            try:
                events.append((name, json.loads(text)))
            except ValueError:
                events.append((name, text))
    return events


async def test_events_arrive_as_they_are_sent(
    autojump_clock: trio.testing.MockClock, start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # On virtual time an event 5 s apart upstream must arrive exactly 5 s apart: a proxy
    # that coalesced or buffered would deliver them together at the end.
    upstream = await start_upstream(stream_gap=5.0, events_per_stream=6)
    proxy = await start_proxy(upstream)
    arrivals: list[tuple[float, bytes]] = []
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream("POST", proxy.url + "/v1/messages", json=STREAM) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                arrivals.append((trio.current_time(), chunk))
    start = arrivals[0][0]
    offsets = [round(t - start, 6) for t, _ in arrivals]
    assert len(arrivals) >= 8
    assert offsets == [5.0 * i for i in range(len(arrivals))]


async def test_small_heartbeats_are_not_held_back(
    autojump_clock: trio.testing.MockClock, start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # A gateway reading in fixed 8 KiB chunks held tiny `ping` events for minutes.
    upstream = await start_upstream(stream_gap=30.0, events_per_stream=2)
    proxy = await start_proxy(upstream)
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream("POST", proxy.url + "/v1/messages", json=STREAM) as response:
            chunks = response.aiter_raw()
            first = await anext(chunks)
            started = trio.current_time()
            second = await anext(chunks)
            assert trio.current_time() - started == 30.0
    assert b"message_start" in first
    assert len(second) < 200


async def test_anthropic_stream_is_complete_and_usage_counted(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/messages", json=STREAM) as response:
            raw = await response.aread()
    names = [name for name, _ in parse_events(raw)]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    start = parse_events(raw)[0][1]
    assert isinstance(start, dict)
    input_tokens = start["message"]["usage"]["input_tokens"]  # type: ignore[index]
    assert response.headers["x-token-input"] == str(input_tokens)
    await proxy.settled()
    value = proxy.sample(
        "zai_proxy_tokens_total", direction="input", model="glm-4.6", pricing_tier=_tier()
    )
    assert value == input_tokens


def _tier() -> str:
    from datetime import UTC, datetime

    from zai_proxy.proxy import pricing_tier

    return pricing_tier(datetime.now(UTC))


async def test_client_going_away_cancels_the_upstream_request(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream(stream_gap=0.2, events_per_stream=50)
    proxy = await start_proxy(upstream)
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/messages", json=STREAM) as response:
            await anext(response.aiter_raw())
    # The client hung up after the first chunk; the upstream must see its stream dropped
    # long before the 10 s it would have run, and the worker slot must be free again.
    with trio.fail_after(3):
        await upstream.wait_for(lambda s: s.cancelled_streams >= 1)
    await proxy.settled()
    assert proxy.running.app.in_flight == 0
    assert (
        proxy.sample(
            "zai_proxy_requests_total", method="POST", path="/v1/messages", status_code="499"
        )
        == 1
    )
    # The answer was being written when the client went.
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="write_error") == 1


async def test_client_going_away_while_waiting_frees_the_slot(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.hang())
    async with httpx.AsyncClient(timeout=10) as client:
        with trio.move_on_after(0.3):
            await client.post(proxy.url + "/v1/messages", json={**STREAM, "stream": False})
    with trio.fail_after(3):
        await upstream.wait_for(lambda s: s.client_disconnects >= 1)
    await proxy.settled()
    assert proxy.running.app.in_flight == 0
    # Nothing had been written to the client: no write error.
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="write_error") == 0


async def test_upstream_dying_mid_stream_ends_with_an_error_event(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    # LiteLLM #32086: such a stream became an empty 200 with no error event.
    upstream.script(Fault.die_mid_stream(after=3))
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/messages", json=STREAM) as response:
            raw = await response.aread()
    assert response.status_code == 200
    events = parse_events(raw)
    assert events[0][0] == "message_start"
    name, data = events[-1]
    assert name == "error"
    assert isinstance(data, dict) and data["type"] == "error"
    assert data["error"]["type"] == "api_error"  # type: ignore[index]
    assert raw.endswith(b"\n\n")
    await proxy.settled()
    requests = "zai_proxy_requests_total"
    assert proxy.sample(requests, method="POST", path="/v1/messages", status_code="502") == 1
    assert proxy.sample(requests, method="POST", path="/v1/messages", status_code="200") is None
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="read_error") == 1


async def test_stream_closed_cleanly_before_its_end_is_an_error_too(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    # The chunked body ends properly, but message_stop never came: still a broken answer.
    upstream.script(Fault.stop_mid_stream(after=3))
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/messages", json=STREAM) as response:
            raw = await response.aread()
    events = parse_events(raw)
    assert [name for name, _ in events[:-1]] != [] and "message_stop" not in raw.decode()
    name, data = events[-1]
    assert name == "error" and isinstance(data, dict) and data["type"] == "error"
    await proxy.settled()
    requests = "zai_proxy_requests_total"
    assert proxy.sample(requests, method="POST", path="/v1/messages", status_code="502") == 1
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="read_error") == 1


async def test_openai_stream_dying_midway_ends_with_an_openai_error_chunk(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.die_mid_stream(after=2))
    body = {
        "model": "glm-4.6",
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a story."}],
    }
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/chat/completions", json=body) as response:
            raw = await response.aread()
    assert response.status_code == 200
    events = parse_events(raw)
    assert events[0][1]["object"] == "chat.completion.chunk"  # type: ignore[index]
    name, data = events[-1]
    # OpenAI streams have no event names: the error is a data-only chunk, as OpenAI sends.
    assert name is None and isinstance(data, dict)
    assert data["error"]["type"] == "server_error"  # type: ignore[index]
    assert b"[DONE]" not in raw and raw.endswith(b"\n\n")
    await proxy.settled()
    requests = "zai_proxy_requests_total"
    assert (
        proxy.sample(requests, method="POST", path="/v1/chat/completions", status_code="502") == 1
    )


async def test_error_event_inside_a_stream_counts_as_an_error(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    # LiteLLM #24004: mid-stream `error` events logged as success.
    upstream.script(Fault.error_mid_stream(after=3))
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/messages", json=STREAM) as response:
            raw = await response.aread()
    assert [name for name, _ in parse_events(raw)][-1] == "error"
    await proxy.settled()
    requests = "zai_proxy_requests_total"
    assert proxy.sample(requests, method="POST", path="/v1/messages", status_code="529") == 1
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="stream_error_event") == 1


async def test_a_stream_cut_at_the_shutdown_deadline_ends_with_an_error_event(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream(stream_gap=0.5, events_per_stream=40)
    proxy = await start_proxy(upstream, SHUTDOWN_TIMEOUT="1s")
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/messages", json=STREAM) as response:
            chunks = response.aiter_raw()
            body = await anext(chunks)
            proxy.stop.set()
            # The connection closes at the deadline, so the chunked body ends unfinished;
            # what counts is that an error event came before it.
            with trio.fail_after(10), pytest.raises(httpx.RemoteProtocolError):
                async for chunk in chunks:
                    body += chunk
    assert b"event: message_stop" not in body
    assert body.endswith(b"\n\n") and b"event: error" in body.rsplit(b"\n\n", 2)[-2]
    assert b"stopped before the stream ended" in body
    assert (
        proxy.sample(
            "zai_proxy_requests_total", method="POST", path="/v1/messages", status_code="503"
        )
        == 1
    )
