"""WebSocket sessions through the proxy, over real sockets: the simulator's realtime
endpoint upstream, trio-websocket clients in front."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from tests.conftest import UPSTREAM_KEY, ProxyHandle, StartProxy, StartUpstream
from zai_proxy.proxy import pricing_tier
from zai_proxy.sim.upstream import Fault, RealtimeRecord, SimUpstream

MODEL = "glm-rt-test"


def ws_url(proxy: ProxyHandle, path: str = "/v1/realtime", query: str = f"model={MODEL}") -> str:
    """`path` as a client sends it to the proxy (the base path is optional, as for HTTP)."""
    return proxy.origin.replace("http://", "ws://", 1) + path + (f"?{query}" if query else "")


@asynccontextmanager
async def session(
    proxy: ProxyHandle,
    *,
    path: str = "/v1/realtime",
    query: str = f"model={MODEL}",
    subprotocols: list[str] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    greeted: bool = True,
) -> AsyncIterator[WebSocketConnection]:
    """A client session through the proxy; with `greeted`, past the upstream's
    session.created."""
    async with open_websocket_url(
        ws_url(proxy, path, query),
        subprotocols=subprotocols,
        extra_headers=headers,
        connect_timeout=5,
        disconnect_timeout=5,
        max_message_size=64 * 1024 * 1024,
    ) as ws:
        if greeted:
            with trio.fail_after(5):
                first = await ws.get_message()
            assert isinstance(first, str) and json.loads(first)["type"] == "session.created"
        yield ws


async def closed_upstream(upstream: SimUpstream) -> RealtimeRecord:
    """The last session, once the simulator has seen it end."""
    with trio.fail_after(5):
        await upstream.wait_for(lambda u: u.realtime_open == 0 and u.realtime[-1].close is not None)
    return upstream.realtime[-1]


async def rejected(proxy: ProxyHandle, **options: Any) -> ConnectionRejected:
    with trio.fail_after(5), pytest.raises(ConnectionRejected) as caught:
        async with session(proxy, greeted=False, **options):
            pass
    return caught.value


async def close_of(ws: WebSocketConnection) -> tuple[int, str | None]:
    """Read until the session closes; the code and reason it closed with."""
    with trio.fail_after(5):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                assert closed.reason is not None
                return closed.reason.code, closed.reason.reason


def header(headers: tuple[tuple[bytes, bytes], ...], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key.lower() == name), None)


def sessions_ended(proxy: ProxyHandle, code: str) -> float:
    return proxy.sample("zai_proxy_websocket_sessions_total", close_code=code) or 0.0


# -- messages ---------------------------------------------------------------------------


async def test_text_and_binary_messages_flow_both_ways_as_sent(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    sent: list[str | bytes] = ["hello", b"\x00\x01\xff", "héllo, wörld", b"", "x" * 100_000]
    async with session(proxy) as ws:
        with trio.fail_after(5):
            for message in sent:
                await ws.send_message(message)
                echo = await ws.get_message()
                assert echo == message and type(echo) is type(message)
    record = await closed_upstream(upstream)
    assert record.received == sent
    assert all(type(a) is type(b) for a, b in zip(record.received, sent, strict=True))


async def test_the_callers_credentials_are_dropped_and_the_key_set_upstream(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    caller = "sk-caller-own-token"
    headers = [
        (b"authorization", f"Bearer {caller}".encode()),
        (b"x-api-key", caller.encode()),
        (b"x-custom", b"kept"),
        (b"openai-beta", b"realtime=v1"),
    ]
    offered = ["realtime", f"openai-insecure-api-key.{caller}"]
    async with session(proxy, headers=headers, subprotocols=offered) as ws:
        assert ws.subprotocol == "realtime"
    record = await closed_upstream(upstream)
    assert record.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert record.header("x-api-key") is None
    assert record.header("x-custom") == "kept"
    assert record.header("openai-beta") == "realtime=v1"
    assert record.subprotocols == ["realtime"]
    assert not any(caller in value for _, value in record.headers)


async def test_subprotocols_are_offered_as_sent_and_the_upstreams_choice_is_the_clients(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    async with session(proxy, subprotocols=["x-first", "realtime"]) as ws:
        assert ws.subprotocol == "realtime"  # the simulator prefers it; not the first
    assert (await closed_upstream(upstream)).subprotocols == ["x-first", "realtime"]
    async with session(proxy, subprotocols=["only-this"]) as ws:
        assert ws.subprotocol == "only-this"
    async with session(proxy) as ws:
        assert ws.subprotocol is None
    assert (await closed_upstream(upstream)).subprotocols == []


async def test_the_path_rule_and_the_query_are_https(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    for path in ("/v1/realtime", "/api/anthropic/v1/realtime"):
        async with session(proxy, path=path, query="model=m&x=1"):
            pass
        assert (await closed_upstream(upstream)).target == "/api/anthropic/v1/realtime?model=m&x=1"
    refused = await rejected(proxy, path="/v1/%2e%2e/realtime")
    assert refused.status_code == 400
    assert len(upstream.realtime) == 2


async def test_the_upstreams_handshake_headers_reach_the_client(proxy: ProxyHandle) -> None:
    async with session(proxy) as ws:
        assert header(ws.handshake_headers, b"x-sim-session") is not None
        request_id = header(ws.handshake_headers, b"x-request-id")
        assert request_id is not None and request_id.startswith(b"req_")


# -- closing ----------------------------------------------------------------------------


async def test_a_client_close_code_and_reason_reach_the_upstream(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    async with session(proxy) as ws:
        await ws.aclose(4001, "client is done")
    record = await closed_upstream(upstream)
    assert (record.close, record.closed_by) == ((4001, "client is done"), "client")
    async with session(proxy) as ws:
        await ws.aclose(1000)
    assert (await closed_upstream(upstream)).close == (1000, None)
    await proxy.settled()
    assert sessions_ended(proxy, "other") == 1
    assert sessions_ended(proxy, "1000") == 1


async def test_an_upstream_close_code_and_reason_reach_the_client(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    async with session(proxy) as ws:
        await ws.send_message(json.dumps({"type": "sim.close", "code": 4002, "reason": "bye"}))
        assert await close_of(ws) == (4002, "bye")
    async with session(proxy) as ws:
        await ws.send_message(json.dumps({"type": "sim.close", "code": 1012}))
        assert await close_of(ws) == (1012, None)
    await proxy.settled()
    assert sessions_ended(proxy, "other") == 1
    assert sessions_ended(proxy, "1012") == 1


async def test_a_client_that_goes_away_closes_the_upstream_at_once(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    with trio.CancelScope() as scope:
        async with session(proxy):
            # Cancelled, trio-websocket drops the connection without a close frame.
            scope.cancel()
    with trio.fail_after(1):
        record = await closed_upstream(upstream)
    assert record.close == (1001, "the client went away")
    await proxy.settled()
    assert sessions_ended(proxy, "1006") == 1


async def test_an_upstream_that_drops_closes_the_client_at_once(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    async with session(proxy) as ws:
        await ws.send_message(json.dumps({"type": "sim.drop"}))
        with trio.fail_after(1):
            assert await close_of(ws) == (1011, "the upstream connection was lost")
    await proxy.settled()
    assert sessions_ended(proxy, "1006") == 1


async def test_a_proxy_shutdown_closes_both_sides_with_1001(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    async with session(proxy) as ws:
        proxy.stop.set()
        assert await close_of(ws) == (1001, "zai-proxy is shutting down")
    assert (await closed_upstream(upstream)).close == (1001, "zai-proxy is shutting down")


async def test_pings_are_answered_on_both_hops(proxy: ProxyHandle, upstream: SimUpstream) -> None:
    async with session(proxy) as ws:
        with trio.fail_after(5):
            await ws.ping(b"from the client")
            await ws.send_message(json.dumps({"type": "sim.ping"}))
            pong = await ws.get_message()
    assert isinstance(pong, str) and json.loads(pong)["type"] == "sim.pong"


# -- refusals and limits ------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error_type"), [(403, "permission_error"), (429, None)])
async def test_a_refused_handshake_is_relayed_as_its_http_status(
    proxy: ProxyHandle,
    upstream: SimUpstream,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    error_type: str | None,
) -> None:
    recorded: list[bool] = []
    gate = proxy.running.app.limiter
    record = gate.record
    monkeypatch.setattr(gate, "record", lambda t, at: (recorded.append(t), record(t, at)))
    upstream.script(Fault.status(status, retry_after=7))
    refused = await rejected(proxy)
    assert refused.status_code == status
    assert header(refused.headers, b"retry-after") == b"7"
    assert refused.body is not None
    body = json.loads(refused.body)
    assert body["error"]["type"] == (error_type or "rate_limit_error")
    assert header(refused.headers, b"content-length") == str(len(refused.body)).encode()
    assert recorded == [status == 429]  # the limiter counts it like an HTTP attempt
    await proxy.settled()
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="429") == (status == 429)
    assert (
        proxy.sample(
            "zai_proxy_requests_total", method="GET", path="other", status_code=str(status)
        )
        == 1
    )


async def test_a_429_without_retry_after_gets_one(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.status(429))
    refused = await rejected(proxy)
    assert refused.status_code == 429
    value = header(refused.headers, b"retry-after")
    assert value is not None and int(value) >= 1


async def test_a_wrong_key_is_refused_401_by_the_upstream(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(ZAI_API_KEY="sk-not-the-key")
    refused = await rejected(proxy)
    assert refused.status_code == 401
    assert refused.body is not None
    assert json.loads(refused.body)["error"]["type"] == "authentication_error"


async def test_sessions_have_their_own_cap_and_the_next_gets_503_at_once(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    # One worker slot: sessions do not hold them.
    proxy = await start_proxy(MAX_WEBSOCKETS="2", MAX_WORKERS="1")
    async with session(proxy), session(proxy):
        assert proxy.sample("zai_proxy_websocket_sessions_open") == 2
        assert proxy.sample("zai_proxy_max_websockets") == 2
        with trio.fail_after(1):
            refused = await rejected(proxy)
        assert refused.status_code == 503
        assert header(refused.headers, b"retry-after") == b"1"
        assert refused.body is not None
        assert json.loads(refused.body)["error"]["type"] == "server_error"
    assert proxy.sample("zai_proxy_rate_limit_rejections_total", reason="capacity") == 1
    assert upstream.realtime_sessions == 2
    async with session(proxy):
        pass  # a freed slot takes a new session
    await proxy.settled()
    assert proxy.sample("zai_proxy_websocket_sessions_open") == 0


async def test_opening_a_session_takes_a_limiter_turn(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(
        RATE_LIMIT_INITIAL="1", RATE_LIMIT_MIN="0.5", RATE_LIMIT_MAX="1", RATE_LIMIT_MAX_WAIT="0s"
    )
    async with session(proxy):
        refused = await rejected(proxy)  # the bucket's one token went to the first
    assert refused.status_code == 429
    assert header(refused.headers, b"retry-after") is not None
    assert proxy.sample("zai_proxy_rate_limit_rejections_total", reason="rate_limit") == 1
    assert upstream.realtime_sessions == 1


async def test_an_upstream_that_never_answers_the_handshake_gets_504_at_the_deadline(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(UPSTREAM_CONNECT_TIMEOUT="300ms")
    upstream.script(Fault.hang())
    started = trio.current_time()
    refused = await rejected(proxy)
    assert refused.status_code == 504
    assert 0.3 <= trio.current_time() - started < 2
    await proxy.settled()
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="timeout") == 1


async def test_an_unreachable_upstream_gets_502(
    start_proxy: StartProxy, start_upstream: StartUpstream
) -> None:
    gone = await start_upstream()
    proxy = await start_proxy(gone, ZAI_TARGET_URL="http://127.0.0.1:1/api/anthropic")
    refused = await rejected(proxy)
    assert refused.status_code == 502


# -- backpressure and stalls --------------------------------------------------------------


async def test_a_client_that_does_not_read_stops_the_upstream_not_the_proxys_memory(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    count, size = 512, 64 * 1024  # 32 MiB in all
    async with session(proxy) as ws:
        await ws.send_message(json.dumps({"type": "sim.flood", "count": count, "size": size}))
        record = upstream.realtime[-1]
        with trio.move_on_after(1):
            await upstream.wait_for(lambda _: record.flood_sent == count)
        # The sockets' buffers hold a few MiB at most; nothing else may.
        assert record.flood_sent < count
        assert record.bytes_sent < 8 * 1024 * 1024
        with trio.fail_after(10):
            for _ in range(count):
                assert await ws.get_message() == b"\0" * size
    assert record.flood_sent == count


async def test_an_upstream_that_stops_reading_ends_the_session_at_the_write_deadline(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(UPSTREAM_WRITE_TIMEOUT="300ms")
    async with session(proxy) as ws:
        await ws.send_message(json.dumps({"type": "sim.stall"}))

        async def flood() -> None:
            try:
                while True:
                    await ws.send_message(b"\0" * 65536)
            except ConnectionClosed:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            assert await close_of(ws) == (1011, "the upstream stopped reading")
    await proxy.settled()
    assert sessions_ended(proxy, "1011") == 1


async def test_messages_over_the_cap_close_their_sender_with_1009(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(MAX_BODY_BYTES="4096")
    async with session(proxy) as ws:
        await ws.send_message(b"\0" * 5000)
        assert (await close_of(ws))[0] == 1009
    assert (await closed_upstream(upstream)).close == (1009, None)
    async with session(proxy) as ws:
        await ws.send_message(json.dumps({"type": "sim.flood", "count": 1, "size": 5000}))
        assert (await close_of(ws))[0] == 1009


# -- metrics ------------------------------------------------------------------------------


def direction_totals(proxy: ProxyHandle, model: str) -> dict[str, float]:
    tier = pricing_tier(datetime.now(UTC))
    return {
        direction: proxy.sample(
            "zai_proxy_tokens_total", direction=direction, model=model, pricing_tier=tier
        )
        or 0.0
        for direction in ("input", "output", "cache_read", "cache_write")
    }


async def respond(ws: WebSocketConnection, text: str) -> dict[str, Any]:
    """One turn; the usage its response.done reported."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await ws.send_message(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send_message(json.dumps({"type": "response.create"}))
    with trio.fail_after(5):
        while True:
            event = json.loads(await ws.get_message())
            if event["type"] == "response.done":
                usage: dict[str, Any] = event["response"]["usage"]
                return usage


