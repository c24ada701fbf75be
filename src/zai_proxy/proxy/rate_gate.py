"""How an upstream attempt gets its turn: the limiter's two backends behind one face.

`RateGate` is what the forwarder and the app see. `LocalGate` (RATE_LIMIT_BACKEND=memory)
is one `AdaptiveLimiter` in this process, judged every window by `run_limiter`.
`SharedGate` (shared_limiter.py, RATE_LIMIT_BACKEND=redis://...) is one limiter for
every proxy on the same Redis and key. Both raise `RateLimited` when a turn would come
later than the caller may wait, and count it.
"""

from __future__ import annotations

from typing import Protocol

import trio

from ..errors import RateLimited
from .limiter import AdaptiveLimiter
from .limiter_loop import report_adjustment, run_limiter
from .metrics import LiveState, ProxyMetrics

__all__ = ["LocalGate", "RateGate", "wait_for_turn"]


class RateGate(Protocol):
    """The limiter as the request path uses it."""

    @property
    def rate(self) -> float:
        """Requests per second this process lets through now."""
        ...

    @property
    def ceiling(self) -> float | None: ...

    def live(self, concurrent: int, max_workers: int) -> LiveState:
        """The scrape-time gauges."""
        ...

    def describe(self) -> dict[str, object]:
        """What /healthz says about the limiter."""
        ...

    async def admit(self, max_wait: float) -> float:
        """Wait for a turn for one upstream attempt; return the time it came (trio's
        clock). Raises RateLimited when the wait would pass max_wait."""
        ...

    def record(self, throttled: bool, sent_at: float) -> None:
        """Count the answer to an attempt admitted at `sent_at` (throttled: a 429)."""
        ...

    def retry_after(self) -> float:
        """Seconds until a new caller would get a turn without waiting."""
        ...

    async def reset(self) -> float:
        """Forget what was learnt; return the rate before."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background work (windows, heartbeats); started before serving."""
        ...


async def wait_for_turn(
    limiter: AdaptiveLimiter,
    max_wait: float,
    metrics: ProxyMetrics,
    began: float,
    leave: trio.Event | None = None,
) -> float | None:
    """Take a turn from a bucket in this process; see AdaptiveLimiter's module notes.

    With `leave`, a caller still waiting gives its turn back and gets None the moment
    the event is set (a shared limiter back up: turns come from there again)."""
    ticket = limiter.reserve(began, max_wait)
    if ticket is None:
        raise rate_limited(metrics, limiter.retry_after(began))
    try:
        # The turn follows the rate as it is when we wake, so ask again after sleeping.
        while (wait := limiter.delay(trio.current_time(), ticket)) > 0:
            if leave is None:
                await trio.sleep(wait)
                continue
            with trio.move_on_after(wait):
                await leave.wait()
            if leave.is_set():
                limiter.cancel(trio.current_time(), ticket)
                return None
    except trio.Cancelled:
        limiter.cancel(trio.current_time(), ticket)
        raise
    return trio.current_time()


def rate_limited(metrics: ProxyMetrics, retry_after: float) -> RateLimited:
    metrics.rejection("rate_limit")
    return RateLimited(
        "zai-proxy rate limit: the shared upstream budget is exhausted; retry later",
        retry_after=retry_after,
    )


class LocalGate:
    """RATE_LIMIT_BACKEND=memory: this process's own limiter."""

    def __init__(self, limiter: AdaptiveLimiter, metrics: ProxyMetrics) -> None:
        self.limiter = limiter
        self._metrics = metrics

    @property
    def rate(self) -> float:
        return self.limiter.rate

    @property
    def ceiling(self) -> float | None:
        return self.limiter.ceiling

    def live(self, concurrent: int, max_workers: int) -> LiveState:
        return LiveState(
            concurrent=concurrent,
            max_workers=max_workers,
            rate_limit_rps=self.limiter.rate,
            rate_limit_ceiling=self.limiter.ceiling,
        )

    def describe(self) -> dict[str, object]:
        return {"rate_limit_backend": "memory", "rate_limit_backend_up": True}

    async def admit(self, max_wait: float) -> float:
        began = trio.current_time()
        sent_at = await wait_for_turn(self.limiter, max_wait, self._metrics, began)
        assert sent_at is not None  # nothing to leave for
        self._metrics.rate_limit_wait.labels(self._metrics.variant).observe(sent_at - began)
        return sent_at

    def record(self, throttled: bool, sent_at: float) -> None:
        adjustment = self.limiter.record(trio.current_time(), throttled=throttled, sent_at=sent_at)
        if adjustment is not None:
            report_adjustment(self._metrics, adjustment)

    def retry_after(self) -> float:
        return self.limiter.retry_after(trio.current_time())

    async def reset(self) -> float:
        old = self.limiter.rate
        self.limiter.reset(trio.current_time())
        return old

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await run_limiter(self.limiter, self._metrics, task_status=task_status)
