"""The records of one request on its way through the proxy.

`Exchange` is the client's request as read, `Outcome` what became of it (filled in as it
goes, read by the app for its log line, metrics and token accounting), and `Downstream`
the one way an answer is written back to the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from .paths import IDEMPOTENT_METHODS, JSON_ROUTES, ApiStyle
from .tokenizer import InputCount, InputSource
from .usage import Usage

__all__ = ["Downstream", "Exchange", "Message", "Outcome", "Receive", "Scope", "Send"]

# The ASGI interface, as the app and the WebSocket relay see it.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(slots=True)
class Exchange:
    """The client's request, read whole (bodies are capped at MAX_BODY_BYTES)."""

    method: str
    url: httpx.URL
    headers: list[tuple[bytes, bytes]]
    body: bytes
    style: ApiStyle
    request_id: str
    route: str = "other"
    """The bounded route label (paths.route_label)."""

    @property
    def repeatable(self) -> bool:
        """Safe to send again after the upstream may have acted on it."""
        return self.method in IDEMPOTENT_METHODS or self.route in JSON_ROUTES

    @property
    def expects_json(self) -> bool:
        """A successful answer must carry a JSON body (generation and counting)."""
        return self.route in JSON_ROUTES and self.method == "POST"


@dataclass(slots=True)
class Outcome:
    """What happened to one request: read by the app for its log line and metrics."""

    status: int = 0
    attempts: int = 0
    committed: bool = False
    streamed: bool = False
    response_bytes: int = 0
    error_type: str | None = None
    usage: Usage | None = None
    output_text_bytes: bytes = b""
    output_text: str = ""
    retry_reasons: list[str] = field(default_factory=list)
    input_count: InputCount | None = None
    """The local count of the request's prompt, started when it was forwarded."""
    token_input: int | None = None
    """The X-Token-Input the answer carried, and where it came from."""
    token_input_source: InputSource | None = None


class Downstream:
    """Writes the response to the client through ASGI `send`."""

    def __init__(self, send: Callable[[dict[str, object]], Awaitable[None]]) -> None:
        self._send = send
        self.started = False
        self.ended = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, chunk: bytes, *, more: bool = True) -> None:
        if not more:
            self.ended = True
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole answer at once: status line, headers and the complete body."""
        await self.start(status, headers)
        await self.body(body, more=False)
