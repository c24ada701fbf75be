"""The scrape shell: one trio task per target on a fixed schedule, feeding the Collector.

Tick k of every target is at epoch + k * SCRAPE_INTERVAL (`trio.sleep_until` keeps the
grid whatever a scrape costs); each scrape is bounded by SCRAPE_TIMEOUT and by
`MAX_EXPOSITION_BYTES`.  A target that fails is reported to the Collector as down, and
logged once per change, never raised.  httpx's exceptions become `ScrapeError` here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx
import trio

from ..errors import ScrapeError
from ..settings import without_userinfo
from .collector import Collector
from .snapshot import Snapshot

__all__ = ["MAX_EXPOSITION_BYTES", "ScrapeLoop", "fetch_metrics"]

log = logging.getLogger("zai_proxy.dashboard.collector")

MAX_EXPOSITION_BYTES = 16 * 1024 * 1024
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


async def fetch_metrics(client: httpx.AsyncClient, url: str) -> str:
    """GET one target's exposition; any failure becomes a `ScrapeError`."""
    try:
        async with client.stream("GET", url, headers={"Accept": _ACCEPT}) as response:
            if response.status_code != 200:
                raise ScrapeError(f"HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_EXPOSITION_BYTES:
                    raise ScrapeError(f"exposition larger than {MAX_EXPOSITION_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")
    except httpx.HTTPError as exc:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        parts = urlsplit(url)
        if parts.password:
            message = message.replace(parts.password, "***")
        raise ScrapeError(message) from exc


Fetch = Callable[[str], Awaitable[str]]
Emit = Callable[[Snapshot], Awaitable[None]]


class ScrapeLoop:
    """Runs the scrape task of each target against one `Collector`."""

    def __init__(
        self,
        collector: Collector,
        *,
        fetch: Fetch,
        emit: Emit,
        timeout: float,
        epoch: float | None = None,
    ) -> None:
        self.collector = collector
        self._fetch = fetch
        self._emit = emit
        self._timeout = timeout
        self._interval = collector.interval
        # Trio time of tick 0; every target's task keeps to the same grid.
        self._epoch = trio.current_time() if epoch is None else epoch
        self._last_tick: dict[str, int] = {}
        self._down: set[str] = set()

    def _log_transition(self, url: str, error: str | None) -> None:
        # Once per change, not once per tick: a target down for a day is one line.
        shown = without_userinfo(url)
        if error is not None and url not in self._down:
            self._down.add(url)
            log.warning("scrape target down", extra={"target": shown, "error": error})
        elif error is None and url in self._down:
            self._down.discard(url)
            log.info("scrape target up again", extra={"target": shown})

    def _next_tick(self, url: str) -> int:
        elapsed = trio.current_time() - self._epoch
        tick = max(0, math.ceil(elapsed / self._interval - 1e-9))
        return max(tick, self._last_tick.get(url, -1) + 1)

    async def run_target(
        self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            tick = self._next_tick(url)
            await trio.sleep_until(self._epoch + tick * self._interval)
            self._last_tick[url] = tick
            text: str | None = None
            error: str | None = None
            with trio.move_on_after(self._timeout) as scope:
                try:
                    text = await self._fetch(url)
                except ScrapeError as exc:
                    error = str(exc)
            if scope.cancelled_caught:
                error = f"no answer within {self._timeout:g}s (SCRAPE_TIMEOUT)"
            snapshots = self.collector.observe(
                url, tick, at=trio.current_time(), text=text, error=error
            )
            self._log_transition(url, self.collector.error_of(url))
            for snapshot in snapshots:
                await self._emit(snapshot)
