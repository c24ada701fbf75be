"""Token accounting after a request: API-reported usage first, local counting second.

Runs after the last byte went to the client and after the worker slot was freed, so it
never adds latency; large bodies are counted in a worker thread so no other request's
event-loop time is spent on them.  The request's input was usually counted already,
while it was forwarded (forward.py, for X-Token-Input): that count is reused, so a
prompt is counted once and its tokens recorded once.  Counting never fails a request:
every error here is logged at debug and swallowed.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, time
from typing import Final, Literal
from zoneinfo import ZoneInfo

import trio

from .exchange import Outcome
from .metrics import ModelLabels, ProxyMetrics
from .paths import ApiStyle
from .tokenizer import (
    TokenCounter,
    count_request_async,
    count_response_async,
    count_text_async,
    relative_error,
)
from .usage import DIRECTIONS, Usage

__all__ = ["Accountant", "PricingTier", "pricing_tier"]

log = logging.getLogger("zai_proxy.tokens")

# Share of requests with API-reported usage that are also counted locally, to keep the
# "token count accuracy" evaluation running live at a small cost.
ACCURACY_SAMPLE = 0.05
GENERATION_ROUTES = frozenset({"/v1/messages", "/v1/chat/completions", "/v1/completions"})

PricingTier = Literal["peak", "off_peak"]
_NEW_YORK: Final = ZoneInfo("America/New_York")
_PEAK_START: Final = time(2, 0)
_PEAK_END: Final = time(6, 0)


class Accountant:
    def __init__(
        self,
        *,
        metrics: ProxyMetrics,
        counter: TokenCounter | None,
        models: ModelLabels,
        sample: float = ACCURACY_SAMPLE,
        rng: random.Random | None = None,
    ) -> None:
        self._metrics = metrics
        self._counter = counter
        self._models = models
        self._sample = sample
        self._rng = rng if rng is not None else random.Random()

    async def account(
        self,
        *,
        route: str,
        body: bytes,
        style: ApiStyle,
        model: str | None,
        outcome: Outcome,
        duration: float,
        now: datetime,
    ) -> Usage | None:
        try:
            usage = outcome.usage
            if usage is None:
                # Only generations spend tokens: a count_tokens or models call must not
                # be billed as input just because it carries no usage block.
                if (
                    not (200 <= outcome.status < 300)
                    or self._counter is None
                    or route not in GENERATION_ROUTES
                ):
                    return None
                usage = await self._count_locally(body, style, outcome)
                if usage is None:
                    return None
                outcome.usage = usage
            elif self._counter is not None and body and self._rng.random() < self._sample:
                await self._check_accuracy(body, usage, outcome)
            self._record(usage, self._models.label(model), duration, now)
            return usage
        except trio.Cancelled:
            raise
        except Exception:
            log.debug("token accounting failed", exc_info=True)
            return None

    async def _count_locally(self, body: bytes, style: ApiStyle, outcome: Outcome) -> Usage | None:
        assert self._counter is not None
        started = trio.current_time()
        input_tokens, input_seconds = await self._input_tokens(body, outcome)
        output_tokens = 0
        # Off the event loop when large, as input is: an 8 MB answer without usage took
        # about 230 ms of loop time to count.
        if outcome.output_text:
            output_tokens = await count_text_async(self._counter, outcome.output_text)
        elif outcome.output_text_bytes:
            counted = await count_response_async(self._counter, outcome.output_text_bytes, style)
            output_tokens = counted or 0
        self._metrics.token_count_duration.labels(self._metrics.variant).observe(
            trio.current_time() - started + input_seconds
        )
        if input_tokens is None:
            return None
        return Usage(
            input=input_tokens,
            output=output_tokens,
            cache_read=0,
            cache_write=0,
            source=self._counter.backend,
        )

    async def _input_tokens(self, body: bytes, outcome: Outcome) -> tuple[int | None, float]:
        """The prompt's tokens, and the seconds spent on an earlier count (0 when it is
        counted here): the count made while forwarding if it finished, else a new one."""
        assert self._counter is not None
        count = outcome.input_count
        if count is not None and count.done:
            return count.tokens, count.seconds
        return (await count_request_async(self._counter, body) if body else 0), 0.0

    async def _check_accuracy(self, body: bytes, usage: Usage, outcome: Outcome) -> None:
        estimate, _ = await self._input_tokens(body, outcome)
        # The API's input excludes cached tokens; the model saw all of them.
        actual = usage.input + usage.cache_read + usage.cache_write
        if estimate is not None and actual > 0:
            self._metrics.token_estimate_error.labels("input", self._metrics.variant).observe(
                abs(relative_error(estimate, actual))
            )

    def _record(self, usage: Usage, model: str, duration: float, now: datetime) -> None:
        m = self._metrics
        v = m.variant
        tier = pricing_tier(now)
        values = {
            "input": usage.input,
            "output": usage.output,
            "cache_read": usage.cache_read,
            "cache_write": usage.cache_write,
        }
        for direction in DIRECTIONS:
            count = values[direction]
            if count > 0:
                m.tokens.labels(direction, model, v, tier).inc(count)
        if usage.output > 0 and duration > 0:
            m.token_rate.labels("output", model, v).observe(usage.output / duration)
            m.token_rate_seconds.labels("output", model, v).observe(duration / usage.output)
        if usage.input > 0 and duration > 0:
            m.token_rate.labels("input", model, v).observe(usage.input / duration)
            m.token_rate_seconds.labels("input", model, v).observe(duration / usage.input)


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
