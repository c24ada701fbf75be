"""WebSocket sessions (Realtime APIs) relayed to the upstream, with the key kept.

One session, end to end (`WebSocketRelay.serve`, one task per session):

1. **Admission.** At most MAX_WEBSOCKETS sessions are open or opening; the next upgrade
   is answered 503 `overloaded_error` at once. The path rule is HTTP's
   (`paths.upstream_target`); a bad path is a 400. Sessions hold no MAX_WORKERS slot.
2. **One limiter turn** (`RateGate.admit`), as an HTTP attempt takes: a wait past
   RATE_LIMIT_MAX_WAIT is answered 429 with Retry-After.
3. **The upstream first.** trio-websocket opens `ws://` or `wss://` (the target URL's
   scheme) within UPSTREAM_CONNECT_TIMEOUT: the caller's headers minus hop-by-hop ones
   and credentials (`Authorization`, `x-api-key`, an `openai-insecure-api-key.*`
   subprotocol), the key set, the subprotocols as offered. A refused handshake (401,
   403, 429 ...) reaches the client as that HTTP answer before any upgrade, through
   ASGI's `websocket.http.response` extension; the limiter records it like an HTTP
   attempt (429: throttled). A client that leaves meanwhile cancels all of this.
4. **Then the client** is accepted with the subprotocol the upstream chose.
5. **Relay.** A reader task takes the client's messages from hypercorn and hands each
   to `_to_upstream` through an unbuffered channel; `_to_client` takes the upstream's.
   Each message is written before the next is read, so a side that does not read
   slows the other: hypercorn stops reading a client whose messages are not taken
   (its queue holds 10), trio-websocket stops reading an upstream whose messages are
   not taken (its queue holds 1), and memory per session stays under about a dozen
   messages of at most the message cap (`message_cap`). A write to the upstream that
   stalls past UPSTREAM_WRITE_TIMEOUT ends the session (1011 to the client); one to
   the client past CLIENT_WRITE_TIMEOUT closes the client (serving.py) and the session.
   Pings are answered on each hop by its own library; text stays text, binary binary.
6. **Close.** Whichever side closes (or goes away), the other is closed at once with
   the same code and reason; 1006 (gone without a close frame) becomes 1001 "the client
   went away" upstream, or 1011 "the upstream connection was lost" to the client. A
   proxy shutdown closes both with 1001. Close handshakes get CLOSE_TIMEOUT.

Usage: `response.done` events from the upstream are counted into
`zai_proxy_tokens_total` through the `Accountant`, as HTTP answers are (realtime.py reads
them); the model is the URL's `model` query, else the session events', else the
TOKENIZER_MODEL default, bounded as HTTP's are (the accountant's `ModelLabels`).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from ..errors import (
    BadRequest,
    ClientStalled,
    ConnectTimeout,
    Overloaded,
    ProxyError,
    RateLimited,
    RequestCreationError,
    UpstreamConnectionError,
    UpstreamError,
)
from ..settings import ProxySettings
from . import hypercorn_ws  # noqa: F401 - installs the close-code fix
from .accounting import Accountant
from .exchange import Message, Outcome, Receive, Scope, Send
from .headers import header_value, parse_retry_after, request_headers, response_headers
from .metrics import ProxyMetrics
from .paths import ApiStyle, Target, api_style, route_label, upstream_target
from .rate_gate import RateGate
from .realtime import RealtimeEvents, model_from_query
from .usage import Usage
from .wire import error_answer, retry_after_value

__all__ = ["CLOSE_TIMEOUT", "MAX_MESSAGE_BYTES", "WebSocketRelay", "message_cap"]

log = logging.getLogger("zai_proxy.proxy")
access_log = logging.getLogger("zai_proxy.access")

# The longest a close handshake may take, each side; then the connection is dropped.
CLOSE_TIMEOUT = 5.0
# Messages are capped at MAX_BODY_BYTES, and at this (hypercorn's own default, and above
# the 15 MiB of audio one OpenAI Realtime event may carry).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Upstream messages read ahead of the client (trio-websocket's queue).
_UPSTREAM_QUEUE = 1

# Set by the WebSocket handshake itself (trio-websocket writes its own), or meaningless on it.
_HANDSHAKE_HEADERS = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
        b"accept-encoding",
    }
)
# OpenAI's browser clients put their key in a subprotocol; it is the caller's
# credential, dropped like Authorization.
_KEY_SUBPROTOCOL = "openai-insecure-api-key."
# Close codes a peer reports but an endpoint may not send (RFC 6455 7.4.1).
_NO_STATUS = 1005
_ABNORMAL = 1006
_TLS_FAILED = 1015


def message_cap(settings: ProxySettings) -> int:
    """The largest message relayed either way; a larger one closes its sender with 1009."""
    return min(settings.max_body_bytes, MAX_MESSAGE_BYTES)


Side = Literal["client", "upstream", "proxy"]
CloseFrame = tuple[int, str | None]
_Refusal = tuple[int, list[tuple[bytes, bytes]], bytes]
"""An HTTP answer to an upgrade: status, headers, body."""


@dataclass(frozen=True, slots=True)
class _Ending:
    """Why a session ended, and how each side is told. `code` is the session's close code
    for metrics and logs: the one the side that ended it sent (1006: it went away)."""

    by: Side
    code: int
    reason: str | None
    to_client: CloseFrame | None = None
    to_upstream: CloseFrame | None = None
    abort_upstream: bool = False


def _relayed(code: int, reason: str | None, instead: CloseFrame) -> CloseFrame:
    """The close frame to pass on for one received: the same, unless it may not be sent."""
    if code in (_ABNORMAL, _TLS_FAILED):
        return instead
    if code == _NO_STATUS:
        return 1000, None
    return code, reason


def _client_ended(code: int, reason: str | None) -> _Ending:
    to_upstream = _relayed(code, reason, (1001, "the client went away"))
    return _Ending("client", code, reason, to_upstream=to_upstream)


def _upstream_ended(code: int, reason: str | None) -> _Ending:
    to_client = _relayed(code, reason, (1011, "the upstream connection was lost"))
    return _Ending("upstream", code, reason, to_client=to_client)


_UPSTREAM_STALLED = _Ending(
    "proxy",
    1011,
    "the upstream stopped reading",
    to_client=(1011, "the upstream stopped reading"),
    abort_upstream=True,
)
_CLIENT_STALLED = _Ending(
    "proxy",
    _ABNORMAL,
    "the client stopped reading",
    to_upstream=(1001, "the client stopped reading"),
)
_SHUTDOWN = _Ending(
    "proxy",
    1001,
    "zai-proxy is shutting down",
    to_client=(1001, "zai-proxy is shutting down"),
    to_upstream=(1001, "zai-proxy is shutting down"),
)


@dataclass(slots=True)
class _Session:
    """What the app knows of one session, filled in as it goes."""

    request_id: str
    route: str
    style: ApiStyle
    started: float
    events: RealtimeEvents
    status: int = 0
    accepted: bool = False
    subprotocol: str | None = None
    ending: _Ending | None = None
    client_close: CloseFrame | None = None
    client_gone: trio.Event = field(default_factory=trio.Event)
    messages: dict[str, int] = field(default_factory=lambda: {"upstream": 0, "downstream": 0})
    bytes: dict[str, int] = field(default_factory=lambda: {"upstream": 0, "downstream": 0})
    usage: Usage | None = None
    error: str | None = None


class WebSocketRelay:
    """Serves the ASGI `websocket` scope of every forwarded path; one per app."""

    def __init__(
        self,
        *,
        settings: ProxySettings,
        target: Target,
        gate: RateGate,
        metrics: ProxyMetrics,
        accountant: Accountant,
        stopping: trio.Event,
    ) -> None:
        self._settings = settings
        self._target = target
        self._gate = gate
        self._metrics = metrics
        self._accountant = accountant
        self._stopping = stopping
        # Held only as the header value; never formatted into text anywhere else.
        self._authorization = b"Bearer " + settings.api_key.encode("latin-1")
        parts = urlsplit(target.origin)
        self._secure = parts.scheme == "https"
        self._netloc = parts.netloc
        self._ssl: ssl.SSLContext | None = None
        self._cap = message_cap(settings)
        v = metrics.variant
        self._traffic = {
            direction: (
                metrics.websocket_messages.labels(direction, v),
                metrics.websocket_bytes.labels(direction, v),
            )
            for direction in ("upstream", "downstream")
        }
        self.open = 0
        """Sessions open or being opened: each holds one of MAX_WEBSOCKETS."""

    # -- one session ------------------------------------------------------------------

    async def serve(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return  # gone before it began
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw_path.split(b"?", 1)[0]
        query: bytes = scope.get("query_string", b"")
        session = _Session(
            request_id=request_id,
            route=route_label(raw_path, self._target),
            style=_style(raw_path),
            started=trio.current_time(),
            events=RealtimeEvents(model_from_query(query)),
        )
        try:
            if self.open >= self._settings.max_websockets:
                self._metrics.rejection("capacity")
                error = Overloaded(
                    f"zai-proxy is at capacity ({self._settings.max_websockets} WebSocket "
                    "sessions open); retry shortly",
                    retry_after=1.0,
                )
                await self._refuse_with(scope, send, session, error)
                return
            self.open += 1
            try:
                await self._session(scope, receive, send, session, raw_path, query)
            finally:
                self.open -= 1
        finally:
            self._finish(session)

    async def _session(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        session: _Session,
        raw_path: bytes,
        query: bytes,
    ) -> None:
        try:
            target = upstream_target(raw_path, query, self._target)
        except BadRequest as error:
            await self._refuse_with(scope, send, session, error)
            return
        url = ("wss://" if self._secure else "ws://") + self._netloc + target.decode("latin-1")
        headers = [
            (name, value)
            for name, value in request_headers(
                [(name.lower(), value) for name, value in scope["headers"]], self._authorization
            )
            if name not in _HANDSHAKE_HEADERS
        ]
        offered: list[str] = [p for p in scope.get("subprotocols", ()) if not _is_key(p)]
        to_upstream, from_client = trio.open_memory_channel[str | bytes](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                self._read_client, receive, to_upstream, session, nursery.cancel_scope
            )
            await self._open_and_relay(scope, send, session, url, headers, offered, from_client)
            nursery.cancel_scope.cancel()
        if not session.accepted and session.status == 0:
            session.status = 499  # the client left while the upstream was being opened

    async def _open_and_relay(
        self,
        scope: Scope,
        send: Send,
        session: _Session,
        url: str,
        headers: list[tuple[bytes, bytes]],
        offered: list[str],
        from_client: trio.MemoryReceiveChannel[str | bytes],
    ) -> None:
        try:
            sent_at = await self._gate.admit(self._settings.rate_limit_max_wait)
        except RateLimited as error:
            await self._refuse_with(scope, send, session, error)
            return
        timeout = self._settings.upstream_connect_timeout
        refusal: _Refusal | None = None
        failure: UpstreamError | None = None
        opened = False
        # The opening's deadline is this scope's: trio-websocket's own (0.12) leaves its
        # reader task waiting on an upstream that never answers, so it is set later.
        with trio.CancelScope(deadline=trio.current_time() + timeout) as upstream_scope:
            async with AsyncExitStack() as stack:
                try:
                    upstream = await stack.enter_async_context(
                        open_websocket_url(
                            url,
                            self._ssl_context(),
                            subprotocols=offered,
                            extra_headers=headers,
                            message_queue_size=_UPSTREAM_QUEUE,
                            max_message_size=self._cap,
                            connect_timeout=timeout + 1.0,
                            disconnect_timeout=CLOSE_TIMEOUT,
                        )
                    )
                except ConnectionRejected as refused:
                    self._gate.record(refused.status_code == 429, sent_at)
                    if refused.status_code == 429:
                        self._metrics.upstream_error("429")
                    refusal = self._refusal(refused, session)
                except (HandshakeError, ValueError) as exc:
                    failure = _handshake_error(exc)
                else:
                    opened = True
                    upstream_scope.deadline = math.inf
                    self._gate.record(False, sent_at)
                    if await self._accept(send, upstream, session):
                        session.ending = await self._relay(upstream, from_client, send, session)
                        await self._close(session.ending, upstream, send, session)
                    # An upstream that closed first drops its connection itself after
                    # the handshake (trio-websocket waits for that); one that does not
                    # is cut off after CLOSE_TIMEOUT.
                    upstream_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
        if not opened and upstream_scope.cancelled_caught:
            failure = ConnectTimeout("timed out opening the upstream WebSocket")
        if refusal is not None:
            await self._refuse(scope, send, session, *refusal)
        elif failure is not None:
            self._metrics.upstream_error(failure.error_type)
            await self._refuse_with(scope, send, session, failure)

    async def _accept(self, send: Send, upstream: WebSocketConnection, session: _Session) -> bool:
        headers = [
            (name, value)
            for name, value in response_headers(upstream.handshake_headers)
            if not name.startswith(b"sec-websocket-")
        ]
        headers.append((b"x-request-id", session.request_id.encode()))
        message: Message = {"type": "websocket.accept", "headers": headers}
        if upstream.subprotocol is not None:
            message["subprotocol"] = upstream.subprotocol
        try:
            await send(message)
        except ClientStalled:
            session.status = 499
            return False
        session.accepted = True
        session.status = 101
        session.subprotocol = upstream.subprotocol
        self._metrics.request_done(
            "GET", session.route, "101", trio.current_time() - session.started, 0, 0
        )
        return True

    # -- relaying ---------------------------------------------------------------------

    async def _read_client(
        self,
        receive: Receive,
        to_upstream: trio.MemorySendChannel[str | bytes],
        session: _Session,
        opening: trio.CancelScope,
    ) -> None:
        """hypercorn's messages for the whole session: handed to `_to_upstream` one at a
        time while it runs, read and dropped after, until the client's disconnect."""
        async with to_upstream:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    reason = message.get("reason")
                    session.client_close = (
                        int(message.get("code", _ABNORMAL)),
                        reason if isinstance(reason, str) and reason else None,
                    )
                    break
                if message["type"] != "websocket.receive":
                    continue
                data = message.get("bytes")
                if data is None:
                    data = message.get("text")
                if data is None:
                    continue
                try:
                    await to_upstream.send(data)
                except trio.BrokenResourceError:
                    pass  # the relay is over; read on until the client has gone
        session.client_gone.set()
        if not session.accepted:
            opening.cancel()

    async def _relay(
        self,
        upstream: WebSocketConnection,
        from_client: trio.MemoryReceiveChannel[str | bytes],
        send: Send,
        session: _Session,
    ) -> _Ending:
        endings: list[_Ending] = []
        async with trio.open_nursery() as pumps:

            def end(ending: _Ending) -> None:
                if not endings:
                    endings.append(ending)
                pumps.cancel_scope.cancel()

            pumps.start_soon(self._to_upstream, upstream, from_client, session, end)
            pumps.start_soon(self._to_client, upstream, send, session, end)
            pumps.start_soon(self._on_shutdown, end)
        return endings[0]

    async def _to_upstream(
        self,
        upstream: WebSocketConnection,
        from_client: trio.MemoryReceiveChannel[str | bytes],
        session: _Session,
        end: Callable[[_Ending], None],
    ) -> None:
        async with from_client:
            async for data in from_client:
                self._count("upstream", data, session)
                # A frame cut half-way would corrupt the stream, so the write is shielded
                # and bounded by a deadline of its own, as hypercorn's are (serving.py).
                with trio.CancelScope(shield=True) as write:
                    write.deadline = trio.current_time() + self._settings.upstream_write_timeout
                    try:
                        await upstream.send_message(data)
                    except ConnectionClosed:
                        return  # the upstream is closing: `_to_client` hears how
                if write.cancelled_caught:
                    end(_UPSTREAM_STALLED)
                    return
        # The reader closed the channel: the client closed, or went away.
        code, reason = session.client_close or (_ABNORMAL, None)
        end(_client_ended(code, reason))

    async def _to_client(
        self,
        upstream: WebSocketConnection,
        send: Send,
        session: _Session,
        end: Callable[[_Ending], None],
    ) -> None:
        while True:
            try:
                data = await upstream.get_message()
            except ConnectionClosed as closed:
                reason = closed.reason
                if reason is None:
                    end(_upstream_ended(_ABNORMAL, None))
                else:
                    end(_upstream_ended(reason.code, reason.reason))
                return
            self._count("downstream", data, session)
            message: Message
            if isinstance(data, str):
                usage = session.events.feed(data)
                if usage is not None:
                    await self._account(usage, session)
                message = {"type": "websocket.send", "text": data}
            else:
                message = {"type": "websocket.send", "bytes": data}
            try:
                await send(message)
            except ClientStalled:
                end(_CLIENT_STALLED)
                return

    async def _on_shutdown(self, end: Callable[[_Ending], None]) -> None:
        await self._stopping.wait()
        end(_SHUTDOWN)

    async def _close(
        self, ending: _Ending, upstream: WebSocketConnection, send: Send, session: _Session
    ) -> None:
        """Tell both sides, at once, within CLOSE_TIMEOUT; what does not finish by then is
        dropped (leaving `open_websocket_url` closes the upstream's connection).  Not
        shielded: a session cut from outside (past SHUTDOWN_TIMEOUT) drops both at once."""
        with trio.move_on_after(CLOSE_TIMEOUT):
            async with trio.open_nursery() as closing:
                if ending.abort_upstream:
                    await trio.aclose_forcefully(upstream)
                elif ending.to_upstream is not None:
                    closing.start_soon(upstream.aclose, *ending.to_upstream)
                if ending.to_client is not None:
                    closing.start_soon(self._close_client, send, ending.to_client, session)

    async def _close_client(self, send: Send, frame: CloseFrame, session: _Session) -> None:
        if session.client_gone.is_set():
            return
        code, reason = frame
        try:
            await send({"type": "websocket.close", "code": code, "reason": reason})
        except ClientStalled:
            return
        # hypercorn finishes the handshake; the reader hears the client's answer.
        await session.client_gone.wait()

    # -- accounting -------------------------------------------------------------------

    def _count(self, direction: str, data: str | bytes, session: _Session) -> None:
        size = len(data.encode()) if isinstance(data, str) else len(data)
        messages, sizes = self._traffic[direction]
        messages.inc()
        sizes.inc(size)
        session.messages[direction] += 1
        session.bytes[direction] += size

    async def _account(self, usage: Usage, session: _Session) -> None:
        session.usage = usage if session.usage is None else session.usage.merge(usage)
        # No body and no duration: nothing to count locally, and a response's token rate
        # is not the session's.
        await self._accountant.account(
            route=session.route,
            body=b"",
            style="openai",
            model=session.events.model,
            outcome=Outcome(status=200, usage=usage),
            duration=0.0,
            now=datetime.now(UTC),
        )

    # -- answers before the upgrade ---------------------------------------------------

    async def _refuse_with(
        self, scope: Scope, send: Send, session: _Session, error: ProxyError
    ) -> None:
        session.error = f"{type(error).__name__}: {error.message}"
        headers, body = error_answer(error, session.style, session.request_id)
        await self._refuse(scope, send, session, error.status, headers, body)

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        session: _Session,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        session.status = status
        try:
            if "websocket.http.response" in (scope.get("extensions") or {}):
                await send(
                    {"type": "websocket.http.response.start", "status": status, "headers": headers}
                )
                await send({"type": "websocket.http.response.body", "body": body})
            else:
                # Without the extension, a close before the accept is a 403 (ASGI).
                await send({"type": "websocket.close", "code": 1008})
        except ClientStalled:
            session.status = 499

    def _refusal(self, refused: ConnectionRejected, session: _Session) -> _Refusal:
        """The upstream's refusal as the client gets it: its status, headers and body."""
        body = refused.body or b""
        headers = response_headers(refused.headers)
        encoding = header_value(refused.headers, b"content-encoding")
        if encoding is not None:
            headers.append((b"content-encoding", encoding))  # the body is passed as it came
        if (
            refused.status_code == 429
            and parse_retry_after(header_value(headers, b"retry-after")) is None
        ):
            # Missing, or not a delay a client can parse: ours replaces it.
            headers = [(name, value) for name, value in headers if name != b"retry-after"]
            fallback = max(self._gate.retry_after(), self._settings.retry_backoff_base)
            headers.append((b"retry-after", retry_after_value(fallback)))
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"x-request-id", session.request_id.encode()))
        return refused.status_code, headers, body

    # -- plumbing ---------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self._secure:
            return None
        if self._ssl is None:
            # Made once: loading the CA store costs milliseconds every time.
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _finish(self, session: _Session) -> None:
        duration = trio.current_time() - session.started
        if not session.accepted:
            status = str(session.status or 500)
            self._metrics.request_done("GET", session.route, status, duration, 0, 0)
        ending = session.ending
        if ending is not None:
            self._metrics.websocket_ended(ending.code)
        fields: dict[str, object] = {
            "request_id": session.request_id,
            "method": "GET",
            "path": session.route,
            "status": session.status,
            "websocket": True,
            "duration_ms": round(duration * 1000, 2),
            "model": session.events.model,
        }
        if session.accepted:
            fields["subprotocol"] = session.subprotocol
            fields["messages_up"] = session.messages["upstream"]
            fields["messages_down"] = session.messages["downstream"]
            fields["bytes_up"] = session.bytes["upstream"]
            fields["bytes_down"] = session.bytes["downstream"]
            fields["responses"] = session.events.responses
        if ending is not None:
            fields["closed_by"] = ending.by
            fields["close_code"] = ending.code
            if ending.reason:
                fields["close_reason"] = ending.reason[:123]
        if session.error is not None:
            fields["error"] = session.error
        if session.usage is not None:
            u = session.usage
            fields["tokens_in"] = u.input
            fields["tokens_out"] = u.output
            fields["tokens_cache_read"] = u.cache_read
        access_log.info("websocket session", extra=fields)


def _style(raw_path: bytes) -> ApiStyle:
    # The Realtime APIs (OpenAI's and Z.AI's GLM-Realtime) speak OpenAI's error shape.
    if raw_path.rstrip(b"/").endswith(b"/realtime"):
        return "openai"
    return api_style(raw_path)


def _is_key(subprotocol: str) -> bool:
    return subprotocol.startswith(_KEY_SUBPROTOCOL)


def _handshake_error(exc: Exception) -> UpstreamError:
    """Our error for a failure to open the upstream WebSocket (a refusal aside)."""
    if isinstance(exc, ConnectionTimeout):
        return ConnectTimeout("timed out opening the upstream WebSocket")
    if isinstance(exc, ValueError):
        return RequestCreationError("could not build the upstream WebSocket URL")
    cause = exc.__cause__
    name = type(cause).__name__ if cause is not None else type(exc).__name__
    return UpstreamConnectionError(f"could not open the upstream WebSocket: {name}")
