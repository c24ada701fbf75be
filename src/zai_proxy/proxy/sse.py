"""Relaying SSE whole events at a time, so a client never holds half of one.

An upstream that dies in the middle of a ``data:`` line leaves its client with the first
half of an event.  If the proxy then appended its own error event, the two would read as
one broken event (the SDKs raise a JSON error instead of the API error).  So each chunk
is passed on up to its last event boundary (a blank line), and what follows waits for
the rest of its event; a stream that dies drops it.  Heartbeats and every complete event
still go out the moment they arrive.

Pure: no I/O.  Memory is bounded: a partial event longer than `limit` is passed on as
it is rather than held (`mid_event` then says a boundary is owed before anything else).
"""

from __future__ import annotations

from typing import Final

__all__ = ["PARTIAL_EVENT_LIMIT", "WholeEvents"]

PARTIAL_EVENT_LIMIT: Final = 1 << 20

_BOUNDARIES: Final = ((b"\n\n", 2), (b"\r\n\r\n", 4), (b"\r\r", 2))


def _last_boundary_end(data: bytes) -> int:
    """The index just after the last blank line in `data`, or 0 if it has none."""
    end = 0
    for marker, size in _BOUNDARIES:
        found = data.rfind(marker)
        if found >= 0:
            end = max(end, found + size)
    return end


class WholeEvents:
    """Cuts a byte stream into runs of whole SSE events."""

    __slots__ = ("_limit", "_pending", "mid_event")

    def __init__(self, limit: int = PARTIAL_EVENT_LIMIT) -> None:
        self._limit = limit
        self._pending = b""
        self.mid_event = False
        """What was passed on so far ends inside an event (only past `limit`)."""

    @property
    def pending(self) -> int:
        """Bytes held back: the start of an event whose end has not arrived."""
        return len(self._pending)

    def take(self, chunk: bytes) -> bytes:
        """What of the stream so far can go out now: every event completed by `chunk`."""
        data = self._pending + chunk if self._pending else chunk
        end = _last_boundary_end(data)
        if self.mid_event and end:
            # The oversized event ended: from here on, whole events again.
            self.mid_event = False
        if len(data) - end > self._limit:
            self._pending = b""
            self.mid_event = True
            return data
        self._pending = data[end:]
        return data[:end]

    def finish(self) -> bytes:
        """At a clean end of the stream: the last event, even without its blank line."""
        rest, self._pending = self._pending, b""
        return rest

    def abandon(self) -> bytes:
        """At a broken end: drop the partial event; returns what must come before an
        event of ours (a blank line, if the stream was left inside an event)."""
        self._pending = b""
        return b"\n\n" if self.mid_event else b""
