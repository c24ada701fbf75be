"""Broadcast: every snapshot to every SSE client, without letting one slow client hold
up the rest.

Each client owns a bounded memory channel.  `publish` renders the SSE frame once and
hands it to every channel with `send_nowait`; a client whose buffer is full is closed
and counted as dropped (its browser reconnects and backfills from /api/metrics).  A
client's stream starts with `event: connected`, carries `event: snapshot` frames as they
are made, and a `: keepalive` comment every KEEPALIVE seconds so proxies in between
don't time it out.  `close` ends every stream at once, for shutdown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager

import trio

from .snapshot import Snapshot

__all__ = ["CLIENT_BUFFER", "KEEPALIVE", "Hub"]

log = logging.getLogger("zai_proxy.dashboard.hub")

CLIENT_BUFFER = 64
KEEPALIVE = 30.0
KEEPALIVE_FRAME = b": keepalive\n\n"


def _frame(event: str, data: str) -> bytes:
    # The JSON has no newlines (compact dumps), so one `data:` line holds it.
    return f"event: {event}\ndata: {data}\n\n".encode()


class Hub:
    def __init__(
        self,
        *,
        scrape_interval: float,
        variants: Iterable[str] = (),
        buffer: int = CLIENT_BUFFER,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.scrape_interval = scrape_interval
        self.buffer = buffer
        self.keepalive = keepalive
        self.latest: dict[str, Snapshot] = {}
        self.variants: set[str] = set(variants)
        self.published = 0
        self.dropped = 0
        self.connected_total = 0
        self._clients: dict[int, trio.MemorySendChannel[bytes]] = {}
        self._next_id = 0
        self._closed = False
        self._changed = trio.Event()

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def closed(self) -> bool:
        return self._closed

    def seed(self, latest: dict[str, Snapshot]) -> None:
        """Start from stored snapshots (after a restart) without pushing them to anyone."""
        for variant, snapshot in latest.items():
            if variant not in self.latest or self.latest[variant].ts < snapshot.ts:
                self.latest[variant] = snapshot
            self.variants.add(variant)

    def publish(self, snapshot: Snapshot) -> None:
        self.latest[snapshot.variant] = snapshot
        self.variants.add(snapshot.variant)
        self.published += 1
        frame = _frame("snapshot", snapshot.to_json())
        for client_id, channel in list(self._clients.items()):
            try:
                channel.send_nowait(frame)
            except trio.WouldBlock:
                self._drop(client_id, channel)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._forget(client_id)

    def close(self) -> None:
        """End every stream now, and refuse new ones."""
        self._closed = True
        for client_id, channel in list(self._clients.items()):
            channel.close()
            self._forget(client_id)

    async def wait_changed(self) -> None:
        """Wait until a client joins or leaves (tests and benchmarks use this)."""
        await self._changed.wait()

    def connected_frame(self) -> bytes:
        data = {"scrape_interval_s": self.scrape_interval, "variants": sorted(self.variants)}
        return _frame("connected", json.dumps(data, separators=(",", ":")))

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[bytes]]:
        """A channel of SSE frames, the `connected` one first; closed on exit.

        Synchronous on purpose: it is left from an async generator's finally, where
        awaiting is not safe.
        """
        send, receive = trio.open_memory_channel[bytes](self.buffer)
        send.send_nowait(self.connected_frame())
        client_id = self._next_id
        self._next_id += 1
        if self._closed:
            send.close()
        else:
            self._clients[client_id] = send
            self.connected_total += 1
            self._notify()
        try:
            yield receive
        finally:
            receive.close()
            send.close()
            self._forget(client_id)

    async def stream(self) -> AsyncIterator[bytes]:
        """The body of one /api/events response."""
        with self.subscribe() as frames:
            next_keepalive = trio.current_time() + self.keepalive
            while True:
                frame: bytes | None = None
                # The wait happens inside the cancel scope, the yield outside it: a
                # generator must not yield from inside a cancel scope.
                with trio.move_on_at(next_keepalive):
                    try:
                        frame = await frames.receive()
                    except trio.EndOfChannel:
                        return
                if frame is None:
                    frame = KEEPALIVE_FRAME
                    next_keepalive += self.keepalive
                yield frame

    def _drop(self, client_id: int, channel: trio.MemorySendChannel[bytes]) -> None:
        channel.close()
        self.dropped += 1
        self._forget(client_id)
        log.info(
            "dropped a slow dashboard client",
            extra={"buffer": self.buffer, "clients": len(self._clients)},
        )

    def _forget(self, client_id: int) -> None:
        if self._clients.pop(client_id, None) is not None:
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
