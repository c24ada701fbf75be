"""A fast fixed-answer LLM upstream for `perf.py`, in its own process.

Answers POST to any path ending in `/messages` (Anthropic shape) or anything else
(OpenAI chat-completion shape), under any base path.  A body with `"stream": true` gets
an SSE stream of N content events at a set interval, ending the way the real API ends
(Anthropic: `message_delta` with usage and `message_stop`; OpenAI: a finish chunk, a
usage chunk and `data: [DONE]`); any other body gets one fixed JSON answer with usage.

Each content event's text is `t=<ns>`: the `time.monotonic_ns()` at which it was written.
CLOCK_MONOTONIC is shared by all processes of the machine, so a client can tell how
long each event spent in a proxy.

Stream shape: `--events`/`--interval-ms` by default; a request whose model names
`slow` uses `--slow-events`/`--slow-interval-ms` (a model name reaches every proxy,
LiteLLM included, where a query string would not); `?events=N&interval_ms=M` in the URL
overrides both.

This one file uses asyncio's callback protocols rather than trio: a protocol answers
without a task switch per read or write, which makes it several times faster than a
stream-based server, and the upstream must never be the bottleneck.  `--workers N`
runs N processes on one port (SO_REUSEPORT).

    python bench/perf_upstream.py --port 9000 [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

_MAX_HEAD = 64 * 1024
_MAX_BODY = 8 * 1024 * 1024

_ANTHROPIC_MESSAGE = {
    "id": "msg_bench",
    "type": "message",
    "role": "assistant",
    "model": "bench",
    "content": [{"type": "text", "text": "Hello from the bench upstream."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 8},
}
_OPENAI_COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "bench",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from the bench upstream."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 25, "completion_tokens": 8, "total_tokens": 33},
}


def _fixed_response(payload: Mapping[str, object]) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"request-id: req_bench\r\n"
        b"\r\n"
    )
    return head + body


_ANTHROPIC_RESPONSE = _fixed_response(_ANTHROPIC_MESSAGE)
_OPENAI_RESPONSE = _fixed_response(_OPENAI_COMPLETION)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
    b"\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(event: str | None, data: dict[str, object] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {text}\n\n".encode()


@dataclass(frozen=True, slots=True)
class StreamShape:
    events: int
    interval: float


class _Anthropic:
    """The events of an Anthropic Messages stream, one content delta at a time."""

    @staticmethod
    def opening() -> bytes:
        message = dict(_ANTHROPIC_MESSAGE, content=[], stop_reason=None)
        message["usage"] = {"input_tokens": 25, "output_tokens": 1}
        return _sse("message_start", {"type": "message_start", "message": message}) + _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )

    @staticmethod
    def delta(stamp: int) -> bytes:
        return _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f"t={stamp} "},
            },
        )

    @staticmethod
    def closing(events: int) -> bytes:
        return (
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            + _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": events},
                },
            )
            + _sse("message_stop", {"type": "message_stop"})
        )


class _OpenAI:
    """The chunks of an OpenAI chat-completion stream, usage chunk included."""

    @staticmethod
    def _chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    @classmethod
    def opening(cls) -> bytes:
        return _sse(None, cls._chunk({"role": "assistant", "content": ""}, None))

    @classmethod
    def delta(cls, stamp: int) -> bytes:
        return _sse(None, cls._chunk({"content": f"t={stamp} "}, None))

    @classmethod
    def closing(cls, events: int) -> bytes:
        usage = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "bench",
            "choices": [],
            "usage": {
                "prompt_tokens": 25,
                "completion_tokens": events,
                "total_tokens": 25 + events,
            },
        }
        return _sse(None, cls._chunk({}, "stop")) + _sse(None, usage) + _sse(None, "[DONE]")


class _Connection(asyncio.Protocol):
    """One keep-alive connection: requests answered in order, one at a time."""

    def __init__(self, fast: StreamShape, slow: StreamShape) -> None:
        self._fast = fast
        self._slow = slow
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._streaming: asyncio.Handle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._streaming is not None:
            self._streaming.cancel()
            self._streaming = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._answer_ready()

    def _answer_ready(self) -> None:
        transport = self._transport
        while transport is not None and self._streaming is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    transport.write(_BAD_REQUEST)
                    transport.close()
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            request_line, _, header_text = head.partition("\r\n")
            length = 0
            for line in header_text.split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length > _MAX_BODY:
                transport.write(_BAD_REQUEST)
                transport.close()
                return
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            self._answer(request_line, body)

    def _answer(self, request_line: str, body: bytes) -> None:
        assert self._transport is not None
        parts = request_line.split(" ")
        if len(parts) != 3 or parts[0] != "POST":
            self._transport.write(_NOT_FOUND)
            return
        path, _, query = parts[1].partition("?")
        anthropic = path.rstrip("/").endswith("/messages")
        if b'"stream"' not in body or not _wants_stream(body):
            self._transport.write(_ANTHROPIC_RESPONSE if anthropic else _OPENAI_RESPONSE)
            return
        shape = self._slow if b"slow" in body and _model_is_slow(body) else self._fast
        if query:
            params = parse_qs(query)
            shape = StreamShape(
                events=int(params.get("events", [shape.events])[0]),
                interval=float(params.get("interval_ms", [shape.interval * 1000])[0]) / 1000,
            )
        self._stream(_Anthropic if anthropic else _OpenAI, shape)

    def _stream(self, api: type[_Anthropic] | type[_OpenAI], shape: StreamShape) -> None:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._transport.write(_SSE_HEAD + _chunk(api.opening() + api.delta(time.monotonic_ns())))
        start = loop.time()
        sent = 1

        def tick() -> None:
            nonlocal sent
            transport = self._transport
            if transport is None:
                return
            if sent < shape.events:
                transport.write(_chunk(api.delta(time.monotonic_ns())))
                sent += 1
                # Keep the schedule: the next event is due at start + sent * interval.
                self._streaming = loop.call_at(start + sent * shape.interval, tick)
                return
            transport.write(_chunk(api.closing(shape.events)) + b"0\r\n\r\n")
            self._streaming = None
            self._answer_ready()

        if shape.events <= 1:
            self._streaming = loop.call_soon(tick)
        else:
            self._streaming = loop.call_at(start + shape.interval, tick)


def _wants_stream(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("stream"))
    except (ValueError, AttributeError):
        return False


def _model_is_slow(body: bytes) -> bool:
    try:
        return "slow" in str(json.loads(body).get("model", ""))
    except (ValueError, AttributeError):
        return False


async def _serve(sock: socket.socket, fast: StreamShape, slow: StreamShape) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(fast, slow), sock=sock, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _worker(host: str, port: int, fast: StreamShape, slow: StreamShape) -> None:
    asyncio.run(_serve(_listen(host, port), fast, slow))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes on the one port")
    parser.add_argument("--events", type=int, default=20, help="content events per stream")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="gap between events")
    parser.add_argument("--slow-events", type=int, default=600)
    parser.add_argument("--slow-interval-ms", type=float, default=1000.0)
    args = parser.parse_args(argv)
    fast = StreamShape(args.events, args.interval_ms / 1000)
    slow = StreamShape(args.slow_events, args.slow_interval_ms / 1000)
    # Bind once here so the port is taken (and a clash reported) before workers start.
    probe = _listen(args.host, args.port)
    workers = [
        multiprocessing.Process(target=_worker, args=(args.host, args.port, fast, slow))
        for _ in range(max(args.workers, 1) - 1)
    ]
    for process in workers:
        process.start()
    print(
        f"perf_upstream listening on http://{args.host}:{args.port} pid {os.getpid()}", flush=True
    )
    try:
        asyncio.run(_serve(probe, fast, slow))
    finally:
        for process in workers:
            process.terminate()
        for process in workers:
            process.join(5)
    sys.exit(0)


if __name__ == "__main__":
    main()
