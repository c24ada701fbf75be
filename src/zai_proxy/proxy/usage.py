"""Token usage as the upstream reports it, read from JSON answers and SSE streams.

Pure code: no I/O, no clock (the pricing tier takes the time as an argument), and nothing
here raises on bad input, because accounting must never break the answer it watches.

Usage has four directions, billed differently:

* ``input``: prompt tokens read without the cache,
* ``output``: generated tokens (thinking included),
* ``cache_read``: prompt tokens served from the prompt cache,
* ``cache_write``: prompt tokens written to the prompt cache.

Anthropic reports them directly: ``input_tokens`` already excludes both cache counts, so
``input = input_tokens``, ``cache_read = cache_read_input_tokens`` and
``cache_write = cache_creation_input_tokens`` (or, when only the nested form is present,
the sum of the ``cache_creation.ephemeral_*_input_tokens`` fields).

OpenAI's ``prompt_tokens`` INCLUDES the cached tokens, so they map as::

    input       = prompt_tokens - prompt_tokens_details.cached_tokens
    cache_read  = prompt_tokens_details.cached_tokens
    cache_write = 0            (OpenAI does not report cache writes)
    output      = completion_tokens

Subtracting matters: adding ``prompt_tokens`` to input and ``cached_tokens`` to cache_read
would bill every cache read twice, once as plain input (LiteLLM bug #11789).

A field that is missing, null, negative, boolean or not an integer is treated as absent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final, Literal

from .paths import ApiStyle
from .texts import tool_call_texts

__all__ = [
    "DIRECTIONS",
    "Direction",
    "SSEUsageTracker",
    "Source",
    "Usage",
    "usage_from_answer",
    "usage_from_json",
]

Source = Literal["api", "tiktoken", "estimate"]
Direction = Literal["input", "output", "cache_read", "cache_write"]

DIRECTIONS: Final[tuple[Direction, ...]] = ("input", "output", "cache_read", "cache_write")

# Least exact last: merging two counts keeps the worse source, so an estimate is never
# passed off as an exact figure.
_SOURCE_RANK: Final[dict[Source, int]] = {"api": 0, "tiktoken": 1, "estimate": 2}


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one answer, by direction, and where they came from."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    source: Source = "api"

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_write

    @property
    def prompt(self) -> int:
        """All prompt tokens the model read, cached or not."""
        return self.input + self.cache_read + self.cache_write

    def merge(self, other: Usage) -> Usage:
        """The sum of both, labelled with the less exact of the two sources."""
        source = max(self.source, other.source, key=_SOURCE_RANK.__getitem__)
        return Usage(
            input=self.input + other.input,
            output=self.output + other.output,
            cache_read=self.cache_read + other.cache_read,
            cache_write=self.cache_write + other.cache_write,
            source=source,
        )

    def by_direction(self) -> dict[Direction, int]:
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
        }


# --------------------------------------------------------------------------------------
# Reading usage objects


def _count(value: object) -> int | None:
    # bool is an int subclass; `true` is not a token count.
    if type(value) is int and value >= 0:
        return value
    return None


def _anthropic_fields(usage: object) -> tuple[int | None, int | None, int | None, int | None]:
    """(input, output, cache_read, cache_write) from an Anthropic usage object."""
    if not isinstance(usage, dict):
        return None, None, None, None
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    if cache_write is None:
        nested = usage.get("cache_creation")
        if isinstance(nested, dict):
            parts = [c for c in map(_count, nested.values()) if c is not None]
            cache_write = sum(parts) if parts else None
    return (
        _count(usage.get("input_tokens")),
        _count(usage.get("output_tokens")),
        _count(usage.get("cache_read_input_tokens")),
        cache_write,
    )


def _openai_fields(usage: object) -> tuple[int | None, int | None, int | None, int | None]:
    """(input, output, cache_read, cache_write) from an OpenAI usage object."""
    if not isinstance(usage, dict):
        return None, None, None, None
    prompt = _count(usage.get("prompt_tokens"))
    output = _count(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    if prompt is None:
        return None, output, cached, None
    # A cached count above the prompt count is nonsense; cap it so input never goes negative.
    cache_read = min(cached or 0, prompt)
    return prompt - cache_read, output, cache_read, 0


def _usage_of(fields: tuple[int | None, int | None, int | None, int | None]) -> Usage | None:
    # Cache counts alone are not a usage report: input or output must be there.
    inp, out, read, write = fields
    if inp is None and out is None:
        return None
    return Usage(input=inp or 0, output=out or 0, cache_read=read or 0, cache_write=write or 0)


def usage_from_json(body: bytes, style: ApiStyle) -> Usage | None:
    """The usage of a non-streaming answer, or None when it carries none."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return usage_from_answer(obj, style)


