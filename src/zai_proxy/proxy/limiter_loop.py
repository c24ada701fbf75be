"""The trio shell around the pure limiter: its settings, its window task, and what each
of its decisions leaves behind (one log line, one counter increment)."""

from __future__ import annotations

import logging

import trio

from ..settings import ProxySettings
from .limiter import AdaptiveLimiter, Adjustment, LimiterConfig
from .metrics import ProxyMetrics

__all__ = ["limiter_config", "report_adjustment", "run_limiter"]

log = logging.getLogger("zai_proxy.limiter")


def limiter_config(settings: ProxySettings) -> LimiterConfig:
    return LimiterConfig(
        initial=settings.rate_limit_initial,
        minimum=settings.rate_limit_min,
        maximum=settings.rate_limit_max,
        ceiling_alpha=settings.rate_limit_ceiling_alpha,
        hold_margin=settings.rate_limit_hold_margin,
        probe_interval=settings.rate_limit_probe_interval,
        window=settings.rate_limit_window,
        max_wait=settings.rate_limit_max_wait,
    )


async def run_limiter(
    limiter: AdaptiveLimiter,
    metrics: ProxyMetrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every window (RATE_LIMIT_WINDOW), let the limiter judge the window just ended."""
    window = limiter.config.window
    next_tick = trio.current_time() + window
    task_status.started()
    while True:
        await trio.sleep_until(next_tick)
        next_tick += window
        adjustment = limiter.adjust(trio.current_time())
        if adjustment is not None:
            report_adjustment(metrics, adjustment)


def report_adjustment(metrics: ProxyMetrics, adjustment: Adjustment) -> None:
    """One log line and one counter increment per limiter decision that changed the rate."""
    if adjustment.direction == "hold":
        log.debug("rate limit held", extra=_adjustment_fields(adjustment))
        return
    metrics.rate_limit_adjustments.labels(adjustment.direction, metrics.variant).inc()
    log.info("rate limit adjusted", extra=_adjustment_fields(adjustment))


def _adjustment_fields(adjustment: Adjustment) -> dict[str, object]:
    return {
        "direction": adjustment.direction,
        "reason": adjustment.reason,
        "old_rate": round(adjustment.old_rate, 3),
        "new_rate": round(adjustment.new_rate, 3),
        "ceiling": None if adjustment.ceiling is None else round(adjustment.ceiling, 3),
        "observed": None if adjustment.observed is None else round(adjustment.observed, 3),
        "throttled_fraction": round(adjustment.throttled_fraction, 4),
        "answers": adjustment.answers,
    }
