"""An HTTP/1.1 client on h11: one sans-IO exchange, one blocking shell, one trio shell.

Content events of a stream carry the upstream's `t=<ns>` stamp; the client records
each with the time it arrived, so a run can tell how long an event spent in a proxy.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

from .plan import HOST, PATH

_MARK = re.compile(rb"t=(\d+) ")


@dataclass
class Response:
    status: int = 0
    body: bytes = b""
    sent_ns: int = 0
    # (stamp written by the upstream, time the client received it) per content event.
    marks: list[tuple[int, int]] = field(default_factory=list)
    done: bool = False
    # False when the server ends the connection after this response (hypercorn does after
    # keep_alive_max_requests, 1000 by default): the caller connects again.
    reusable: bool = False


class _Exchange:
    """Sans-IO: one request on an h11 connection, fed bytes with their arrival time."""

    def __init__(self, conn: h11.Connection, port: int, body: bytes) -> None:
        self.conn = conn
        self.response = Response()
        self._pending = b""
        self._keep_body = b'"stream"' not in body
        request = h11.Request(
            method="POST",
            target=PATH,
            headers=[
                ("Host", f"{HOST}:{port}"),
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer sk-client-not-used"),
                ("Content-Length", str(len(body))),
            ],
        )
        self.outgoing = (
            conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )

    def feed(self, data: bytes, now_ns: int) -> None:
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Response):
                self.response.status = event.status_code
            elif isinstance(event, h11.Data):
                self._data(bytes(event.data), now_ns)
            elif isinstance(event, h11.EndOfMessage):
                self.response.done = True
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                    self.response.reusable = True
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("server closed the connection mid-response")

    def _data(self, data: bytes, now_ns: int) -> None:
        if self._keep_body:
            self.response.body += data
            return
        # Marks may straddle reads: scan only up to the last complete SSE event.
        buffer = self._pending + data
        cut = buffer.rfind(b"\n\n") + 2
        for match in _MARK.finditer(buffer, 0, cut if cut >= 2 else 0):
            self.response.marks.append((int(match.group(1)), now_ns))
        self._pending = buffer[cut:] if cut >= 2 else buffer


class BlockingClient:
    """One keep-alive connection on a plain socket: the least overhead for c=1."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h11.Connection(h11.CLIENT)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, body: bytes) -> Response:
        if self.conn.our_state is not h11.IDLE:
            self.sock.close()
            self._connect()
            self.reconnects += 1
        exchange = _Exchange(self.conn, self.port, body)
        exchange.response.sent_ns = time.monotonic_ns()
        self.sock.sendall(exchange.outgoing)
        while not exchange.response.done:
            data = self.sock.recv(65536)
            now = time.monotonic_ns()
            exchange.feed(data, now)
            if not data and not exchange.response.done:
                raise ConnectionError("connection closed mid-response")
        return exchange.response


async def trio_request(
    stream: trio.SocketStream,
    conn: h11.Connection,
    port: int,
    body: bytes,
    on_data: Callable[[Response], None] | None = None,
) -> Response:
    exchange = _Exchange(conn, port, body)
    exchange.response.sent_ns = time.monotonic_ns()
    await stream.send_all(exchange.outgoing)
    while not exchange.response.done:
        data = await stream.receive_some(65536)
        exchange.feed(data, time.monotonic_ns())
        if on_data is not None:
            on_data(exchange.response)
        if not data and not exchange.response.done:
            raise ConnectionError("connection closed mid-response")
    return exchange.response


async def trio_connect(port: int) -> tuple[trio.SocketStream, h11.Connection]:
    stream = await trio.open_tcp_stream(HOST, port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return stream, h11.Connection(h11.CLIENT)
