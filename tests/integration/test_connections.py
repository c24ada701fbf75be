"""No single connection can take a server down; HTTP/2 in cleartext is a supported way in.

hypercorn accepts HTTP/2 with prior knowledge (h2c) on the HTTP port, so it is tested as
a protocol agents may use: the SDKs work over it, streams included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import h2.config
import h2.connection
import httpx
import httpx2
import trio

from tests.conftest import ProxyHandle, StartProxy, StartUpstream
from zai_proxy.dashboard import RunningDashboard, serve_dashboard
from zai_proxy.settings import DashboardSettings

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello."}]


async def send_h2c_request_with_a_non_ascii_path(port: int) -> None:
    """What once ended the whole process: hypercorn could not decode this :path."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (b":method", b"GET"),
            (b":path", b"/v1/\xff\xfe"),
            (b":scheme", b"http"),
            (b":authority", b"proxy"),
        ],
        end_stream=True,
    )
    await stream.send_all(conn.data_to_send())
    # The connection is closed on us; nothing else should notice.
    with trio.fail_after(5):
        while await stream.receive_some():
            pass
    await stream.aclose()


async def test_a_connection_hypercorn_cannot_handle_does_not_stop_the_proxy(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(await start_upstream(stream_gap=0.05))
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="agent", max_retries=0)
    with trio.fail_after(10):
        async with client.messages.stream(
            model="glm-4.6", max_tokens=64, messages=MESSAGES
        ) as stream:
            # A stream is in flight on another connection when the bad one arrives.
            first = await anext(aiter(stream.text_stream))
            await send_h2c_request_with_a_non_ascii_path(proxy.running.port)
            rest = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert first + rest == final.content[0].text  # type: ignore[union-attr]
    async with httpx.AsyncClient(timeout=5) as plain:
        assert (await plain.get(proxy.origin + "/healthz")).status_code == 200


async def test_a_connection_hypercorn_cannot_handle_does_not_stop_the_dashboard(
    nursery: trio.Nursery, proxy: ProxyHandle, tmp_path: Path
) -> None:
    settings = DashboardSettings(
        scrape_targets=(proxy.origin + "/metrics",),
        scrape_interval=0.2,
        scrape_timeout=0.15,
        listen_host="127.0.0.1",
        listen_port=0,
        db_path=str(tmp_path / "dashboard.db"),
    )
    stop = trio.Event()
    running: RunningDashboard = await nursery.start(serve_dashboard, settings, stop)
    await send_h2c_request_with_a_non_ascii_path(running.port)
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(running.url + "/healthz")).status_code == 200
    stop.set()


async def test_the_anthropic_sdk_works_over_h2c_streams_included(proxy: ProxyHandle) -> None:
    # The SDK brings its own httpx fork; prior-knowledge HTTP/2 is http1=False.
    transport = httpx2.AsyncClient(http1=False, http2=True, timeout=10)
    client = anthropic.AsyncAnthropic(
        base_url=proxy.url, api_key="agent", max_retries=0, http_client=transport
    )
    with trio.fail_after(10):
        message = await client.messages.create(model="glm-4.6", max_tokens=64, messages=MESSAGES)
        async with client.messages.stream(
            model="glm-4.6", max_tokens=64, messages=MESSAGES
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
    assert message.usage.output_tokens > 0 and text
    response = await transport.get(proxy.origin + "/healthz")
    assert response.http_version == "HTTP/2"
    await transport.aclose()
