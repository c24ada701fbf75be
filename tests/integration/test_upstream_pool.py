"""The upstream connection pool: shards filled in order, slots given back on close."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import UPSTREAM_KEY, StartUpstream
from zai_proxy.proxy import UpstreamTransport
from zai_proxy.sim.upstream import SimUpstream

STREAM = {
    "model": "glm-4.6",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "Tell me a story."}],
}


def _request(upstream: SimUpstream) -> httpx.Request:
    return httpx.Request(
        "POST",
        upstream.url + "/v1/messages",
        headers={"authorization": f"Bearer {UPSTREAM_KEY}"},
        json=STREAM,
    )


async def test_requests_fill_the_first_shard_with_room_and_give_slots_back(
    start_upstream: StartUpstream,
) -> None:
    upstream = await start_upstream(stream_gap=0.05, events_per_stream=20)
    transport = UpstreamTransport(max_connections=10, keepalive_expiry=30.0, shard_size=4)
    try:
        assert transport.loads == [0, 0, 0]
        responses = []
        with trio.fail_after(10):
            for _ in range(10):
                responses.append(await transport.handle_async_request(_request(upstream)))
            assert transport.loads == [4, 4, 2]
            # Closing a response frees its shard's slot; the next request takes it.
            await responses.pop(5).aclose()
            assert transport.loads == [4, 3, 2]
            responses.append(await transport.handle_async_request(_request(upstream)))
            assert transport.loads == [4, 4, 2]
            for response in responses:
                body = await response.aread()
                assert b"message_stop" in body
                await response.aclose()
        assert transport.loads == [0, 0, 0]
        # The connections stay open for reuse: eleven requests, ten connections.
        assert upstream.active_connections == 10
        assert upstream.total_requests == 11
    finally:
        await transport.aclose()


async def test_a_failed_request_gives_its_slot_back() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there now: the connect fails.
    transport = UpstreamTransport(max_connections=4, keepalive_expiry=30.0, shard_size=2)
    try:
        request = httpx.Request("GET", f"http://127.0.0.1:{port}/")
        try:
            await transport.handle_async_request(request)
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("the connect should have failed")
        assert transport.loads == [0, 0]
    finally:
        await transport.aclose()
