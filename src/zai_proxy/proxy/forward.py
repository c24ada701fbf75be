"""One client request, carried to the upstream and back: attempts, retries, streaming.

Every call that touches the upstream runs inside `upstream_errors(phase)`, where httpx's
exceptions become ours (`upstream_errors.py`); the retry loop decides only on our
classes.  Nothing is written to the client until an answer has been validated: a
non-streaming body is read whole and parsed, a stream's first chunk is peeked.  After
that the answer is committed and the stream is relayed chunk by chunk, each written the
moment it arrives.

Every answer carries ``X-Token-Input``: the upstream's input usage when it is known before
the headers go (a JSON answer's usage, a stream's ``message_start``), else the request's
prompt as counted locally while the upstream worked (``InputCount``), and
``X-Token-Input-Source: upstream|estimate`` says which (the upstream's figure is its
uncached input, as its usage reports it; ours is the whole prompt).  The headers wait for
the count at most ``INPUT_COUNT_WAIT``; past that the answer goes without both headers.
"""

from __future__ import annotations

import json
import logging

import httpx
import trio

from ..errors import (
    ClientStalled,
    EmptyStream,
    ProxyError,
    RetryableError,
    StreamBroken,
    TruncatedResponse,
    UpstreamError,
    UpstreamThrottled,
)
from .exchange import Downstream, Exchange, Outcome
from .headers import (
    header_value,
    parse_retry_after,
    request_headers,
    response_headers,
    token_input_headers,
)
from .metrics import ProxyMetrics
from .rate_gate import RateGate
from .sse import WholeEvents
from .tokenizer import InputCount, InputSource, TokenCounter
from .upstream_errors import HTTPX_ERRORS, Phase, upstream_errors
from .usage import SSEUsageTracker, usage_from_answer
from .wire import stream_error_event

__all__ = ["Forwarder"]

log = logging.getLogger("zai_proxy.proxy")

# How much of a stream's first chunk is inspected before committing (seed: 4 KiB).
PEEK_BYTES = 4096
# Bodies of error answers (429, 422, ...) are read whole to pass on; cap what we hold.
MAX_ERROR_BODY = 1024 * 1024
# Generated text kept from an OpenAI-style stream for local counting, in characters.
TEXT_CAPTURE_CHARS = 256 * 1024
# Longest the headers wait for the local input count when the upstream reported none.
# Counting a large prompt takes far less than the upstream's first byte, so this only
# binds when the upstream answers at once (an error) to a prompt of several MiB.
INPUT_COUNT_WAIT = 0.1
# Status codes for an `error` event that arrives inside a 200 stream, for the metrics.
_STREAM_ERROR_STATUS = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "invalid_request_error": 400,
}


