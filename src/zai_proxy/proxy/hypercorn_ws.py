"""hypercorn's WebSocket stream, made to tell the app the close code a client sent.

hypercorn (0.17, 0.18) answers a client's close frame itself and then tells the app
``websocket.disconnect`` with code 1006, whatever code and reason the client sent
(hypercorn issue #127). A relay would turn every close a client starts into "abnormal
closure" upstream. `_RelayingWSStream` notes the client's close frame as hypercorn reads
it and puts its code and reason in the disconnect message, as ASGI defines them; a
connection that drops without a close frame is still 1006.

It replaces WSStream where hypercorn's HTTP/1.1 and HTTP/2 protocols look it up, the way
serving.py replaces hypercorn's TCPServer; importing this module installs it.
"""

from __future__ import annotations

from collections.abc import Generator

import hypercorn.protocol.h2
import hypercorn.protocol.h11
from hypercorn.protocol.events import Event, StreamClosed
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.typing import WebsocketAcceptEvent
from wsproto.events import CloseConnection
from wsproto.events import Event as WSEvent

__all__: list[str] = []


class _RelayingWSStream(WSStream):
    client_close: tuple[int, str | None] | None = None

    async def _accept(self, message: WebsocketAcceptEvent) -> None:
        await super()._accept(message)
        events = self.connection.events

        def noting() -> Generator[WSEvent, None, None]:
            for event in events():
                if isinstance(event, CloseConnection) and self.client_close is None:
                    self.client_close = (event.code, event.reason or None)
                yield event

        self.connection.events = noting  # type: ignore[method-assign]

    async def handle(self, event: Event) -> None:
        if (
            isinstance(event, StreamClosed)
            and self.client_close is not None
            and not self.closed
            and self.app_put is not None
        ):
            self.closed = True
            code, reason = self.client_close
            await self.app_put({"type": "websocket.disconnect", "code": code, "reason": reason})
            return
        await super().handle(event)


setattr(hypercorn.protocol.h11, "WSStream", _RelayingWSStream)  # noqa: B010
setattr(hypercorn.protocol.h2, "WSStream", _RelayingWSStream)  # noqa: B010
