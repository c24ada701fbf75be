"""Serve one ASGI app on hypercorn's trio worker until a stop event: the one way both
branches (proxy and dashboard) run their HTTP server.

```
serve_asgi
├─ background tasks (started first, in order; cancelled once the server has stopped)
└─ hypercorn.trio.serve(app)   until `stop`, then drains for at most graceful_timeout
```
`task_status.started()` reports where it listens, as a `Listening`, once the socket is
bound; a wildcard host is reported as 127.0.0.1, the address a local client can use.

No single connection may take the server down.  hypercorn runs every connection in one
nursery, so an exception it does not expect from one of them (a non-ASCII `:path` in a
cleartext HTTP/2 request raised UnicodeDecodeError) used to end `serve` and the process
with it.  `_GuardedTCPServer` closes that connection and logs it instead; it is put in
place of hypercorn's TCPServer, which `hypercorn.trio.run` looks up each time a
connection arrives.  Cancellation still passes: only `Exception` is caught.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hypercorn.trio.run
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

from .errors import ClientStalled, ListenError
from .supervisor import tune_runtime

__all__ = ["Listening", "hypercorn_config", "serve_asgi"]

log = logging.getLogger("zai_proxy.serving")

BackgroundTask = Callable[..., Awaitable[None]]
"""Called as task(task_status=...) under `nursery.start`."""


class _Config(Config):
    # Read by _GuardedTCPServer: hypercorn itself has no deadline for a write.
    client_write_timeout: float | None = None


class _GuardedTCPServer(TCPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set while no request is in flight on this connection.
        self._idle = trio.Event()
        self._idle.set()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            if event.idle:
                self._idle.set()
            elif self._idle.is_set():
                self._idle = trio.Event()
        timeout = getattr(self.config, "client_write_timeout", None)
        if not isinstance(event, RawData) or timeout is None:
            await super().protocol_send(event)
            return
        # hypercorn shields each write from cancellation, so a client that stops
        # reading holds the write (and the request's slot) for ever.  The shield stays
        # (a write cut by an outside cancel would corrupt the framing) but gets a
        # deadline of its own; past it the connection is closed and the app told.
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True) as write:
                    write.deadline = trio.current_time() + timeout
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
                return
        if write.cancelled_caught:
            log.info(
                "closed a connection whose client stopped reading",
                extra={"client_write_timeout_s": timeout},
            )
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
                await self.protocol.handle(Closed())
            # Into whoever was writing: the app learns its answer did not go out.
            raise ClientStalled(f"a write to the client stalled for {timeout:g}s")

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._close_when_idle_at_shutdown)
            try:
                await self._run_guarded()
            finally:
                nursery.cancel_scope.cancel()

    async def _close_when_idle_at_shutdown(self) -> None:
        # hypercorn leaves an idle keep-alive connection open through a graceful stop
        # (its idle timer dies with the request that armed it), and agents always hold
        # some: every SIGTERM then waited the whole SHUTDOWN_TIMEOUT, which Kubernetes
        # ends with SIGKILL.  An idle connection is closed as the stop begins; a busy one
        # is closed by hypercorn after its answer.
        await self.context.terminated.wait()
        while not self._idle.is_set():
            await self._idle.wait()
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def _run_guarded(self) -> None:
        try:
            await super().run()
        except ClientStalled:
            pass  # hypercorn's own write stalled; the connection is already closed
        except Exception as exc:
            log.warning(
                "closed a connection the HTTP server could not handle",
                extra={"error": f"{type(exc).__name__}: {exc}"[:200]},
            )
            with trio.move_on_after(1, shield=True):
                await self.stream.aclose()


setattr(hypercorn.trio.run, "TCPServer", _GuardedTCPServer)  # noqa: B010


def _listen_error(bind: str, group: BaseExceptionGroup[OSError]) -> ListenError:
    exc = group.exceptions[0]
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    reason = exc.strerror or str(exc) or type(exc).__name__
    return ListenError(bind, reason.lower())


@dataclass(frozen=True, slots=True)
class Listening:
    host: str
    port: int

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def hypercorn_config(
    host: str,
    port: int,
    graceful_timeout: float,
    *,
    date_header: bool = True,
    write_timeout: float | None = None,
) -> Config:
    """hypercorn's settings for our servers; `write_timeout` bounds each write to a
    client (None: no bound)."""
    config = _Config()
    config.client_write_timeout = write_timeout
    bind_host = f"[{host}]" if ":" in host else host
    config.bind = [f"{bind_host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.include_server_header = False
    config.include_date_header = date_header
    # Agents hold their connections for hours; hypercorn's default closes one every
    # 1,000 requests, which costs a reconnect and fails a request now and then.
    config.keep_alive_max_requests = 100_000
    config.keep_alive_timeout = 75.0
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Proxied bodies are capped by MAX_BODY_BYTES in the app, not here.
    config.h11_max_incomplete_size = 64 * 1024
    return config


async def serve_asgi(
    app: Any,
    config: Config,
    stop: trio.Event,
    *,
    background: Sequence[BackgroundTask] = (),
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `stop` is set and its connections have drained."""
    async with trio.open_nursery() as nursery:
        for task in background:
            await nursery.start(task)

        async def http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
            nursery.cancel_scope.cancel()

        try:
            binds: list[str] = await nursery.start(http)
        except* OSError as group:
            # A port in use or a host that does not resolve: a setting, not a crash.
            raise _listen_error(config.bind[0], group) from None
        host = config.bind[0].rsplit(":", 1)[0].strip("[]")
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        tune_runtime()
        task_status.started(Listening(host=host, port=int(binds[0].rsplit(":", 1)[1])))
