"""The proxy branch of the nursery tree: hypercorn serving the app, and the limiter loop."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import trio

from ..serving import Listening, hypercorn_config, serve_asgi
from ..settings import ProxySettings
from ..supervisor import supervised
from .app import ProxyApp
from .websocket import message_cap

__all__ = ["RunningProxy", "serve_proxy"]

log = logging.getLogger("zai_proxy.proxy")


@dataclass(frozen=True, slots=True)
class RunningProxy(Listening):
    app: ProxyApp

    @property
    def url(self) -> str:
        """Base URL agents use, e.g. http://127.0.0.1:8080/api/anthropic."""
        return self.origin + self.app.target.base_path


async def serve_proxy(
    settings: ProxySettings,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[RunningProxy] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `stop` is set, then drain in-flight requests up to SHUTDOWN_TIMEOUT."""
    app = ProxyApp(settings, stopping=stop)
    # The proxy passes the upstream's Date on and dates its own answers
    # (headers.http_date): hypercorn's would make two Date headers on forwarded ones.
    config = hypercorn_config(
        settings.listen_host,
        settings.listen_port,
        settings.shutdown_timeout,
        date_header=False,
        write_timeout=settings.client_write_timeout,
    )
    # A client's WebSocket message over the cap closes it with 1009 (websocket.py).
    config.websocket_max_message_size = message_cap(settings)

    def crashed(name: str) -> None:
        app.metrics.task_restarts.labels(name, app.metrics.variant).inc()

    limiter = supervised("limiter", app.limiter.run, on_crash=crashed)
    async with trio.open_nursery() as nursery:
        listening: Listening = await nursery.start(
            partial(serve_asgi, app, config, stop, background=[limiter])
        )
        log.info(
            "proxy listening",
            extra={
                "url": listening.origin,
                "target": settings.target_url,
                "variant": settings.variant,
                "max_workers": settings.max_workers,
            },
        )
        task_status.started(RunningProxy(host=listening.host, port=listening.port, app=app))
