"""The client's request body: read whole within its limits, and scanned for its model.

`read_body` reads an ASGI request body up to MAX_BODY_BYTES.  An oversized body is
still read to its end (and thrown away, up to `DRAIN_LIMIT` bytes or `DRAIN_SECONDS`):
a server that answers and closes while the client is still sending makes the kernel
reset the connection, and the client then sees a connection error instead of our 413.

`extract_model` and `is_streaming_request` find top-level fields of a JSON body without
parsing all of it (see the notes above `_top_level`).  They never raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import trio

from ..errors import BadRequest, BodyTooLarge

__all__ = [
    "DRAIN_LIMIT",
    "DRAIN_SECONDS",
    "ClientGone",
    "declared_length",
    "drain",
    "extract_model",
    "is_streaming_request",
    "read_body",
]

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

# How much of an oversized request body is read and discarded before the 413 goes out.
DRAIN_LIMIT = 64 * 1024 * 1024
DRAIN_SECONDS = 10.0


class ClientGone(Exception):
    """The client closed the connection before its request body arrived."""


async def read_body(headers: list[tuple[bytes, bytes]], receive: Receive, limit: int) -> bytes:
    """The whole request body, or BodyTooLarge once it passes `limit` bytes.

    BadRequest for a Content-Length that is not a number; ClientGone when the client
    hangs up first."""
    declared = declared_length(headers)
    too_large = BodyTooLarge(
        f"request body of {declared if declared is not None else 'more than ' + str(limit)}"
        f" bytes is over the {limit}-byte limit (MAX_BODY_BYTES)"
    )
    if declared is not None and declared > limit:
        await drain(receive, declared)
        raise too_large
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                parts.clear()
                if message.get("more_body", False):
                    await drain(receive, None)
                raise too_large
            parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length the client declared, None without one; BadRequest if it is not
    a number (hypercorn has already refused a negative or conflicting one)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise BadRequest("Content-Length is not a number") from None
    return None


async def drain(receive: Receive, declared: int | None) -> None:
    """Read and throw away what is left of a body we will not use (bounded), so the
    client sees our answer and not a reset; ClientGone if it hangs up."""
    if declared is not None and declared > DRAIN_LIMIT:
        return
    drained = 0
    with trio.move_on_after(DRAIN_SECONDS):
        while drained <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


# --------------------------------------------------------------------------------------
# The model/stream scanner
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
