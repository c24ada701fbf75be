"""The upstream key never appears in anything the proxy produces for WebSocket sessions:
handshake answers, messages, close reasons, refusals, metrics or log lines."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from tests.conftest import UPSTREAM_KEY, StartProxy, StartUpstream
from zai_proxy.logs import JsonFormatter
from zai_proxy.sim.upstream import Fault


async def test_key_appears_in_no_handshake_message_close_refusal_metric_or_log_line(
    start_upstream: StartUpstream, start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(
        upstream, MAX_WEBSOCKETS="1", UPSTREAM_CONNECT_TIMEOUT="300ms", LOG_LEVEL="debug"
    )
    url = proxy.origin.replace("http://", "ws://") + "/v1/realtime?model=m"
    produced: list[str] = []
    caller = [(b"authorization", b"Bearer sk-caller"), (b"x-api-key", b"sk-caller")]

    async def refused(path: str = "/v1/realtime") -> None:
        target = proxy.origin.replace("http://", "ws://") + path
        with trio.fail_after(5), pytest.raises(ConnectionRejected) as caught:
            async with open_websocket_url(target, extra_headers=caller):
                pass
        produced.append(repr(caught.value.headers) + repr(caught.value.body))

    async def closing(command: dict[str, object]) -> None:
        async with open_websocket_url(url, extra_headers=caller) as ws:
            produced.append(repr(ws.handshake_headers))
            await ws.send_message(json.dumps(command))
            try:
                while True:
                    produced.append(repr(await ws.get_message()))
            except ConnectionClosed as closed:
                produced.append(repr(closed.reason))

    with caplog.at_level(logging.DEBUG), trio.fail_after(20):
        async with open_websocket_url(url, extra_headers=caller, subprotocols=["realtime"]) as ws:
            produced.append(repr(ws.handshake_headers))
            await ws.send_message(json.dumps({"type": "response.create"}))
            while '"response.done"' not in (message := await ws.get_message()):
                produced.append(repr(message))
            await ws.send_message(b"\x00binary")
            produced.append(repr(await ws.get_message()))
            await refused()  # 503: the one session allowed is open
            await ws.aclose(4000, "client says bye")
        await proxy.settled()
        await closing({"type": "sim.close", "code": 4003, "reason": "upstream says bye"})
        await closing({"type": "sim.drop"})
        await proxy.settled()
        for fault in (Fault.status(401), Fault.status(403), Fault.status(429), Fault.hang()):
            upstream.script(fault)
            await refused()  # relayed 401, 403, 429; 504 for the hang
        await refused("/v1/../realtime")  # 400
        await proxy.settled()
        async with httpx.AsyncClient(timeout=10) as client:
            for path in ("/metrics", "/health"):
                response = await client.get(proxy.origin + path)
                produced.append(repr(response.headers.raw) + response.text)
    # Formatted without the redacting safety net, so a leak can't be hidden by it.
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert sum("websocket session" in line for line in lines) == 9
    assert len(produced) >= 15
    for text in lines + produced:
        assert UPSTREAM_KEY not in text
    # ... and the upstream did get it, on every handshake.
    assert len(upstream.realtime) == 7
    assert all(r.header("authorization") == f"Bearer {UPSTREAM_KEY}" for r in upstream.realtime)
