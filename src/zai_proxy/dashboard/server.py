"""The dashboard branch of the nursery tree.

```
serve_dashboard
├─ hypercorn serving the app (until `stop`; SSE streams are ended by `hub.close()`)
├─ scrape task per target (supervised) --snapshots--> broadcast: hub.publish + store.insert
├─ discovery task per dns+ target (supervised): a scrape task per pod, as pods come and go
└─ downsample / purge task, every 10 minutes (supervised)
```
On `stop`: the hub closes every SSE stream, hypercorn drains what is left (at most
GRACEFUL_TIMEOUT), then the scrape, broadcast and maintenance tasks are cancelled and
the database is closed.  quart-trio does not set `app.shutdown_event` on shutdown, which
is why the streams are ended from `stop` here and not from the app.

A client that stops reading (its socket's receive buffer full) would hold its connection
for ever: hypercorn writes with no deadline, shielded from cancellation, so not even
`stop` ends that write.  The listening socket carries TCP_USER_TIMEOUT (inherited by
every connection), so the kernel drops a connection whose data has waited unacknowledged
for CLIENT_WRITE_TIMEOUT; the write fails, the connection closes, the stream ends.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import httpx
import trio
from hypercorn.config import Config, Sockets
from quart_trio import QuartTrio

from ..serving import BackgroundTask, Listening, hypercorn_config, serve_asgi
from ..settings import DashboardSettings, without_userinfo
from ..supervisor import supervised
from .app import DashboardStats, create_app
from .collector import Collector
from .discovery import Discovery, Resolve, resolve_addresses
from .hub import Hub
from .scrape import ScrapeLoop, fetch_metrics
from .snapshot import Snapshot
from .store import AsyncStore, run_maintenance
from .targets import parse_dns_target

__all__ = [
    "CLIENT_WRITE_TIMEOUT",
    "GRACEFUL_TIMEOUT",
    "RunningDashboard",
    "serve_app",
    "serve_dashboard",
]

log = logging.getLogger("zai_proxy.dashboard")

GRACEFUL_TIMEOUT = 5.0
# Longest a write to a client may wait for the client to take it (a browser's TCP stack
# acknowledges at once, even from a background tab).
CLIENT_WRITE_TIMEOUT = 10.0
_SNAPSHOT_QUEUE = 256
_PODS_PER_DNS_TARGET = 16


@dataclass(frozen=True, slots=True)
class RunningDashboard(Listening):
    app: QuartTrio
    hub: Hub
    store: AsyncStore
    collector: Collector
    stats: DashboardStats

    @property
    def url(self) -> str:
        return self.origin


def _end_streams(hub: Hub, stop: trio.Event) -> BackgroundTask:
    # quart-trio does not end SSE streams on shutdown: they end when `stop` is set.
    async def end_streams(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await stop.wait()
        hub.close()

    return end_streams


def _config(host: str, port: int, graceful_timeout: float, write_timeout: float) -> Config:
    config = hypercorn_config(host, port, graceful_timeout)
    create = config.create_sockets

    def create_sockets() -> Sockets:
        sockets = create()
        milliseconds = max(1, round(write_timeout * 1000))
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; elsewhere the OS default
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
        return sockets

    config.create_sockets = create_sockets  # type: ignore[method-assign]
    return config


async def serve_app(
    app: QuartTrio,
    hub: Hub,
    host: str,
    port: int,
    stop: trio.Event,
    *,
    graceful_timeout: float = GRACEFUL_TIMEOUT,
    client_write_timeout: float = CLIENT_WRITE_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` alone (no scraping) until `stop`; started() with the bound port."""
    config = _config(host, port, graceful_timeout, client_write_timeout)
    async with trio.open_nursery() as nursery:
        listening: Listening = await nursery.start(
            partial(serve_asgi, app, config, stop, background=[_end_streams(hub, stop)])
        )
        task_status.started(listening.port)


