"""The proxy branch of the nursery tree: hypercorn serving the app, and the limiter loop."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..settings import ProxySettings
from ..supervisor import supervised, tune_runtime
from .app import ProxyApp
from .forward import report_adjustment

__all__ = ["RunningProxy", "hypercorn_config", "run_limiter", "serve_proxy"]

log = logging.getLogger("zai_proxy.proxy")


@dataclass(frozen=True, slots=True)
class RunningProxy:
    app: ProxyApp
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL agents use, e.g. http://127.0.0.1:8080/api/anthropic."""
        return f"http://{self.host}:{self.port}{self.app.target.base_path}"

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"


def hypercorn_config(host: str, port: int, graceful_timeout: float) -> Config:
    config = Config()
    bind_host = f"[{host}]" if ":" in host else host
    config.bind = [f"{bind_host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.include_server_header = False
    # Agents hold their connections for hours; hypercorn's default closes one every
    # 1,000 requests, which costs a reconnect and fails a request now and then.
    config.keep_alive_max_requests = 100_000
    config.keep_alive_timeout = 75.0
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Proxied bodies are capped by MAX_BODY_BYTES in the app, not here.
    config.h11_max_incomplete_size = 64 * 1024
    return config


async def run_limiter(
    app: ProxyApp, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Every RATE_LIMIT_WINDOW, let the limiter judge the window just ended."""
    window = app.settings.rate_limit_window
    next_tick = trio.current_time() + window
    task_status.started()
    while True:
        await trio.sleep_until(next_tick)
        next_tick += window
        adjustment = app.limiter.adjust(trio.current_time())
        if adjustment is not None:
            report_adjustment(app.metrics, adjustment)


async def serve_proxy(
    settings: ProxySettings,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[RunningProxy] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `stop` is set, then drain in-flight requests up to SHUTDOWN_TIMEOUT."""
    app = ProxyApp(settings)
    config = hypercorn_config(settings.listen_host, settings.listen_port, settings.shutdown_timeout)
    # The proxy passes the upstream's Date on and dates its own answers
    # (headers.http_date): hypercorn's would make two Date headers on forwarded ones.
    config.include_date_header = False

    def crashed(name: str) -> None:
        app.metrics.task_restarts.labels(name, app.metrics.variant).inc()

    async with trio.open_nursery() as nursery:
        await nursery.start(supervised("limiter", partial(run_limiter, app), on_crash=crashed))

        async def serve_http(*, task_status: trio.TaskStatus[Any]) -> None:
            await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()

        binds: list[str] = await nursery.start(serve_http)
        port = int(binds[0].rsplit(":", 1)[1])
        host = (
            settings.listen_host if settings.listen_host not in ("0.0.0.0", "::") else "127.0.0.1"
        )
        log.info(
            "proxy listening",
            extra={
                "url": f"http://{host}:{port}",
                "target": settings.target_url,
                "variant": settings.variant,
                "max_workers": settings.max_workers,
            },
        )
        tune_runtime()
        task_status.started(RunningProxy(app=app, host=host, port=port))