class Forwarder:
    """Carries exchanges upstream with retries, through the shared limiter."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport,
        api_key: str,
        gate: RateGate,
        metrics: ProxyMetrics,
        max_retries: int,
        backoff_base: float,
        retry_after_cap: float,
        max_wait: float,
        counter: TokenCounter | None = None,
    ) -> None:
        """`counter`: counts each request's input for X-Token-Input; None (token counting
        switched off) sends the header only when the upstream reports the input."""
        # The client builds requests (its timeouts, its default headers); the transport
        # sends them, without the client's cookie jar (see upstream.py).
        self._client = client
        self._transport = transport
        # Held only as the header value; never formatted into text anywhere else.
        self._authorization = b"Bearer " + api_key.encode("latin-1")
        self._gate = gate
        self._metrics = metrics
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._retry_after_cap = retry_after_cap
        self._max_wait = max_wait
        self._counter = counter

    def backoff(self, retry: int, error: RetryableError) -> float:
        """Delay before retry number `retry` (1-based): Retry-After when the upstream gave
        one (capped), else base x 1, 2, 4, ..."""
        if error.retry_after is not None:
            return min(error.retry_after, self._retry_after_cap)
        return float(self._backoff_base * (2 ** (retry - 1)))

    async def forward(self, exchange: Exchange, downstream: Downstream, outcome: Outcome) -> None:
        """Answer the exchange, or raise the ProxyError the client should get instead.

        `outcome` is filled in as it goes, so it is accurate even when this is cancelled."""
        if self._counter is None or not exchange.body:
            await self._forward(exchange, downstream, outcome)
            return
        count = InputCount(self._counter, exchange.body)
        outcome.input_count = count
        failure: ProxyError | ClientStalled | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count.run)
            try:
                await self._forward(exchange, downstream, outcome)
            except (ProxyError, ClientStalled) as exc:
                # Raised from outside the nursery, so callers catch it as it is rather
                # than inside an ExceptionGroup.
                failure = exc
                if isinstance(exc, ProxyError) and outcome.token_input_source is None:
                    # The proxy answers this itself (its own 429, the upstream's last
                    # 429, a 502 or 504): the count goes on that answer too.
                    await self._token_input(exchange, outcome, None)
            # The answer is done: a count still running is abandoned, not waited for.
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _forward(self, exchange: Exchange, downstream: Downstream, outcome: Outcome) -> None:
        headers = request_headers(exchange.headers, self._authorization)
        last_error: RetryableError | None = None
        for attempt in range(self._max_retries + 1):
            if last_error is not None:
                delay = self.backoff(attempt, last_error)
                self._metrics.retry(last_error.reason)
                outcome.retry_reasons.append(last_error.reason)
                log.debug(
                    "retrying",
                    extra={
                        "request_id": exchange.request_id,
                        "reason": last_error.reason,
                        "delay_s": round(delay, 3),
                        "attempt": attempt + 1,
                    },
                )
                await trio.sleep(delay)
            sent_at = await self._gate.admit(self._max_wait)
            outcome.attempts = attempt + 1
            try:
                await self._attempt(exchange, headers, downstream, outcome, sent_at)
            except RetryableError as error:
                self._metrics.upstream_error(error.error_type)
                if error.after_sent and not exchange.repeatable:
                    # The upstream had the whole request and may have acted on it
                    # (created a batch, say); another attempt could do it twice.
                    raise
                last_error = error
                continue
            except UpstreamError as error:
                self._metrics.upstream_error(error.error_type)
                raise
            return
        assert last_error is not None
        raise last_error

    async def _attempt(
        self,
        exchange: Exchange,
        headers: list[tuple[bytes, bytes]],
        downstream: Downstream,
        outcome: Outcome,
        sent_at: float,
    ) -> None:
        with upstream_errors(Phase.BUILD):
            request = self._client.build_request(
                exchange.method, exchange.url, headers=headers, content=exchange.body
            )
        with upstream_errors(Phase.SEND):
            response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            status = response.status_code
            self._gate.record(status == 429, sent_at)
            if status == 429:
                body = await _read_capped(response)
                raise UpstreamThrottled(
                    "the upstream is rate limiting (429)",
                    retry_after=parse_retry_after(
                        header_value(response.headers.raw, b"retry-after")
                    ),
                    headers=list(response.headers.raw),
                    body=body,
                )
            if _is_event_stream(response):
                await self._relay_stream(exchange, response, downstream, outcome)
            else:
                await self._relay_whole(exchange, response, downstream, outcome)
        finally:
            with trio.move_on_after(1, shield=True):
                await response.aclose()

    async def _relay_whole(
        self,
        exchange: Exchange,
        response: httpx.Response,
        downstream: Downstream,
        outcome: Outcome,
    ) -> None:
        status = response.status_code
        with upstream_errors(Phase.BODY):
            body = await response.aread()
        # Only an answer that must be JSON is checked: an empty 202, or a DELETE's empty
        # text/plain 200, is a complete answer.
        must_be_json = exchange.expects_json or _declares_json(response)
        if 200 <= status < 300 and exchange.method != "HEAD" and status != 204 and must_be_json:
            if not body.strip():
                raise TruncatedResponse("the upstream sent an empty body")
            try:
                answer = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise TruncatedResponse("the upstream sent invalid JSON") from exc
            outcome.usage = usage_from_answer(answer, exchange.style)
            if outcome.usage is None:
                outcome.output_text_bytes = body
        if status == 422:
            self._metrics.upstream_error("422")
            log.warning(
                "upstream rejected the request (422)",
                extra={
                    "request_id": exchange.request_id,
                    "request_body": _printable(exchange.body),
                    "response_body": _printable(body),
                },
            )
        headers = response_headers(response.headers.raw)
        length = str(len(body)).encode()
        if exchange.method == "HEAD":
            # No body comes with a HEAD answer: its length is the one a GET would have.
            length = header_value(response.headers.raw, b"content-length") or length
        headers.append((b"content-length", length))
        headers.append((b"x-request-id", exchange.request_id.encode()))
        reported = outcome.usage.input if outcome.usage is not None else None
        headers += await self._token_input(exchange, outcome, reported)
        outcome.status = status
        outcome.committed = True
        outcome.response_bytes = len(body)
        await downstream.answer(status, headers, body)

    async def _token_input(
        self, exchange: Exchange, outcome: Outcome, reported: int | None
    ) -> list[tuple[bytes, bytes]]:
        """X-Token-Input and its source for the answer's headers (none when unknown)."""
        source: InputSource = "upstream"
        tokens = reported
        count = outcome.input_count
        if tokens is None and count is not None:
            source = "estimate"
            tokens = await count.wait(INPUT_COUNT_WAIT)
            if not count.done:
                log.info(
                    "input count not ready when the headers went; X-Token-Input omitted",
                    extra={
                        "request_id": exchange.request_id,
                        "body_bytes": len(exchange.body),
                        "waited_s": INPUT_COUNT_WAIT,
                    },
                )
        if tokens is None:
            return []
        outcome.token_input = tokens
        outcome.token_input_source = source
        return token_input_headers(tokens, source)

    async def _relay_stream(
        self,
        exchange: Exchange,
        response: httpx.Response,
        downstream: Downstream,
        outcome: Outcome,
    ) -> None:
        chunks = response.aiter_bytes()
        with upstream_errors(Phase.STREAM_START):
            first = await anext(chunks, b"")
        if not first:
            raise EmptyStream("the upstream's stream closed before its first byte")

        # OpenAI streams report usage only when the client asked for it, so their text is
        # kept (capped) for local counting; Anthropic streams always carry usage.
        capture = TEXT_CAPTURE_CHARS if exchange.style == "openai" else 0
        tracker = SSEUsageTracker(exchange.style, capture_text=capture)
        tracker.feed(first[:PEEK_BYTES])
        if len(first) > PEEK_BYTES:
            tracker.feed(first[PEEK_BYTES:])
        headers = response_headers(response.headers.raw)
        headers.append((b"x-request-id", exchange.request_id.encode()))
        headers += await self._token_input(exchange, outcome, tracker.input_known)
        outcome.status = response.status_code
        outcome.committed = True
        outcome.streamed = True
        await downstream.start(response.status_code, headers)
        events = WholeEvents()
        sent = 0
        if out := events.take(first):
            await downstream.body(out)
            sent += len(out)
        broken: UpstreamError | None = None
        try:
            with upstream_errors(Phase.STREAM):
                async for chunk in chunks:
                    tracker.feed(chunk)
                    if out := events.take(chunk):
                        await downstream.body(out)
                        sent += len(out)
        except StreamBroken as exc:
            broken = exc
        except trio.Cancelled:
            # Cut from outside: the shutdown deadline passed, or the client left.  End
            # the stream with an error event while the connection may still take it,
            # so the client sees why rather than a stream that merely stops.
            outcome.status = 503
            outcome.error_type = "cancelled"
            event = events.abandon() + stream_error_event(
                exchange.style, "zai-proxy stopped before the stream ended"
            )
            with trio.move_on_after(1, shield=True):
                try:
                    await downstream.body(event)
                except ClientStalled:
                    pass  # the client is gone too; the cancellation still goes on
            raise
        tracker.finish()
        if (
            broken is None
            and 200 <= response.status_code < 300
            and not tracker.complete
            and tracker.error is None
        ):
            # A clean close without the protocol's end marker is a broken stream too.
            broken = StreamBroken("the upstream stream was interrupted")
        if broken is not None:
            self._metrics.upstream_error(broken.error_type)
            outcome.error_type = broken.error_type
            outcome.status = broken.status
            event = events.abandon() + stream_error_event(
                exchange.style, "the upstream stream was interrupted"
            )
            await downstream.body(event)
            sent += len(event)
        elif out := events.finish():
            await downstream.body(out)
            sent += len(out)
        elif tracker.error is not None:
            self._metrics.upstream_error("stream_error_event")
            outcome.error_type = "stream_error_event"
            outcome.status = _STREAM_ERROR_STATUS.get(tracker.error, 502)
        outcome.usage = tracker.usage
        if outcome.usage is None and capture:
            outcome.output_text = tracker.text
        outcome.response_bytes = sent
        await downstream.body(b"", more=False)


def _is_event_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def _declares_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    content_type = content_type.split(";", 1)[0].strip().lower()
    return content_type == "application/json" or content_type.endswith("+json")


async def _read_capped(response: httpx.Response) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size >= MAX_ERROR_BODY:
                break
    except HTTPX_ERRORS:
        pass  # what arrived is passed on; the status says enough
    return b"".join(parts)[:MAX_ERROR_BODY]


def _printable(body: bytes, limit: int = 64 * 1024) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return text if len(body) <= limit else text + f"... ({len(body)} bytes)"