async def _broadcast(
    receive: trio.MemoryReceiveChannel[Snapshot],
    hub: Hub,
    store: AsyncStore,
    stats: DashboardStats,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Each snapshot to the SSE clients, then to the database."""
    task_status.started()
    async for snapshot in receive:
        # Pushed first: the page should not wait on the disk.
        hub.publish(snapshot)
        try:
            await store.insert(snapshot)
        except sqlite3.Error as exc:
            stats.store_errors += 1
            log.error(
                "could not store a snapshot",
                extra={"variant": snapshot.variant, "ts": snapshot.ts, "error": str(exc)},
            )


async def serve_dashboard(
    settings: DashboardSettings,
    stop: trio.Event,
    *,
    now: Callable[[], float] = time.time,
    client_write_timeout: float = CLIENT_WRITE_TIMEOUT,
    resolve: Resolve = resolve_addresses,
    task_status: trio.TaskStatus[RunningDashboard] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the dashboard until `stop` is set.  `resolve` answers for dns+ targets.

    Raises `StoreError` (a `SettingsError` naming DB_PATH) before starting if the database
    cannot be used.
    """
    store = await AsyncStore.open(
        settings.db_path, retention_5s=settings.retention_5s, retention_1m=settings.retention_1m
    )
    try:
        await _run(settings, stop, store, now, client_write_timeout, resolve, task_status)
    finally:
        await store.aclose()


async def _run(
    settings: DashboardSettings,
    stop: trio.Event,
    store: AsyncStore,
    now: Callable[[], float],
    client_write_timeout: float,
    resolve: Resolve,
    task_status: trio.TaskStatus[RunningDashboard],
) -> None:
    collector = Collector(
        settings.scrape_targets, interval=settings.scrape_interval, epoch_ts=now()
    )
    hub = Hub(scrape_interval=settings.scrape_interval, variants=collector.variants())
    hub.seed(await store.latest())
    stats = DashboardStats()
    app = create_app(
        settings=settings, collector=collector, hub=hub, store=store, stats=stats, now=now
    )
    send, receive = trio.open_memory_channel[Snapshot](_SNAPSHOT_QUEUE)
    dns_targets = [u for u in settings.scrape_targets if parse_dns_target(u) is not None]
    # Room for the pods of a dns+ target without letting a huge answer open without end.
    connections = len(settings.scrape_targets) + _PODS_PER_DNS_TARGET * len(dns_targets)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.scrape_timeout),
        limits=httpx.Limits(max_connections=2 * connections, max_keepalive_connections=connections),
        follow_redirects=False,
        # A scrape goes straight to the target: no proxy or .netrc from the environment.
        trust_env=False,
    )
    loop = ScrapeLoop(
        collector,
        fetch=partial(fetch_metrics, client),
        emit=send.send,
        timeout=settings.scrape_timeout,
    )
    background: list[BackgroundTask] = [
        supervised(
            "broadcast",
            partial(_broadcast, receive, hub, store, stats),
            on_crash=stats.restarted,
        )
    ]
    for url in settings.scrape_targets:
        if url in dns_targets:
            discovery = Discovery(
                loop,
                url,
                emit=send.send,
                every=settings.dns_refresh_scrapes,
                timeout=settings.scrape_timeout,
                resolve=resolve,
                now=now,
                on_crash=stats.restarted,
            )
            name = f"discover {without_userinfo(url)}"
            background.append(supervised(name, discovery.run, on_crash=stats.restarted))
            continue
        name = f"scrape {without_userinfo(url)}"
        background.append(supervised(name, partial(loop.run_target, url), on_crash=stats.restarted))
    background.append(
        supervised(
            "store maintenance",
            partial(run_maintenance, store, now=now),
            on_crash=stats.restarted,
        )
    )
    background.append(_end_streams(hub, stop))
    config = _config(
        settings.listen_host, settings.listen_port, GRACEFUL_TIMEOUT, client_write_timeout
    )
    try:
        async with trio.open_nursery() as nursery:
            listening: Listening = await nursery.start(
                partial(serve_asgi, app, config, stop, background=background)
            )
            log.info(
                "dashboard listening",
                extra={
                    "url": listening.origin,
                    "targets": [without_userinfo(u) for u in settings.scrape_targets],
                    "scrape_interval_s": settings.scrape_interval,
                    "db_path": settings.db_path,
                },
            )
            task_status.started(
                RunningDashboard(
                    host=listening.host,
                    port=listening.port,
                    app=app,
                    hub=hub,
                    store=store,
                    collector=collector,
                    stats=stats,
                )
            )
    finally:
        with trio.move_on_after(2, shield=True):
            await client.aclose()
