"""DNS service discovery: the trio shell that turns a dns+ target into one task per pod.

```
Discovery.run (one per dns+ target, supervised)
├─ resolve NAME at start, then every DNS_REFRESH_SCRAPES ticks --> Collector.resolved
└─ scrape task per pod address (ScrapeLoop.run_target, supervised), started and cancelled
   as addresses come and go
```
Resolution is `trio.socket.getaddrinfo` (A and AAAA records, as the system resolver
answers them) unless another resolver is passed in, and is bounded by SCRAPE_TIMEOUT.
It runs half a tick before a scrape tick, so a new pod's first scrape is on the next
tick, on the grid every target keeps.  A failed or empty resolution keeps the last
pods, is shown in /api/status and logged once per change; it never ends the task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from ..settings import without_userinfo
from ..supervisor import supervised
from .collector import Collector
from .scrape import Emit, ScrapeLoop
from .targets import parse_dns_target

__all__ = ["Discovery", "Resolve", "resolve_addresses"]

log = logging.getLogger("zai_proxy.dashboard.discovery")

# A resolver: the addresses (IPv4 or IPv6, as text) a DNS name stands for now.
Resolve = Callable[[str], Awaitable[Sequence[str]]]


async def resolve_addresses(name: str) -> list[str]:
    """The A and AAAA addresses of `name`, in the resolver's order, without repeats."""
    infos = await trio.socket.getaddrinfo(name, None, type=trio.socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Discovery:
    """Keeps one dns+ target's pods in the Collector and a scrape task running for each."""

    def __init__(
        self,
        loop: ScrapeLoop,
        source: str,
        *,
        emit: Emit,
        every: int,
        timeout: float,
        resolve: Resolve = resolve_addresses,
        now: Callable[[], float] = time.time,
        on_crash: Callable[[str], None] | None = None,
    ) -> None:
        dns = parse_dns_target(source)
        if dns is None:
            raise ValueError("not a dns+ target")
        self._loop = loop
        self._collector: Collector = loop.collector
        self._source = source
        self._shown = without_userinfo(source)
        self._name = dns.name
        self._emit = emit
        self._every = every
        self._timeout = timeout
        self._resolve = resolve
        self._now = now
        self._on_crash = on_crash
        self._scopes: dict[str, trio.CancelScope] = {}
        self._failing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            # After a restart the Collector still knows the pods: scrape them again at once.
            for url in self._collector.pods(self._source):
                await nursery.start(self._run_pod, url)
            await self.refresh(nursery)
            task_status.started()
            while True:
                await trio.sleep_until(self._next_refresh())
                await self.refresh(nursery)

    def _next_refresh(self) -> float:
        # Half a tick before every `every`-th tick.
        now = trio.current_time()
        elapsed_ticks = (now - self._loop.time_of(0)) / self._loop.collector.interval
        j = max(1, math.floor((elapsed_ticks + 0.5) / self._every + 1e-9) + 1)
        return self._loop.time_of(j * self._every - 0.5)

    async def refresh(self, nursery: trio.Nursery) -> None:
        """Resolve the name once and start or stop pod tasks to match."""
        addresses: Sequence[str] = ()
        error: str | None = None
        with trio.move_on_after(self._timeout) as scope:
            try:
                addresses = await self._resolve(self._name)
            except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
                error = f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            error = f"no answer within {self._timeout:g}s (SCRAPE_TIMEOUT)"
        elif error is None and not addresses:
            error = "no addresses"
        if error is not None:
            self._collector.resolution_failed(self._source, error, ts=self._now())
            if not self._failing:
                self._failing = True
                log.warning(
                    "DNS target not resolved; keeping its last pods",
                    extra={"target": self._shown, "error": error},
                )
            return
        if self._failing:
            self._failing = False
            log.info("DNS target resolved again", extra={"target": self._shown})
        change = self._collector.resolved(self._source, addresses, ts=self._now())
        for url in change.removed:
            scope_of_pod = self._scopes.pop(url, None)
            if scope_of_pod is not None:
                scope_of_pod.cancel()
        for url in change.added:
            await nursery.start(self._run_pod, url)
        if change.added or change.removed:
            log.info(
                "DNS target's pods changed",
                extra={
                    "target": self._shown,
                    "pods": len(self._collector.pods(self._source)),
                    "added": len(change.added),
                    "removed": len(change.removed),
                },
            )
        for snapshot in change.snapshots:
            await self._emit(snapshot)

    async def _run_pod(self, url: str, *, task_status: trio.TaskStatus[None]) -> None:
        task = supervised(
            f"scrape {without_userinfo(url)}",
            partial(self._loop.run_target, url),
            on_crash=self._on_crash,
        )
        with trio.CancelScope() as scope:
            self._scopes[url] = scope
            try:
                await task(task_status=task_status)
            finally:
                if self._scopes.get(url) is scope:
                    del self._scopes[url]
                self._loop.forget(url)
