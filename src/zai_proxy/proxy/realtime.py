"""What a Realtime API session's server events say about usage and the model.

Pure code: no I/O, no clock, and nothing here raises on bad input, because accounting
must never break the session it watches.

Z.AI's GLM-Realtime and OpenAI's Realtime API send JSON text events. Usage comes in the
``response.done`` event, one per response::

    {"type": "response.done", "response": {"usage": {
        "input_tokens": 120, "output_tokens": 30,
        "input_token_details": {"cached_tokens": 64, ...}}}}

``input_tokens`` INCLUDES the cached tokens, as OpenAI's ``prompt_tokens`` does over
HTTP, so they map the same way (see usage.py)::

    input      = input_tokens - cached_tokens
    cache_read = cached_tokens
    output     = output_tokens

The model is named by the ``session.created`` and ``session.updated`` events
(``session.model``), when the URL's ``model`` query did not name it.

Only events that can matter are parsed: a text is searched for the event names first
(audio deltas are large and frequent), and one longer than ``MAX_EVENT_CHARS`` is skipped.
"""

from __future__ import annotations

import json
from typing import Final
from urllib.parse import parse_qs

from .usage import Usage

__all__ = ["MAX_EVENT_CHARS", "RealtimeEvents", "model_from_query", "realtime_usage"]

MAX_EVENT_CHARS: Final = 1 << 20
_USAGE_EVENT: Final = '"response.done"'
_SESSION_EVENTS: Final = ('"session.created"', '"session.updated"')
_MODEL_MAX_LEN: Final = 256


def _count(value: object) -> int | None:
    # bool is an int subclass; `true` is not a token count.
    if type(value) is int and value >= 0:
        return value
    return None


def realtime_usage(usage: object) -> Usage | None:
    """The Usage of a ``response.done`` event's ``response.usage`` object, or None."""
    if not isinstance(usage, dict):
        return None
    total_in = _count(usage.get("input_tokens"))
    output = _count(usage.get("output_tokens"))
    if total_in is None and output is None:
        return None
    details = usage.get("input_token_details")
    if not isinstance(details, dict):
        # The Responses API spells it with an s; accept both.
        details = usage.get("input_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    # A cached count above the input count is nonsense; cap it so input never goes negative.
    cache_read = min(cached or 0, total_in or 0)
    return Usage(input=(total_in or 0) - cache_read, output=output or 0, cache_read=cache_read)


def model_from_query(query: bytes) -> str | None:
    """The ``model`` parameter of a WebSocket URL's query string, or None."""
    try:
        values = parse_qs(query.decode("latin-1"), max_num_fields=64).get("model")
    except ValueError:
        return None
    return values[0][:_MODEL_MAX_LEN] if values and values[0] else None


class RealtimeEvents:
    """Reads one session's server events, one text message at a time.

    ``feed`` returns the usage a ``response.done`` event reports (None for any other
    message) and keeps the model a session event names in ``model``.
    """

    __slots__ = ("model", "responses")

    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self.responses = 0

    def feed(self, text: str) -> Usage | None:
        if len(text) > MAX_EVENT_CHARS:
            return None
        wants_usage = _USAGE_EVENT in text
        wants_model = self.model is None and any(name in text for name in _SESSION_EVENTS)
        if not (wants_usage or wants_model):
            return None
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "response.done":
            response = event.get("response")
            if not isinstance(response, dict):
                return None
            self.responses += 1
            return realtime_usage(response.get("usage"))
        if wants_model and kind in ("session.created", "session.updated"):
            session = event.get("session")
            model = session.get("model") if isinstance(session, dict) else None
            if isinstance(model, str) and model:
                self.model = model[:_MODEL_MAX_LEN]
        return None
