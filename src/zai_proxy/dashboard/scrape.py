"""The scrape shell: one trio task per target on a fixed schedule, feeding the Collector.

Tick k of every target is at epoch + k * SCRAPE_INTERVAL (`trio.sleep_until` keeps the
grid whatever a scrape costs); each scrape is bounded by SCRAPE_TIMEOUT and by
`MAX_EXPOSITION_BYTES`.  A target that fails is reported to the Collector as down, and
logged once per change, never raised.  httpx's exceptions become `ScrapeError` here.

A target is not trusted to be our proxy.  The body is asked for and read uncompressed
(a few kB of gzip can inflate to gigabytes before any size check), as UTF-8 whatever
charset it claims.  A large exposition is parsed in a worker thread, at most one per
target, inside the scrape's deadline: 16 MB cost seconds of CPU, which on the event loop
would stall every client and every other target.  More than MAX_SERIES series is an
error, since what follows the parse runs on the event loop.  An error quotes at most
200 characters of what the target sent.
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
from .promparse import Exposition, parse
from .snapshot import Snapshot

__all__ = ["MAX_EXPOSITION_BYTES", "MAX_SERIES", "ScrapeLoop", "fetch_metrics"]

log = logging.getLogger("zai_proxy.dashboard.collector")

MAX_EXPOSITION_BYTES = 16 * 1024 * 1024
# Our proxy exposes a few thousand; the work after the parse is about 10 us a series.
MAX_SERIES = 50_000
# What /api/status and the log show of why a target is down.
_ERROR_MAX_CHARS = 200
# Below this a parse takes a few milliseconds: not worth a thread.
_PARSE_ON_LOOP_CHARS = 64 * 1024
_HEADERS = {"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1", "Accept-Encoding": "identity"}


def _too_large() -> ScrapeError:
    return ScrapeError(f"exposition larger than {MAX_EXPOSITION_BYTES} bytes")


async def fetch_metrics(client: httpx.AsyncClient, url: str) -> str:
    """GET one target's exposition; any failure becomes a `ScrapeError`."""
    try:
        async with client.stream("GET", url, headers=_HEADERS) as response:
            if response.status_code != 200:
                raise ScrapeError(f"HTTP {response.status_code}")
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ScrapeError(f"Content-Encoding {encoding[:32]!r}: only identity is accepted")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_EXPOSITION_BYTES:
                raise _too_large()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > MAX_EXPOSITION_BYTES:
                    raise _too_large()
                chunks.append(chunk)
            # The text format is UTF-8; a charset claiming otherwise is not believed.
            return b"".join(chunks).decode("utf-8", errors="replace")
    except httpx.HTTPError as exc:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        parts = urlsplit(url)
        if parts.password:
            message = message.replace(parts.password, "***")
        raise ScrapeError(message) from exc


Fetch = Callable[[str], Awaitable[str]]
Emit = Callable[[Snapshot], Awaitable[None]]


def _parse_bounded(text: str) -> Exposition:
    exposition = parse(text)
    if len(exposition.counters) + len(exposition.gauges) > MAX_SERIES:
        raise ValueError(f"more than {MAX_SERIES} series")
    return exposition


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
        # One parse per target at a time: one abandoned at the deadline runs on in its
        # thread, and the next tick's waits for it rather than piling up beside it.
        self._parsers: dict[str, trio.CapacityLimiter] = {}

    def time_of(self, tick: float) -> float:
        """The trio time of `tick` on the schedule every target keeps."""
        return self._epoch + tick * self._interval

    def forget(self, url: str) -> None:
        """Drop what the loop keeps for `url` (a pod that went away)."""
        self._last_tick.pop(url, None)
        self._down.discard(url)
        self._parsers.pop(url, None)

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
        parser = self._parsers.setdefault(url, trio.CapacityLimiter(1))
        task_status.started()
        while True:
            tick = self._next_tick(url)
            await trio.sleep_until(self._epoch + tick * self._interval)
            self._last_tick[url] = tick
            exposition: Exposition | None = None
            error: str | None = None
            answered = False
            with trio.move_on_after(self._timeout) as scope:
                try:
                    text = await self._fetch(url)
                    answered = True
                    if len(text) <= _PARSE_ON_LOOP_CHARS:
                        exposition = _parse_bounded(text)
                    else:
                        exposition = await trio.to_thread.run_sync(
                            _parse_bounded, text, limiter=parser, abandon_on_cancel=True
                        )
                except (ScrapeError, ValueError) as exc:
                    error = str(exc)
            if scope.cancelled_caught:
                what = "exposition not parsed" if answered else "no answer"
                error = f"{what} within {self._timeout:g}s (SCRAPE_TIMEOUT)"
            elif error is not None and len(error) > _ERROR_MAX_CHARS:
                # A parse error quotes the target's line, which can be megabytes long.
                error = error[:_ERROR_MAX_CHARS] + "\u2026"
            snapshots = self.collector.observe(
                url, tick, at=trio.current_time(), exposition=exposition, error=error
            )
            self._log_transition(url, self.collector.error_of(url))
            for snapshot in snapshots:
                await self._emit(snapshot)
