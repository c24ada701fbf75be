"""A simulated upstream LLM API (Anthropic Messages and OpenAI chat), faults included.

It also serves a Realtime API at ``<base>/v1/realtime`` (a WebSocket upgrade, handed to
trio-websocket): it announces ``session.created``, answers each ``response.create`` with
a stream of events ending in ``response.done`` with usage, and echoes every other
message. Test hooks, sent as text: ``{"type": "sim.close", "code": N, "reason": R}``,
``sim.drop`` (gone without a close frame), ``sim.stall`` (stops reading),
``sim.flood`` (``count`` binary messages of ``size`` bytes, as fast as they go) and
``sim.ping`` (pings, then answers ``sim.pong``). The handshake takes the scripted faults:
a status refuses it (Retry-After included), ``hang`` never answers, ``reset`` drops it,
``slow`` delays it, ``die_mid_stream`` drops the first response after ``after`` events.

It stands in for Z.AI, which tests and the demo cannot reach. It is written on
trio sockets and h11 rather than a web framework because the faults it must
play (connection resets, death mid-stream, truncated bodies) need control of
every byte on the wire.

The answers are built by plain functions from the request (no I/O, no clock),
so the same request always gets the same text and the same usage; the server
class around them only decides *which* answer or fault a request gets and
writes it out.
"""

from __future__ import annotations

import email.utils
import enum
import hashlib
import hmac
import http
import json
import logging
import math
import random
import socket
import struct
import typing
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import h11
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

__all__ = [
    "FAULT_HEADER",
    "Fault",
    "FaultKind",
    "Outcome",
    "RealtimeRecord",
    "RequestRecord",
    "SimUpstream",
    "UpstreamConfig",
]

logger = logging.getLogger("zai_proxy.sim.upstream")

FAULT_HEADER = "x-sim-fault"

FaultKind = Literal[
    "status",
    "empty_body",
    "truncated_json",
    "empty_stream",
    "reset",
    "die_mid_stream",
    "stop_mid_stream",
    "error_mid_stream",
    "cut_mid_event",
    "bad_gzip",
    "no_body",
    "slow",
    "hang",
]
_FAULT_KINDS: frozenset[str] = frozenset(typing.get_args(FaultKind))

Outcome = Literal["answered", "disconnected", "dropped"]

_MAX_READ = 64 * 1024
_MAX_HEAD = 64 * 1024
# Bytes a client may pipeline while we answer; past that we stop reading
# (and so stop noticing a disconnect) rather than buffer without bound.
_MAX_PIPELINED = 256 * 1024
_MAX_RECORDS = 1000
# Messages a realtime record keeps (the first ones), for tests to read back.
_MAX_KEPT_MESSAGES = 100
REALTIME_ROUTE = "/v1/realtime"
_REALTIME_MODEL = "glm-realtime"
_KEY_SUBPROTOCOL = "openai-insecure-api-key."
_MAX_CACHED_PREFIXES = 4096
_PING_EVERY = 4
_CREATED_BASE = 1_750_000_000
_MODELS = ("glm-4.6", "glm-4.5", "glm-4.5-air")
_WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud "
    "exercitation ullamco laboris nisi aliquip ex ea commodo consequat"
).split()
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Only these keys carry prompt text; counting "role" or "type" would make
# usage depend on the JSON layout instead of what the user wrote.
_TEXT_KEYS = frozenset({"text", "content", "system", "description", "thinking", "arguments"})

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "Invalid API key",
    "permission_error": "Permission denied",
    "not_found_error": "Not found",
    "request_too_large": "Request exceeds the maximum allowed size",
    "rate_limit_error": "Rate limit reached for requests",
    "overloaded_error": "Overloaded",
    "api_error": "Internal server error",
}

Wire = Literal["anthropic", "openai"]


# --------------------------------------------------------------------------- faults


