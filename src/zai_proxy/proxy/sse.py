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

import re
from typing import Final

__all__ = ["PARTIAL_EVENT_LIMIT", "WholeEvents"]

PARTIAL_EVENT_LIMIT: Final = 1 << 20

# A blank line: two line ends in a row, each LF, CRLF or a lone CR, mixed as the sender
# pleases (the SSE spec allows all three).  Atomic groups keep one CRLF from counting as
# two line ends.
_BLANK_LINE: Final = re.compile(rb"(?>\r\n|\n|\r)(?>\r\n|\n|\r)")


def _last_boundary_end(data: bytes, start: int) -> int:
    """The index just after the last blank line in `data` at or after `start`, or 0."""
    end = 0
    for match in _BLANK_LINE.finditer(data, start):
        end = match.end()
    return end


class WholeEvents:
    """Cuts a byte stream into runs of whole SSE events."""

    __slots__ = ("_after_cr", "_limit", "_pending", "mid_event")

    def __init__(self, limit: int = PARTIAL_EVENT_LIMIT) -> None:
        self._limit = limit
        self._pending = b""
        # What went out last ended on a CR that was the last byte received: an LF that
        # comes next completes that CRLF and goes out with no wait.
        self._after_cr = False
        self.mid_event = False
        """What was passed on so far ends inside an event (only past `limit`)."""

    @property
    def pending(self) -> int:
        """Bytes held back: the start of an event whose end has not arrived."""
        return len(self._pending)

    def take(self, chunk: bytes) -> bytes:
        """What of the stream so far can go out now: every event completed by `chunk`."""
        lead = b""
        if self._after_cr and chunk[:1] == b"\n":
            lead, chunk = b"\n", chunk[1:]
        self._after_cr = False
        held = len(self._pending)
        data = self._pending + chunk if held else chunk
        # What is held has no blank line in it, so only its last bytes (the start of a
        # blank line the chunk completes) and the chunk need looking at.
        end = _last_boundary_end(data, max(0, held - 3))
        if self.mid_event and end:
            # The oversized event ended: from here on, whole events again.
            self.mid_event = False
        if len(data) - end > self._limit:
            self._pending = b""
            self.mid_event = True
            return lead + data
        # A blank line that ends on the last byte received with a CR may be a CRLF cut in
        # two (within what arrived, the pattern takes a whole CRLF itself).
        self._after_cr = end == len(data) and data[-1:] == b"\r"
        self._pending = data[end:]
        return lead + data[:end]

    def finish(self) -> bytes:
        """At a clean end of the stream: the last event, even without its blank line."""
        rest, self._pending = self._pending, b""
        return rest

    def abandon(self) -> bytes:
        """At a broken end: drop the partial event; returns what must come before an
        event of ours (a blank line, if the stream was left inside an event)."""
        self._pending = b""
        return b"\n\n" if self.mid_event else b""
