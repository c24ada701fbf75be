"""Slow and stalled clients: none may hold a worker slot for ever.

With MAX_WORKERS=1, one stalled client would otherwise turn every other request into a
503.  A client that sends part of its body and stalls gets 408 after
CLIENT_BODY_TIMEOUT; a client that stops reading its answer is disconnected after one
write stalls for CLIENT_WRITE_TIMEOUT.  Either way the slot is free again.
"""

from __future__ import annotations

import json
import socket

import httpx
import trio

from tests.conftest import ProxyHandle, StartProxy, StartUpstream

MESSAGE = {"model": "glm-4.6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
# An answer far larger than the socket buffers on both sides (about 10 MB), which a
# client that reads nothing leaves the proxy unable to write.
BIG = {**MESSAGE, "max_tokens": 2_000_000}


async def served_after(proxy: ProxyHandle) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(proxy.url + "/v1/messages", json=MESSAGE)


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def test_a_client_that_stalls_mid_body_gets_408_and_frees_its_slot(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(MAX_WORKERS="1", CLIENT_BODY_TIMEOUT="500ms")
    body = json.dumps(MESSAGE).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.running.port)
    await stream.send_all(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
    )
    started = trio.current_time()
    with trio.fail_after(5):
        answer = await read_all(stream)
    waited = trio.current_time() - started
    await stream.aclose()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(payload)["error"]["type"] == "timeout_error"
    assert 0.4 <= waited < 3
    assert (await served_after(proxy)).status_code == 200


async def stall_on(proxy: ProxyHandle, request: dict[str, object]) -> trio.SocketStream:
    """Send `request` from a client with a tiny receive buffer that never reads."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", proxy.running.port))
    stalled = trio.SocketStream(sock)
    body = json.dumps(request).encode()
    await stalled.send_all(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    return stalled


async def wait_until_served(proxy: ProxyHandle) -> None:
    """The slot is taken until the write deadline passes; then a request is served."""
    while (response := await served_after(proxy)).status_code != 200:
        assert response.status_code == 503
        await trio.sleep(0.1)


async def test_a_client_that_stops_reading_a_stream_is_cut_off_and_frees_its_slot(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream(answer_words=1_500_000, events_per_stream=400)
    proxy = await start_proxy(upstream, MAX_WORKERS="1", CLIENT_WRITE_TIMEOUT="500ms")
    stalled = await stall_on(proxy, {**BIG, "stream": True})
    with trio.fail_after(15):
        await upstream.wait_for(lambda s: s.total_requests >= 1)
        await wait_until_served(proxy)
        await proxy.settled()
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="write_error") == 1
    assert (
        proxy.sample(
            "zai_proxy_requests_total", method="POST", path="/v1/messages", status_code="499"
        )
        == 1
    )
    await stalled.aclose()


async def test_a_client_that_never_reads_a_large_answer_frees_its_slot(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream(answer_words=1_500_000)
    proxy = await start_proxy(upstream, MAX_WORKERS="1", CLIENT_WRITE_TIMEOUT="500ms")
    stalled = await stall_on(proxy, BIG)
    with trio.fail_after(15):
        await upstream.wait_for(lambda s: s.total_requests >= 1)
        await wait_until_served(proxy)
    await stalled.aclose()