def _retry_after_value(value: float | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, applied to one API request.

    ``code``/``retry_after`` belong to ``status``; ``after`` (events sent
    first) to ``die_mid_stream`` and ``error_mid_stream``; ``delay`` (before
    the headers) and ``gap`` (between stream events) to ``slow``.
    """

    kind: FaultKind
    code: int = 500
    retry_after: str | None = None
    after: int = 0
    delay: float = 0.0
    gap: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; allowed: {sorted(_FAULT_KINDS)}")
        if not 200 <= self.code <= 599:
            raise ValueError(f"fault status {self.code} is not in 200..599")
        if self.after < 0 or self.delay < 0 or (self.gap is not None and self.gap < 0):
            raise ValueError("fault after/delay/gap must not be negative")

    @classmethod
    def status(cls, code: int, *, retry_after: float | str | None = None) -> Fault:
        """An error status; ``retry_after`` is seconds or an HTTP-date, sent verbatim."""
        return cls("status", code=code, retry_after=_retry_after_value(retry_after))

    @classmethod
    def empty_body(cls) -> Fault:
        return cls("empty_body")

    @classmethod
    def truncated_json(cls) -> Fault:
        return cls("truncated_json")

    @classmethod
    def empty_stream(cls) -> Fault:
        return cls("empty_stream")

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def die_mid_stream(cls, after: int = 2) -> Fault:
        return cls("die_mid_stream", after=after)

    @classmethod
    def stop_mid_stream(cls, after: int = 2) -> Fault:
        """A stream that ends cleanly (the chunked body is closed properly) after
        ``after`` events, without its final event: truncated, but no transport error."""
        return cls("stop_mid_stream", after=after)

    @classmethod
    def error_mid_stream(cls, after: int = 2) -> Fault:
        """A well-formed stream that carries an ``error`` event, as Anthropic does
        when it is overloaded after the stream has started."""
        return cls("error_mid_stream", after=after)

    @classmethod
    def cut_mid_event(cls, after: int = 2) -> Fault:
        """The connection drops halfway through event number ``after`` (0-based), in
        the middle of its ``data:`` line."""
        return cls("cut_mid_event", after=after)

    @classmethod
    def bad_gzip(cls, after: int = 0) -> Fault:
        """A gzip-encoded answer whose compressed bytes turn to garbage: at once for a
        JSON answer, after ``after`` good events for a stream."""
        return cls("bad_gzip", after=after)

    @classmethod
    def no_body(cls, code: int = 202) -> Fault:
        """Status ``code`` with no body and no content type, as a 202 or a DELETE has."""
        return cls("no_body", code=code)

    @classmethod
    def slow(cls, delay: float = 1.0, gap: float | None = None) -> Fault:
        return cls("slow", delay=delay, gap=gap)

    @classmethod
    def hang(cls) -> Fault:
        return cls("hang")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Parse the ``x-sim-fault`` syntax: ``kind[;key=value]...``.

        A bare status number means ``status`` (``429;retry-after=2``). Keys:
        ``code``, ``retry-after``, ``after``, ``delay``, ``gap``.
        """
        head, *params = [part.strip() for part in spec.split(";")]
        kind = head.lower().replace("-", "_")
        code = 500
        if kind.isdigit():
            kind, code = "status", int(kind)
        if kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {head!r}; allowed: {sorted(_FAULT_KINDS)}")
        options: dict[str, str] = {}
        for param in params:
            name, sep, value = param.partition("=")
            name = name.strip().lower().replace("_", "-")
            if not sep or name not in {"code", "retry-after", "after", "delay", "gap"}:
                raise ValueError(f"bad fault parameter {param!r} in {spec!r}")
            options[name] = value.strip()
        try:
            return cls(
                typing.cast(FaultKind, kind),
                code=int(options.get("code", code)),
                retry_after=options.get("retry-after"),
                after=int(options.get("after", 2 if kind.endswith(("mid_stream", "event")) else 0)),
                delay=float(options.get("delay", 1.0 if kind == "slow" else 0.0)),
                gap=float(options["gap"]) if "gap" in options else None,
            )
        except ValueError as exc:
            raise ValueError(f"bad fault spec {spec!r}: {exc}") from exc


_DEFAULT_FAULT_MIX: tuple[tuple[Fault, float], ...] = (
    (Fault.status(429, retry_after=1), 3.0),
    (Fault.status(429), 2.0),
    (Fault.status(529), 1.0),
    (Fault.status(500), 1.0),
    (Fault.empty_stream(), 1.0),
    (Fault.die_mid_stream(after=3), 1.0),
    (Fault.error_mid_stream(after=3), 0.5),
    (Fault.truncated_json(), 0.5),
    (Fault.empty_body(), 0.5),
    (Fault.reset(), 0.5),
    (Fault.slow(delay=2.0), 1.0),
)


# --------------------------------------------------------------------------- config and records


@dataclass(frozen=True)
class UpstreamConfig:
    """Settings of one simulated upstream; all durations are seconds."""

    host: str = "127.0.0.1"
    port: int = 0
    base_path: str = "/api/anthropic"
    api_key: str | None = field(default=None, repr=False)
    latency: float = 0.005
    stream_gap: float = 0.01
    events_per_stream: int = 6
    answer_words: int = 24
    hidden_limit: float | None = None
    hidden_limit_burst: float = 1.0
    retry_after_share: float = 0.5
    fault_rate: float = 0.0
    fault_mix: tuple[tuple[Fault, float], ...] = _DEFAULT_FAULT_MIX
    seed: int = 0
    # Send a Date header, as real servers do.
    date_header: bool = True
    # A Set-Cookie header value on every answer (load balancers in front of real APIs
    # set affinity cookies), or None.
    set_cookie: str | None = None
    # (duration, limit) steps, repeated for as long as the server runs.
    limit_schedule: tuple[tuple[float, float | None], ...] = ()
    # Share of the prompt treated as a cached prefix when the request has no
    # cache_control (Z.AI and OpenAI cache implicitly).
    cache_ratio: float = 0.0
    max_body_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.base_path and (not self.base_path.startswith("/") or self.base_path.endswith("/")):
            raise ValueError(f"base_path {self.base_path!r} must be '' or '/x' without '/' at end")
        if self.latency < 0 or self.stream_gap < 0:
            raise ValueError("latency and stream_gap must not be negative")
        if self.events_per_stream < 1 or self.answer_words < 0:
            raise ValueError("events_per_stream must be >= 1 and answer_words >= 0")
        if self.hidden_limit is not None and self.hidden_limit <= 0:
            raise ValueError("hidden_limit must be > 0 or None")
        if self.hidden_limit_burst < 1:
            raise ValueError("hidden_limit_burst must be >= 1")
        for name in ("retry_after_share", "fault_rate", "cache_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if any(weight < 0 for _, weight in self.fault_mix):
            raise ValueError("fault_mix weights must not be negative")
        if self.fault_rate > 0 and not any(weight > 0 for _, weight in self.fault_mix):
            raise ValueError("fault_rate > 0 needs a fault_mix with a positive weight")
        for duration, limit in self.limit_schedule:
            if duration <= 0 or (limit is not None and limit <= 0):
                raise ValueError("limit_schedule steps need duration > 0 and limit > 0 or None")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")


@dataclass
class RequestRecord:
    """One request as the simulator received it, and what became of it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    received_at: float
    request_id: str
    fault: Fault | None = None
    status: int | None = None
    outcome: Outcome | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RealtimeRecord:
    """One Realtime API session as the simulator saw it."""

    target: str
    headers: list[tuple[str, str]]
    subprotocols: list[str]
    """As the client offered them, in order."""
    received_at: float
    subprotocol: str | None = None
    """The one chosen: ``realtime`` when offered, else the first offered."""
    fault: Fault | None = None
    status: int | None = None
    """101, or the status the handshake was refused with."""
    open: bool = False
    received: list[str | bytes] = field(default_factory=list)
    """The first messages the client sent."""
    messages_received: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    flood_sent: int = 0
    responses: int = 0
    close: tuple[int, str | None] | None = None
    """The close code and reason; 1006 when the client went without a close frame."""
    closed_by: Literal["client", "upstream"] | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


# --------------------------------------------------------------------------- pure cores


class _TokenBucket:
    """The hidden rate limit; time is passed in so it runs under MockClock."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def set_rate(self, rate: float, burst: float, now: float | None) -> None:
        if now is not None:
            self._refill(now)
        self.rate, self.burst = rate, burst
        self._tokens = min(self._tokens, burst)

    def take(self, now: float) -> float:
        """Take a token; return 0.0 on success, else the seconds until one is due."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


@dataclass(frozen=True)
class _Usage:
    prompt: int
    cache_read: int = 0
    cache_write: int = 0

    @property
    def uncached(self) -> int:
        return self.prompt - self.cache_read - self.cache_write


@dataclass(frozen=True)
class _Answer:
    model: str
    words: tuple[str, ...]
    finished: bool
    usage: _Usage

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def _walk_text(node: object, key: str, parts: list[str], marks: list[int]) -> None:
    if isinstance(node, str):
        if key in _TEXT_KEYS:
            parts.append(node)
    elif isinstance(node, list):
        for item in node:
            _walk_text(item, key, parts, marks)
    elif isinstance(node, dict):
        for name, value in node.items():
            if name != "cache_control":
                _walk_text(value, str(name), parts, marks)
        if "cache_control" in node:
            marks.append(len(parts))


def _prompt_text(payload: dict[str, Any]) -> tuple[list[str], int]:
    """The prompt's text parts in cache order (tools, system, messages), and how
    many of them lie before the last cache_control breakpoint."""
    parts: list[str] = []
    marks: list[int] = []
    for key in ("tools", "system", "messages"):
        _walk_text(payload.get(key), key, parts, marks)
    return parts, max(marks, default=0)


def _prompt_digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _answer_words(seed: int, payload: dict[str, Any], count: int) -> tuple[str, ...]:
    # Seeded by the request itself, so an answer does not depend on what
    # other requests came first.
    rng = random.Random(f"{seed}:{_prompt_digest(payload)}")
    return tuple(rng.choice(_WORDS) for _ in range(count))


def _pieces(words: Sequence[str], count: int) -> list[str]:
    """Split words into at most ``count`` deltas whose concatenation is the text."""
    if not words:
        return []
    count = min(count, len(words))
    size = math.ceil(len(words) / count)
    groups = [words[i : i + size] for i in range(0, len(words), size)]
    return [("" if i == 0 else " ") + " ".join(group) for i, group in enumerate(groups)]


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


def _sse_data(data: object) -> bytes:
    return b"data: " + _dumps(data) + b"\n\n"


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Site Overloaded" if status == 529 else ""


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error")


def _error_body(wire: Wire, status: int, message: str | None = None) -> dict[str, Any]:
    kind = _error_type(status)
    text = message or _ERROR_MESSAGES[kind]
    if wire == "openai":
        return {"error": {"message": text, "type": kind, "param": None, "code": str(status)}}
    return {"type": "error", "error": {"type": kind, "message": text}}


def _anthropic_usage(usage: _Usage, output: int) -> dict[str, int]:
    return {
        "input_tokens": usage.uncached,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
        "output_tokens": output,
    }


def _anthropic_message(msg_id: str, answer: _Answer) -> dict[str, Any]:
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": "end_turn" if answer.finished else "max_tokens",
        "stop_sequence": None,
        "usage": _anthropic_usage(answer.usage, len(answer.words)),
    }


def _anthropic_events(msg_id: str, answer: _Answer, deltas: int) -> list[bytes]:
    start = _anthropic_message(msg_id, answer) | {"content": [], "stop_reason": None}
    start["usage"] = _anthropic_usage(answer.usage, 1)
    events = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        _sse("ping", {"type": "ping"}),
    ]
    pieces = _pieces(answer.words, deltas)
    for i, piece in enumerate(pieces, start=1):
        delta = {"type": "text_delta", "text": piece}
        events.append(
            _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
        if i % _PING_EVERY == 0 and i < len(pieces):
            events.append(_sse("ping", {"type": "ping"}))
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": "end_turn" if answer.finished else "max_tokens",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": len(answer.words)},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def _openai_usage(usage: _Usage, output: int) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": output,
        "total_tokens": usage.prompt + output,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read},
    }


def _openai_completion(cid: str, created: int, answer: _Answer) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "stop" if answer.finished else "length",
            }
        ],
        "usage": _openai_usage(answer.usage, len(answer.words)),
    }


def _openai_chunks(
    cid: str, created: int, answer: _Answer, deltas: int, include_usage: bool
) -> list[bytes]:
    def chunk(delta: dict[str, str], finish: str | None) -> bytes:
        body: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": answer.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if include_usage:
            body["usage"] = None
        return _sse_data(body)

    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    chunks += [chunk({"content": piece}, None) for piece in _pieces(answer.words, deltas)]
    chunks.append(chunk({}, "stop" if answer.finished else "length"))
    if include_usage:
        usage = _openai_usage(answer.usage, len(answer.words))
        chunks.append(
            _sse_data(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": answer.model,
                    "choices": [],
                    "usage": usage,
                }
            )
        )
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def _models_body() -> dict[str, Any]:
    # One list both SDKs accept: Anthropic's fields and OpenAI's side by side.
    data = [
        {
            "type": "model",
            "id": name,
            "display_name": name.upper(),
            "created_at": "2025-07-28T00:00:00Z",
            "object": "model",
            "created": _CREATED_BASE,
            "owned_by": "z-ai",
        }
        for name in _MODELS
    ]
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "first_id": _MODELS[0],
        "last_id": _MODELS[-1],
    }


def _realtime_usage(prompt: int, cached: int, output: int) -> dict[str, Any]:
    """A Realtime ``response.done`` usage object: input INCLUDES the cached tokens."""
    return {
        "total_tokens": prompt + output,
        "input_tokens": prompt,
        "output_tokens": output,
        "input_token_details": {"cached_tokens": cached, "text_tokens": prompt, "audio_tokens": 0},
        "output_token_details": {"text_tokens": output, "audio_tokens": 0},
    }


def _offered_subprotocols(headers: Sequence[tuple[str, str]]) -> list[str]:
    offered: list[str] = []
    for name, value in headers:
        if name == "sec-websocket-protocol":
            offered += [p.strip() for p in value.split(",") if p.strip()]
    return offered


def _chosen_subprotocol(offered: Sequence[str]) -> str | None:
    """``realtime`` when offered, else the first offered (never a key in disguise)."""
    usable = [p for p in offered if not p.startswith(_KEY_SUBPROTOCOL)]
    if "realtime" in usable:
        return "realtime"
    return usable[0] if usable else None


def _query_model(target: str) -> str | None:
    values = parse_qs(target.partition("?")[2]).get("model")
    return values[0] if values else None


def _request_head(incoming: _Incoming) -> bytes:
    """The request head again, as the client sent it (names lower-cased), for a parser
    that reads it itself."""
    lines = [f"{incoming.method} {incoming.target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in incoming.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _wants_websocket(incoming: _Incoming) -> bool:
    upgrade = next((v for k, v in incoming.headers if k == "upgrade"), "")
    return incoming.method == "GET" and "websocket" in upgrade.lower()


class _Replay(trio.abc.Stream):
    """A stream that gives back, first, the bytes already read from it: the request head
    h11 parsed, so that trio-websocket can read the handshake itself."""

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            size = len(self._head) if max_bytes is None else max_bytes
            data, self._head = self._head[:size], self._head[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


@dataclass
class _RealtimeState:
    """One realtime session's conversation, for deterministic answers and usage."""

    model: str
    text: str = ""
    cached: int = 0
    events: int = 0
    drop_after: int | None = None

    def event(self, kind: str, **fields: object) -> str:
        self.events += 1
        return _dumps({"type": kind, "event_id": f"event_sim_{self.events:06d}", **fields}).decode()


async def _drop(stream: trio.SocketStream) -> None:
    # SO_LINGER 0 turns close() into an RST, as a crashed peer would send.
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


# --------------------------------------------------------------------------- replies


class _After(enum.Enum):
    KEEP = "keep"  # the connection may carry the next request
    CLOSE = "close"  # close it (the response may be incomplete on purpose)
    RESET = "reset"  # abort it with an RST


@dataclass
class _Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: list[bytes] | None = None  # None: a Content-Length body
    delay: float = 0.0
    gap: float = 0.0
    # Stream: events sent before the connection drops; body: drop halfway.
    drop_after: int | None = None
    reset: bool = False
    hang: bool = False


# A gzip header followed by bytes no inflater accepts.
_GZIP_GARBAGE = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 64


def _gzip_then_garbage(events: list[bytes], good: int) -> list[bytes]:
    """The first `good` events gzip-compressed (each flushed, so each decodes as it
    arrives), then bytes that break the inflater."""
    compressor = zlib.compressobj(wbits=31)
    out = [compressor.compress(e) + compressor.flush(zlib.Z_SYNC_FLUSH) for e in events[:good]]
    if not out:
        return [_GZIP_GARBAGE]
    return [*out, b"\xff" * 64]


def _json_reply(status: int, obj: object, headers: Sequence[tuple[str, str]] = ()) -> _Reply:
    return _Reply(status, [("content-type", "application/json"), *headers], body=_dumps(obj))


def _error_reply(
    wire: Wire, status: int, message: str | None = None, retry_after: str | None = None
) -> _Reply:
    headers = [("retry-after", retry_after)] if retry_after is not None else []
    return _json_reply(status, _error_body(wire, status, message), headers)


def _stream_reply(events: list[bytes], gap: float) -> _Reply:
    headers = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
    return _Reply(200, headers, events=events, gap=gap)


class _ClientWatch:
    gone = False


class _BodyTooLarge(Exception):
    pass


@dataclass
class _Incoming:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


_ROUTES = {
    "/v1/messages": "POST",
    "/v1/messages/batches": "POST",
    "/v1/messages/count_tokens": "POST",
    "/v1/chat/completions": "POST",
    "/v1/models": "GET",
}


# --------------------------------------------------------------------------- server


class SimUpstream:
    """A simulated Z.AI upstream on a real socket; start it with ``nursery.start(up.serve)``."""

    def __init__(self, config: UpstreamConfig | None = None) -> None:
        self.config = config or UpstreamConfig()
        self.port: int | None = None
        self.records: deque[RequestRecord] = deque(maxlen=_MAX_RECORDS)
        self.status_counts: Counter[int] = Counter()
        self.total_requests = 0
        self.batches_created = 0
        self.hidden_limit_hits = 0
        self.active_connections = 0
        self.requests_in_flight = 0
        # Clients that went away before their response was complete, and the
        # subset of those whose stream had already begun.
        self.client_disconnects = 0
        self.cancelled_streams = 0
        # Realtime (WebSocket) sessions: every handshake, and those open now.
        self.realtime: deque[RealtimeRecord] = deque(maxlen=_MAX_RECORDS)
        self.realtime_sessions = 0
        self.realtime_open = 0
        self._script: deque[Fault] = deque()
        self._rng = random.Random(self.config.seed)
        self._hidden_limit = self.config.hidden_limit
        self._bucket = _TokenBucket(self.config.hidden_limit or 1.0, self.config.hidden_limit_burst)
        self._cached_prefixes: OrderedDict[str, None] = OrderedDict()
        self._changed = trio.Event()

    # ------------------------------------------------------------ public API

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("SimUpstream.url is known once serve() has started")
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}{self.config.base_path}"

    @property
    def rate_limited(self) -> int:
        """429 answers sent, whether from the hidden limit or from faults."""
        return self.status_counts[429]

    @property
    def hidden_limit(self) -> float | None:
        return self._hidden_limit

    @property
    def pending_faults(self) -> int:
        return len(self._script)

    def script(self, *faults: Fault | str) -> None:
        """Queue faults; each API request takes the next one (``str`` is header syntax)."""
        self._script.extend(f if isinstance(f, Fault) else Fault.parse(f) for f in faults)

    def clear_script(self) -> None:
        self._script.clear()

    def set_hidden_limit(self, limit: float | None, *, burst: float | None = None) -> None:
        """Change the hidden limit (requests/s) live; ``None`` lifts it."""
        if (limit is not None and limit <= 0) or (burst is not None and burst < 1):
            raise ValueError("hidden limit must be > 0 or None, and burst >= 1")
        try:
            now: float | None = trio.current_time()
        except RuntimeError:
            now = None
        self._hidden_limit = limit
        self._bucket.set_rate(limit or 1.0, burst or self._bucket.burst, now)
        self._notify()

    async def wait_for(self, predicate: Callable[[SimUpstream], bool]) -> None:
        """Wait until ``predicate(self)`` holds; put a ``trio.fail_after`` around it."""
        while not predicate(self):
            await self._changed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.port = int(listeners[0].socket.getsockname()[1])
        logger.info("simulated upstream listening on %s", self.url)
        async with trio.open_nursery() as nursery:
            if self.config.limit_schedule:
                nursery.start_soon(self._follow_limit_schedule)
            await nursery.start(trio.serve_listeners, self._handle_connection, listeners)
            task_status.started(self.port)

    # ------------------------------------------------------------ plumbing

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _follow_limit_schedule(self) -> None:
        step_end = trio.current_time()
        while True:
            for duration, limit in self.config.limit_schedule:
                self.set_hidden_limit(limit)
                step_end += duration
                await trio.sleep_until(step_end)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        self.active_connections += 1
        self._notify()
        try:
            await self._converse(stream)
        except trio.BrokenResourceError:
            logger.debug("client connection broke")
        finally:
            self.active_connections -= 1
            self._notify()

    async def _converse(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        while True:
            try:
                incoming = await self._read_request(stream, conn)
            except h11.RemoteProtocolError as exc:
                logger.debug("bad request from client: %s", exc)
                if conn.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                    await self._send_plain(stream, conn, _error_reply("anthropic", 400))
                return
            except _BodyTooLarge:
                await self._send_plain(stream, conn, _error_reply("anthropic", 413))
                return
            if incoming is None:
                return
            if _wants_websocket(incoming):
                await self._realtime(stream, conn, incoming)
                return
            after = await self._exchange(stream, conn, incoming)
            if after is _After.RESET:
                # SO_LINGER 0 turns close() into an RST, as a crashed peer would send.
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stream.aclose()
                return
            if after is _After.CLOSE or conn.our_state is not h11.DONE:
                return
            if conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _next_event(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    go_on = h11.InformationalResponse(status_code=100, headers=[])
                    await self._send(stream, conn, go_on)
                conn.receive_data(await stream.receive_some(_MAX_READ))
            else:
                return event

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> _Incoming | None:
        event = await self._next_event(stream, conn)
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed
        body = bytearray()
        while True:
            part = await self._next_event(stream, conn)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.config.max_body_bytes:
                    raise _BodyTooLarge
            elif isinstance(part, h11.EndOfMessage):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        return _Incoming(
            event.method.decode("ascii"), event.target.decode("latin-1"), headers, bytes(body)
        )

    async def _send(
        self, stream: trio.SocketStream, conn: h11.Connection, event: h11.Event
    ) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)

    async def _send_plain(
        self, stream: trio.SocketStream, conn: h11.Connection, reply: _Reply
    ) -> None:
        headers = [
            *reply.headers,
            ("content-length", str(len(reply.body))),
            ("connection", "close"),
        ]
        try:
            response = h11.Response(
                status_code=reply.status, headers=headers, reason=_reason(reply.status)
            )
            await self._send(stream, conn, response)
            await self._send(stream, conn, h11.Data(data=reply.body))
            await self._send(stream, conn, h11.EndOfMessage())
        except trio.BrokenResourceError:
            logger.debug("client left before its error response")

    async def _exchange(
        self, stream: trio.SocketStream, conn: h11.Connection, incoming: _Incoming
    ) -> _After:
        self.total_requests += 1
        record = RequestRecord(
            incoming.method,
            incoming.target,
            incoming.headers,
            incoming.body,
            received_at=trio.current_time(),
            request_id=f"req_sim_{self.total_requests:06d}",
        )
        self.records.append(record)
        self.requests_in_flight += 1
        self._notify()
        try:
            reply = self._plan(record)
            watch = _ClientWatch()
            after: _After | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_client, stream, conn, watch, nursery.cancel_scope)
                try:
                    after = await self._write_reply(stream, conn, record, reply)
                except trio.BrokenResourceError:
                    watch.gone = True
                nursery.cancel_scope.cancel()
            if after is None:
                record.outcome = "disconnected"
                self.client_disconnects += 1
                if record.status is not None and reply.events is not None:
                    self.cancelled_streams += 1
                logger.debug("client left during %s %s", record.method, record.target)
                return _After.CLOSE
            # A client may hang up the moment it has the whole answer; that
            # is not a cancellation, but the connection is done all the same.
            record.outcome = "answered" if after is _After.KEEP else "dropped"
            return _After.CLOSE if watch.gone and after is _After.KEEP else after
        finally:
            self.requests_in_flight -= 1
            self._notify()

    async def _watch_client(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        watch: _ClientWatch,
        scope: trio.CancelScope,
    ) -> None:
        """Notice a client that goes away while we answer, so its answer stops at once."""
        buffered = 0
        try:
            while data := await stream.receive_some(_MAX_READ):
                conn.receive_data(data)  # a pipelined request, kept for the next cycle
                buffered += len(data)
                if buffered >= _MAX_PIPELINED:
                    # Stop reading (and noticing) rather than buffer without bound.
                    await trio.sleep_forever()
        except trio.BrokenResourceError:
            pass
        watch.gone = True
        scope.cancel()

    async def _write_reply(
        self, stream: trio.SocketStream, conn: h11.Connection, record: RequestRecord, reply: _Reply
    ) -> _After:
        if reply.delay > 0:
            await trio.sleep(reply.delay)
        if reply.hang:
            await trio.sleep_forever()
        if reply.reset:
            return _After.RESET
        headers = [("request-id", record.request_id), ("server", "zai-proxy-sim"), *reply.headers]
        if self.config.date_header:
            headers.append(("date", email.utils.formatdate(usegmt=True)))
        if self.config.set_cookie is not None:
            headers.append(("set-cookie", self.config.set_cookie))
        if reply.events is None:
            headers.append(("content-length", str(len(reply.body))))
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=_reason(reply.status)
        )
        await self._send(stream, conn, response)
        record.status = reply.status
        self.status_counts[reply.status] += 1
        self._notify()
        if record.method == "HEAD":
            pass  # the headers only, Content-Length included
        elif reply.events is None:
            if reply.drop_after is not None:
                await self._send(stream, conn, h11.Data(data=reply.body[: len(reply.body) // 2]))
                return _After.CLOSE
            if reply.body:
                await self._send(stream, conn, h11.Data(data=reply.body))
        else:
            for index, event in enumerate(reply.events):
                if reply.drop_after is not None and index >= reply.drop_after:
                    return _After.CLOSE
                if index and reply.gap > 0:
                    await trio.sleep(reply.gap)
                # One event per chunk, so a reader sees each as it is made.
                await self._send(stream, conn, h11.Data(data=event))
            if reply.drop_after is not None:
                return _After.CLOSE
        await self._send(stream, conn, h11.EndOfMessage())
        return _After.KEEP

    # ------------------------------------------------------------ deciding the answer

    def _plan(self, record: RequestRecord) -> _Reply:
        path = record.target.partition("?")[0]
        base = self.config.base_path
        route = path[len(base) :] if path.startswith(base + "/") else None
        if route is None or route not in _ROUTES:
            return _error_reply("anthropic", 404, f"Not found: {path}")
        # HEAD is GET without the body, as any HTTP server answers it.
        method = "GET" if record.method == "HEAD" else record.method
        if method != _ROUTES[route]:
            reply = _error_reply("anthropic", 405, f"Method {record.method} not allowed")
            reply.headers.append(("allow", _ROUTES[route]))
            return reply
        wire: Wire = "openai" if route == "/v1/chat/completions" else "anthropic"
        api = route != "/v1/models"
        if api and self._hidden_limit is not None:
            wait = self._bucket.take(trio.current_time())
            if wait > 0:
                self.hidden_limit_hits += 1
                share = self._rng.random() < self.config.retry_after_share
                retry_after = str(max(1, math.ceil(wait))) if share else None
                return _error_reply(wire, 429, retry_after=retry_after)
        if not self._authorized(record):
            return _error_reply(wire, 401)
        if not api:
            return _json_reply(200, _models_body())
        spec = record.header(FAULT_HEADER)
        try:
            fault = Fault.parse(spec) if spec is not None else self._next_fault()
        except ValueError as exc:
            return _error_reply(wire, 400, str(exc))
        record.fault = fault
        reply = self._answer(route, wire, record.body, fault)
        reply.delay += self.config.latency
        return reply

    def _authorized(self, record: RequestRecord | RealtimeRecord) -> bool:
        key = self.config.api_key
        if key is None:
            return True
        # Z.AI takes the key either way; the proxy is expected to send Bearer.
        offered = record.header("x-api-key") or ""
        scheme, _, token = (record.header("authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            offered = token.strip() or offered
        return hmac.compare_digest(offered.encode(), key.encode())

    def _next_fault(self) -> Fault | None:
        if self._script:
            return self._script.popleft()
        if self.config.fault_rate > 0 and self._rng.random() < self.config.fault_rate:
            faults = [f for f, _ in self.config.fault_mix]
            weights = [w for _, w in self.config.fault_mix]
            return self._rng.choices(faults, weights)[0]
        return None

    def _answer(self, route: str, wire: Wire, body: bytes, fault: Fault | None) -> _Reply:
        kind = fault.kind if fault else None
        if fault is not None and kind == "status":
            return _error_reply(wire, fault.code, retry_after=fault.retry_after)
        if kind == "reset":
            return _Reply(0, [], reset=True)
        if kind == "hang":
            return _Reply(0, [], hang=True)
        if kind == "empty_body":
            return _Reply(200, [("content-type", "application/json")])
        if kind == "empty_stream":
            return _stream_reply([], 0.0)
        if kind == "no_body" and fault is not None:
            return _Reply(fault.code, [])
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return _error_reply(wire, 400, "Request body is not valid JSON")
        if route == "/v1/messages/batches":
            if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
                return _error_reply(wire, 400, "requests: Field required")
            reply = self._batch(payload["requests"])
        elif not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            return _error_reply(wire, 400, "messages: Field required")
        elif route != "/v1/messages/count_tokens" and not isinstance(payload.get("model"), str):
            return _error_reply(wire, 400, "model: Field required")
        elif route == "/v1/messages/count_tokens":
            parts, _ = _prompt_text(payload)
            reply = _json_reply(200, {"input_tokens": _tokens(sum(map(len, parts)))})
        else:
            reply = self._completion(route, payload)
        if fault is None:
            return reply
        if kind == "truncated_json":
            if reply.events is not None:
                reply = self._completion(route, payload | {"stream": False})
            reply.body = reply.body[: len(reply.body) // 2]
        elif kind == "die_mid_stream":
            reply.drop_after = fault.after
        elif kind == "cut_mid_event" and reply.events is not None:
            cut = min(fault.after, len(reply.events) - 1)
            event = reply.events[cut]
            reply.events = [*reply.events[:cut], event[: len(event) // 2]]
            reply.drop_after = cut + 1
        elif kind == "bad_gzip":
            reply.headers.append(("content-encoding", "gzip"))
            if reply.events is None:
                reply.body = _GZIP_GARBAGE
            else:
                reply.events = _gzip_then_garbage(reply.events, fault.after)
        elif kind == "stop_mid_stream" and reply.events is not None:
            reply.events = reply.events[: fault.after]
        elif kind == "error_mid_stream" and reply.events is not None:
            error = _error_body(wire, 529)
            event = _sse_data(error) if wire == "openai" else _sse("error", error)
            reply.events = [*reply.events[: fault.after], event]
        elif kind == "slow":
            reply.delay += fault.delay
            if fault.gap is not None:
                reply.gap = fault.gap
        return reply

    def _completion(self, route: str, payload: dict[str, Any]) -> _Reply:
        limit = payload.get("max_tokens") or payload.get("max_completion_tokens")
        count = self.config.answer_words
        if isinstance(limit, int) and limit < count:
            count = max(0, limit)
        answer = _Answer(
            model=payload["model"],
            words=_answer_words(self.config.seed, payload, count),
            finished=count == self.config.answer_words,
            usage=self._usage(payload),
        )
        streaming = payload.get("stream") is True
        deltas = self.config.events_per_stream
        token = "".join(self._rng.choice(_ALNUM) for _ in range(24))
        if route == "/v1/chat/completions":
            cid, created = f"chatcmpl-{token}", _CREATED_BASE + self.total_requests
            if not streaming:
                return _json_reply(200, _openai_completion(cid, created, answer))
            options = payload.get("stream_options")
            include = isinstance(options, dict) and options.get("include_usage") is True
            chunks = _openai_chunks(cid, created, answer, deltas, include)
            return _stream_reply(chunks, self.config.stream_gap)
        if not streaming:
            return _json_reply(200, _anthropic_message(f"msg_{token}", answer))
        return _stream_reply(
            _anthropic_events(f"msg_{token}", answer, deltas), self.config.stream_gap
        )

    def _batch(self, requests: list[Any]) -> _Reply:
        """A message batch, created: not repeatable, each call makes a new one."""
        self.batches_created += 1
        return _json_reply(
            200,
            {
                "id": f"msgbatch_sim_{self.batches_created:06d}",
                "type": "message_batch",
                "processing_status": "in_progress",
                "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0},
            },
        )

    def _usage(self, payload: dict[str, Any]) -> _Usage:
        """Prompt tokens, with the cached prefix written the first time it is
        seen and read every time after, as a prompt cache would."""
        parts, marked = _prompt_text(payload)
        text = "".join(parts)
        prompt = _tokens(len(text))
        if marked:
            prefix = "".join(parts[:marked])
        elif self.config.cache_ratio > 0:
            prefix = text[: int(len(text) * self.config.cache_ratio)]
        else:
            return _Usage(prompt)
        cached = min(prompt, _tokens(len(prefix))) if prefix else 0
        if not cached:
            return _Usage(prompt)
        key = hashlib.sha256(f"{payload.get('model')}\0{prefix}".encode()).hexdigest()
        if key in self._cached_prefixes:
            self._cached_prefixes.move_to_end(key)
            return _Usage(prompt, cache_read=cached)
        self._cached_prefixes[key] = None
        if len(self._cached_prefixes) > _MAX_CACHED_PREFIXES:
            self._cached_prefixes.popitem(last=False)
        return _Usage(prompt, cache_write=cached)

    # ------------------------------------------------------------ realtime

    def _realtime_plan(self, record: RealtimeRecord) -> _Reply | None:
        """The refusal a handshake gets (None: accept it); sets the record's fault."""
        path = record.target.partition("?")[0]
        if path != self.config.base_path + REALTIME_ROUTE:
            return _error_reply("openai", 404, f"Not found: {path}")
        if self._hidden_limit is not None:
            wait = self._bucket.take(trio.current_time())
            if wait > 0:
                self.hidden_limit_hits += 1
                share = self._rng.random() < self.config.retry_after_share
                retry_after = str(max(1, math.ceil(wait))) if share else None
                return _error_reply("openai", 429, retry_after=retry_after)
        if not self._authorized(record):
            return _error_reply("openai", 401)
        spec = record.header(FAULT_HEADER)
        try:
            record.fault = Fault.parse(spec) if spec is not None else self._next_fault()
        except ValueError as exc:
            return _error_reply("openai", 400, str(exc))
        if record.fault is not None and record.fault.kind == "status":
            return _error_reply("openai", record.fault.code, retry_after=record.fault.retry_after)
        return None

    async def _realtime(
        self, stream: trio.SocketStream, conn: h11.Connection, incoming: _Incoming
    ) -> None:
        self.realtime_sessions += 1
        offered = _offered_subprotocols(incoming.headers)
        record = RealtimeRecord(
            incoming.target,
            incoming.headers,
            offered,
            received_at=trio.current_time(),
            subprotocol=_chosen_subprotocol(offered),
        )
        self.realtime.append(record)
        self._notify()
        refusal = self._realtime_plan(record)
        kind = record.fault.kind if record.fault is not None and refusal is None else None
        if kind == "hang":
            # Never answer; notice the client giving up.
            while await stream.receive_some(_MAX_READ):
                pass
            return
        if kind == "reset":
            await _drop(stream)
            return
        delay = self.config.latency
        if kind == "slow" and record.fault is not None:
            delay += record.fault.delay
        if delay > 0:
            await trio.sleep(delay)
        head = _request_head(incoming) + bytes(conn.trailing_data[0])
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(
                nursery,
                _Replay(stream, head),
                message_queue_size=1,
                max_message_size=self.config.max_body_bytes,
            )
            if refusal is not None:
                record.status = refusal.status
                self.status_counts[refusal.status] += 1
                headers = [(k.encode(), v.encode()) for k, v in refusal.headers]
                await request.reject(refusal.status, extra_headers=headers, body=refusal.body)
                self._notify()
                nursery.cancel_scope.cancel()
                return
            session_id = f"sess_sim_{self.realtime_sessions:06d}"
            ws = await request.accept(
                subprotocol=record.subprotocol,
                extra_headers=[(b"x-sim-session", session_id.encode())],
            )
            record.status = 101
            record.open = True
            self.status_counts[101] += 1
            self.realtime_open += 1
            self._notify()
            state = _RealtimeState(model=_query_model(record.target) or _REALTIME_MODEL)
            if kind == "die_mid_stream" and record.fault is not None:
                state.drop_after = record.fault.after
            try:
                await self._realtime_session(ws, stream, record, state, session_id)
            except ConnectionClosed as closed:
                self._closed_by_client(record, closed)
            finally:
                record.open = False
                self.realtime_open -= 1
                self._notify()
            nursery.cancel_scope.cancel()

    def _closed_by_client(self, record: RealtimeRecord, closed: ConnectionClosed) -> None:
        if record.close is None:
            reason = closed.reason
            record.close = (reason.code, reason.reason) if reason is not None else (1006, None)
            record.closed_by = "client"

    async def _realtime_send(
        self, ws: WebSocketConnection, record: RealtimeRecord, message: str | bytes
    ) -> None:
        await ws.send_message(message)
        record.messages_sent += 1
        record.bytes_sent += len(message.encode() if isinstance(message, str) else message)

    async def _realtime_session(
        self,
        ws: WebSocketConnection,
        stream: trio.SocketStream,
        record: RealtimeRecord,
        state: _RealtimeState,
        session_id: str,
    ) -> None:
        session = {"id": session_id, "object": "realtime.session", "model": state.model}
        await self._realtime_send(ws, record, state.event("session.created", session=session))
        while True:
            message = await ws.get_message()
            record.messages_received += 1
            size = len(message.encode() if isinstance(message, str) else message)
            record.bytes_received += size
            if len(record.received) < _MAX_KEPT_MESSAGES:
                record.received.append(message)
            self._notify()
            event = _loads_event(message)
            kind = event.get("type") if event is not None else None
            if event is None or not isinstance(kind, str):
                await self._realtime_send(ws, record, message)  # echo
            elif kind == "response.create":
                if not await self._respond(ws, stream, record, state, event):
                    return
            elif kind == "conversation.item.create":
                parts: list[str] = []
                _walk_text(event.get("item"), "item", parts, [])
                state.text += " ".join(parts)
                item = event.get("item")
                await self._realtime_send(
                    ws, record, state.event("conversation.item.created", item=item)
                )
            elif kind == "sim.close":
                code = event.get("code", 1000)
                reason = event.get("reason")
                record.close = (int(code), reason if isinstance(reason, str) else None)
                record.closed_by = "upstream"
                await ws.aclose(*record.close)
                return
            elif kind == "sim.drop":
                record.close, record.closed_by = (1006, None), "upstream"
                await _drop(stream)
                return
            elif kind == "sim.stall":
                await trio.sleep(float(event.get("seconds", math.inf)))
            elif kind == "sim.flood":
                chunk = b"\0" * int(event.get("size", 65536))
                for _ in range(int(event.get("count", 1))):
                    await self._realtime_send(ws, record, chunk)
                    record.flood_sent += 1
                    self._notify()
            elif kind == "sim.ping":
                with trio.move_on_after(5):
                    await ws.ping()
                    await self._realtime_send(ws, record, state.event("sim.pong"))
            else:
                await self._realtime_send(ws, record, message)  # echo

    async def _respond(
        self,
        ws: WebSocketConnection,
        stream: trio.SocketStream,
        record: RealtimeRecord,
        state: _RealtimeState,
        event: dict[str, Any],
    ) -> bool:
        """Stream one response; False if the connection was dropped on purpose."""
        options = event.get("response")
        options = options if isinstance(options, dict) else {}
        instructions = options.get("instructions")
        if isinstance(instructions, str):
            state.text += " " + instructions
        count = self.config.answer_words
        limit = options.get("max_output_tokens")
        if isinstance(limit, int) and limit < count:
            count = max(0, limit)
        prompt = _tokens(len(state.text))
        cached = min(state.cached, prompt)
        words = _answer_words(self.config.seed, {"text": state.text}, count)
        rid = f"resp_sim_{record.responses + 1:06d}"
        events = [state.event("response.created", response={"id": rid, "status": "in_progress"})]
        for piece in _pieces(words, self.config.events_per_stream):
            events.append(state.event("response.output_text.delta", response_id=rid, delta=piece))
        done = {
            "id": rid,
            "object": "realtime.response",
            "status": "completed",
            "usage": _realtime_usage(prompt, cached, len(words)),
        }
        events.append(state.event("response.done", response=done))
        for index, message in enumerate(events):
            if state.drop_after is not None and index >= state.drop_after:
                record.close, record.closed_by = (1006, None), "upstream"
                await _drop(stream)
                return False
            if index and self.config.stream_gap > 0:
                await trio.sleep(self.config.stream_gap)
            await self._realtime_send(ws, record, message)
        # The conversation so far is a cached prefix for the next response.
        state.cached = prompt
        state.text += " " + " ".join(words)
        record.responses += 1
        self._notify()
        return True


def _loads_event(message: str | bytes) -> dict[str, Any] | None:
    if not isinstance(message, str):
        return None
    try:
        event = json.loads(message)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None