def usage_from_answer(obj: object, style: ApiStyle) -> Usage | None:
    """The usage of a non-streaming answer already parsed from JSON, or None."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if style == "anthropic":
        return _usage_of(_anthropic_fields(usage))
    return _usage_of(_openai_fields(usage))


# --------------------------------------------------------------------------------------
# Streams

MAX_LINE: Final = 1 << 20

_ANTHROPIC_WANTED: Final = frozenset({b"message_start", b"message_delta", b"error"})
_ANTHROPIC_TEXT: Final = frozenset({b"content_block_start", b"content_block_delta"})
_USAGE_KEY: Final = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*(n?)')


def _has_usage_value(data: bytes) -> bool:
    # OpenAI chunks carry `"usage": null` until the final one when include_usage is set,
    # so a plain substring test would parse every chunk.
    return any(not m.group(1) for m in _USAGE_KEY.finditer(data))


def _loads_dict(data: bytes) -> dict[str, object] | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _error_type(obj: dict[str, object]) -> str:
    err = obj.get("error")
    if isinstance(err, dict):
        for key in ("type", "code"):
            value = err.get(key)
            if isinstance(value, str) and value:
                return value
    return "error"


class SSEUsageTracker:
    """Watches an SSE stream chunk by chunk and keeps the usage it reports.

    ``feed`` is synchronous, cheap and never raises.  Memory is bounded: a line (or an
    event's data) longer than ``max_line`` bytes is dropped rather than buffered, and
    captured text stops at ``capture_text`` characters.  Lines end in ``\\n`` or
    ``\\r\\n``; a lone ``\\r`` as a line end (allowed by the SSE spec, sent by no LLM API)
    is not recognised.

    Only events that can carry usage or an error are JSON-parsed: for Anthropic
    ``message_start``, ``message_delta`` and ``error``; for OpenAI ``data:`` lines with a
    non-null ``"usage"`` or an ``"error"``.  With ``capture_text > 0`` the generated text
    (text, thinking and tool-argument deltas) is kept too, for local counting when the
    upstream reports no usage; that parses every delta event, so it is off by default.
    """

    __slots__ = (
        "_capture_cap",
        "_data",
        "_data_len",
        "_event",
        "_fields",
        "_has_fields",
        "_max_line",
        "_overflow",
        "_partial",
        "_skip",
        "_style",
        "_text",
        "_text_len",
        "dropped_lines",
        "error",
        "events",
        "malformed",
        "saw_message_stop",
        "text_truncated",
    )

    def __init__(self, style: ApiStyle, *, capture_text: int = 0, max_line: int = MAX_LINE) -> None:
        self._style: ApiStyle = style
        self._max_line = max_line
        self._capture_cap = capture_text
        self._partial = bytearray()
        self._overflow = False
        self._event: bytes | None = None
        self._data: list[bytes] = []
        self._data_len = 0
        self._has_fields = False
        self._skip = False
        self._fields: list[int | None] = [None, None, None, None]
        self._text: list[str] = []
        self._text_len = 0
        self.error: str | None = None
        self.saw_message_stop = False
        self.events = 0
        self.malformed = 0
        self.dropped_lines = 0
        self.text_truncated = False

    # -- results ---------------------------------------------------------------------

    @property
    def usage(self) -> Usage | None:
        return _usage_of((self._fields[0], self._fields[1], self._fields[2], self._fields[3]))

    @property
    def input_known(self) -> int | None:
        """Input tokens reported so far; None until a positive count arrived.

        Some upstreams send a placeholder 0 in ``message_start`` and the real count in
        ``message_delta``, and no real prompt has zero tokens, so 0 means "not yet known".
        """
        value = self._fields[0]
        return value if value else None

    @property
    def complete(self) -> bool:
        """The protocol's end marker arrived (``message_stop`` or ``data: [DONE]``)."""
        return self.saw_message_stop

    @property
    def text(self) -> str:
        """Generated text captured so far (empty unless ``capture_text`` was given)."""
        return "".join(self._text)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for incomplete lines and events: at most about twice ``max_line``."""
        return len(self._partial) + self._data_len

    # -- input -----------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        try:
            self._feed(chunk)
        except Exception:
            # Unreachable by design; if it happens, lose this event, never the stream.
            self.malformed += 1
            self._partial.clear()
            self._overflow = False
            self._reset_event()

    def finish(self) -> None:
        """Handle a last event the stream did not end with a blank line."""
        try:
            if self._partial and not self._overflow:
                line = bytes(self._partial)
                self._partial.clear()
                self._line(line)
            self._dispatch()
        except Exception:
            self.malformed += 1
            self._reset_event()

    def _feed(self, chunk: bytes) -> None:
        start = 0
        end = len(chunk)
        while start < end:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not self._overflow:
                    if len(self._partial) + end - start > self._max_line:
                        self._drop_partial()
                    else:
                        self._partial += chunk[start:]
                return
            if self._overflow:
                self._overflow = False
            elif self._partial:
                if len(self._partial) + nl - start > self._max_line:
                    self._partial.clear()
                    self.dropped_lines += 1
                    self._skip = True
                else:
                    self._partial += chunk[start:nl]
                    line = bytes(self._partial)
                    self._partial.clear()
                    self._line(line)
            elif nl - start > self._max_line:
                self.dropped_lines += 1
                self._skip = True
            else:
                self._line(chunk[start:nl])
            start = nl + 1

    def _drop_partial(self) -> None:
        # The rest of this line is skipped up to its newline, and the event it belongs
        # to can no longer be parsed, so none of it is kept.
        self._partial.clear()
        self._overflow = True
        self.dropped_lines += 1
        self._skip = True

    def _line(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            self._dispatch()
            return
        if line[0] == 0x3A:  # ":" starts a comment (keep-alives)
            return
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._has_fields = True
            if self._skip:
                return
            self._data_len += len(value) + 1
            if self._data_len > self._max_line:
                self._skip = True
                self._data.clear()
                self._data_len = 0
                self.dropped_lines += 1
                return
            self._data.append(value)
        elif field == b"event":
            self._has_fields = True
            self._event = value
            if self._style == "anthropic" and not self._anthropic_wants(value):
                self._skip = True
                self._data.clear()
                self._data_len = 0

    def _anthropic_wants(self, name: bytes) -> bool:
        return name in _ANTHROPIC_WANTED or (self._capture_cap > 0 and name in _ANTHROPIC_TEXT)

    def _event_object(self, data: bytes) -> dict[str, object] | None:
        """The event's JSON object, or None (counted as malformed)."""
        obj = _loads_dict(data)
        if obj is None:
            self.malformed += 1
        return obj

    def _reset_event(self) -> None:
        self._event = None
        self._data.clear()
        self._data_len = 0
        self._has_fields = False
        self._skip = False

    def _dispatch(self) -> None:
        name = self._event
        data = b"\n".join(self._data) if self._data and not self._skip else None
        had_fields = self._has_fields
        self._reset_event()
        if not had_fields:
            return
        self.events += 1
        if self._style == "anthropic":
            self._anthropic(name, data)
        else:
            self._openai(data)

    # -- Anthropic -------------------------------------------------------------------

    def _anthropic(self, name: bytes | None, data: bytes | None) -> None:
        if name == b"message_stop":
            self.saw_message_stop = True
            return
        if data is None:
            return
        if name is None and not (
            b'"usage"' in data
            or b'"error"' in data
            or b"message_stop" in data
            or (self._capture_cap > 0 and b"content_block_" in data)
        ):
            return
        obj = self._event_object(data)
        if obj is None:
            return
        kind = obj.get("type")
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._raise_to(_anthropic_fields(message.get("usage")))
        elif kind == "message_delta":
            self._raise_to(_anthropic_fields(obj.get("usage")))
        elif kind == "message_stop":
            self.saw_message_stop = True
        elif kind == "error" or (name == b"error" and "error" in obj):
            self.error = _error_type(obj)
        elif kind == "content_block_delta" and self._capture_cap > 0:
            delta = obj.get("delta")
            if isinstance(delta, dict):
                for key in ("text", "thinking", "partial_json"):
                    self._capture(delta.get(key))
        elif kind == "content_block_start" and self._capture_cap > 0:
            block = obj.get("content_block")
            if isinstance(block, dict):
                self._capture(block.get("text"))
                self._capture(block.get("thinking"))
                self._capture(block.get("name"))

    def _raise_to(self, fields: tuple[int | None, int | None, int | None, int | None]) -> None:
        # Counts are cumulative, so the latest is the largest; taking the maximum also
        # keeps a placeholder 0 in a later event from erasing a real count.
        for i, value in enumerate(fields):
            if value is not None:
                old = self._fields[i]
                self._fields[i] = value if old is None else max(old, value)

    # -- OpenAI ----------------------------------------------------------------------

    def _openai(self, data: bytes | None) -> None:
        if data is None:
            return
        if data == b"[DONE]":
            self.saw_message_stop = True
            return
        if self._capture_cap <= 0 and not (_has_usage_value(data) or b'"error"' in data):
            return
        obj = self._event_object(data)
        if obj is None:
            return
        usage = obj.get("usage")
        if usage is not None:
            fields = _openai_fields(usage)
            for i, value in enumerate(fields):
                if value is not None:
                    self._fields[i] = value
        if obj.get("error"):
            self.error = _error_type(obj)
        if self._capture_cap > 0:
            self._capture_openai(obj.get("choices"))

    def _capture_openai(self, choices: object) -> None:
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            self._capture(delta.get("reasoning_content"))
            self._capture(delta.get("content"))
            for text in tool_call_texts(delta.get("tool_calls")):
                self._capture(text)

    def _capture(self, value: object) -> None:
        if not isinstance(value, str) or not value:
            return
        room = self._capture_cap - self._text_len
        if room <= 0:
            self.text_truncated = True
            return
        if len(value) > room:
            value = value[:room]
            self.text_truncated = True
        self._text.append(value)
        self._text_len += len(value)
