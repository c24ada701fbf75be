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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time
from typing import Final, Literal
from zoneinfo import ZoneInfo

__all__ = [
    "DIRECTIONS",
    "ApiStyle",
    "Direction",
    "PricingTier",
    "SSEUsageTracker",
    "Source",
    "Usage",
    "extract_model",
    "is_streaming_request",
    "pricing_tier",
    "usage_from_answer",
    "usage_from_json",
]

ApiStyle = Literal["anthropic", "openai"]
Source = Literal["api", "tiktoken", "estimate"]
Direction = Literal["input", "output", "cache_read", "cache_write"]
PricingTier = Literal["peak", "off_peak"]

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
        obj = _loads_dict(data)
        if obj is None:
            self.malformed += 1
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
        obj = _loads_dict(data)
        if obj is None:
            self.malformed += 1
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
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        self._capture(fn.get("name"))
                        self._capture(fn.get("arguments"))

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


# --------------------------------------------------------------------------------------
# Pricing tier

_NEW_YORK: Final = ZoneInfo("America/New_York")
_PEAK_START: Final = time(2, 0)
_PEAK_END: Final = time(6, 0)


def pricing_tier(now: datetime) -> PricingTier:
    """Z.AI's 2x window: "peak" from 02:00 to 06:00 New York local time, else "off_peak".

    ``now`` must be timezone-aware.  On the spring-forward day 02:00-03:00 does not
    exist, so the window is 03:00-06:00 EDT; in autumn 01:00-02:00 happens twice, both
    times off-peak.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("pricing_tier needs an aware datetime")
    local = now.astimezone(_NEW_YORK).time()
    return "peak" if _PEAK_START <= local < _PEAK_END else "off_peak"


# --------------------------------------------------------------------------------------
# Request fields
#
# A request body can be 32 MiB, and the Stainless SDKs (Anthropic and OpenAI Python)
# write keys in alphabetical order, so "model" and "stream" come after "messages".  A
# full json.loads costs about 2 ms per MiB with the GIL held, so instead:
#
# 1. Walk the top-level members of the first 64 KiB with the C JSON scanner.  A key
#    found there is exact and costs microseconds.  A body that fits entirely is exact.
# 2. Otherwise look for every `"<key>":` in the body (a C-speed regex) and check each
#    one by walking forward from it: a top-level member is followed only by sibling
#    members and the closing brace that ends the body; a nested one reaches its own
#    closing brace with more JSON after it.  Inside a JSON string a quote is always
#    escaped, so `"key":` can only be a real key unless a backslash precedes it.
#    The walk costs the parse of what follows the key (system prompt and tools, a few
#    hundred KiB at most), usually far less than the whole body.
# 3. Past a work budget (pathological bodies with many nested candidates), fall back to
#    a full parse.
#
# The body is assumed to be one well-formed JSON object; for malformed bodies the
# answer may differ from json.loads's (which would fail): the upstream rejects those.
# Bodies up to 64 KiB are walked to the end and match json.loads exactly.

_HEAD: Final = 64 * 1024
_WALK_WINDOW: Final = 64 * 1024
_WS: Final = re.compile(r"[ \t\n\r]*")
_TRAILING_WS: Final = re.compile(rb"[ \t\n\r]*\Z")
_DECODER: Final = json.JSONDecoder()
# The C string scanner json itself uses; typeshed does not declare it.
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _skip_ws(text: str, idx: int) -> int:
    match = _WS.match(text, idx)
    return idx if match is None else match.end()


class _Missing:
    """The key is not a top-level member."""


class _Unknown:
    """The walk could not decide (the window ended first)."""


_MISSING: Final = _Missing()
_UNKNOWN: Final = _Unknown()


def _member(text: str, idx: int) -> tuple[str, object, int]:
    """Parse `"key": value` at text[idx]; return key, value and the index after it."""
    if text[idx] != '"':
        raise ValueError("expected a key")
    key, idx = _scanstring(text, idx + 1)
    idx = _skip_ws(text, idx)
    if text[idx] != ":":
        raise ValueError("expected a colon")
    idx = _skip_ws(text, idx + 1)
    value, idx = _DECODER.raw_decode(text, idx)
    return key, value, _skip_ws(text, idx)


def _head_lookup(body: bytes, key: str) -> object:
    # A body that fits is walked to its end, so the answer matches json.loads's (last
    # duplicate wins, malformed means absent); a longer one stops at the first match.
    complete = len(body) <= _HEAD
    text = body[:_HEAD].decode("utf-8", "replace")
    found: object = _MISSING
    try:
        idx = _skip_ws(text, 0)
        if text[idx] != "{":
            return _MISSING
        idx = _skip_ws(text, idx + 1)
        if text[idx] == "}":
            return _MISSING if text[idx + 1 :].strip(" \t\n\r") else found
        while True:
            name, value, idx = _member(text, idx)
            if name == key:
                if not complete:
                    # A value ending exactly at the cut may itself be cut (a number).
                    return _UNKNOWN if idx >= len(text) else value
                found = value
            if text[idx] == "}":
                return _MISSING if text[idx + 1 :].strip(" \t\n\r") else found
            if text[idx] != ",":
                raise ValueError("expected a comma")
            idx = _skip_ws(text, idx + 1)
    except (ValueError, IndexError, RecursionError):
        return _MISSING if complete else _UNKNOWN


def _walk_from(body: bytes, start: int, window: int | None) -> object:
    """The value of the member at body[start] if it is top-level, else _MISSING."""
    stop = len(body) if window is None else min(len(body), start + window)
    text = body[start:stop].decode("utf-8", "replace")
    try:
        _, value, idx = _member(text, 0)
        while text[idx] == ",":
            _, _, idx = _member(text, _skip_ws(text, idx + 1))
        if text[idx] != "}":
            return _MISSING
    except (ValueError, IndexError, RecursionError):
        return _MISSING if stop == len(body) else _UNKNOWN
    if text[idx + 1 :].strip(" \t\n\r"):
        return _MISSING
    if stop < len(body) and _TRAILING_WS.match(body, stop) is None:
        return _MISSING
    return value


def _top_level(body: bytes, key: str) -> object:
    found = _head_lookup(body, key)
    if not isinstance(found, _Unknown):
        return found
    budget = 4 * len(body)
    pattern = re.compile(b'"' + re.escape(key.encode()) + rb'"[ \t\n\r]*:')
    for match in pattern.finditer(body):
        start = match.start()
        if start and body[start - 1] == 0x5C:  # a backslash: an escaped quote in a string
            continue
        for window in (_WALK_WINDOW, 16 * _WALK_WINDOW, None):
            budget -= len(body) - start if window is None else min(window, len(body) - start)
            if budget < 0:
                return _full_parse(body, key)
            found = _walk_from(body, start, window)
            if not isinstance(found, _Unknown):
                break
        if not isinstance(found, _Missing | _Unknown):
            return found
    return _MISSING


def _full_parse(body: bytes, key: str) -> object:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return _MISSING
    return obj.get(key, _MISSING) if isinstance(obj, dict) else _MISSING


def extract_model(body: bytes) -> str | None:
    """The top-level "model" string of a JSON request body, or None."""
    try:
        value = _top_level(body, "model")
    except Exception:
        return None
    return value if isinstance(value, str) else None


def is_streaming_request(body: bytes) -> bool:
    """Whether a JSON request body has a top-level `"stream": true`."""
    try:
        return _top_level(body, "stream") is True
    except Exception:
        return False