async def test_usage_from_response_done_is_counted_exactly_by_direction(
    proxy: ProxyHandle,
) -> None:
    reported = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
    async with session(proxy) as ws:
        for text in ("first question " * 30, "second, longer question " * 60):
            usage = await respond(ws, text)
            cached = usage["input_token_details"]["cached_tokens"]
            reported["input"] += usage["input_tokens"] - cached
            reported["cache_read"] += cached
            reported["output"] += usage["output_tokens"]
    await proxy.settled()
    assert all(reported[d] for d in ("input", "output", "cache_read")), reported
    assert direction_totals(proxy, MODEL) == reported


async def test_without_a_model_in_the_url_the_session_events_name_it(
    proxy: ProxyHandle,
) -> None:
    async with session(proxy, query="") as ws:
        usage = await respond(ws, "hello there")
    await proxy.settled()
    assert direction_totals(proxy, "glm-realtime")["output"] == usage["output_tokens"] > 0


async def test_messages_bytes_and_sessions_are_counted_exactly(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    sent: list[str | bytes] = ["hello", "héllo", b"\x01\x02\x03"]
    async with session(proxy) as ws:
        for message in sent:
            await ws.send_message(message)
            await ws.get_message()
    record = await closed_upstream(upstream)
    await proxy.settled()
    up = sum(len(m.encode() if isinstance(m, str) else m) for m in sent)
    assert up == 5 + 6 + 3
    assert proxy.sample("zai_proxy_websocket_messages_total", direction="upstream") == 3
    assert proxy.sample("zai_proxy_websocket_bytes_total", direction="upstream") == up
    # session.created, then the three echoes: what the simulator sent.
    assert proxy.sample("zai_proxy_websocket_messages_total", direction="downstream") == 4
    assert proxy.sample("zai_proxy_websocket_bytes_total", direction="downstream") == (
        record.bytes_sent
    )
    assert sessions_ended(proxy, "1000") == 1
    assert proxy.sample("zai_proxy_websocket_sessions_open") == 0
    assert (
        proxy.sample("zai_proxy_requests_total", method="GET", path="other", status_code="101") == 1
    )
