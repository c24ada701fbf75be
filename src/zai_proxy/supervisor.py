"""The supervisor nursery: signals, graceful stop, and restart-with-backoff for tasks.

```
trio.run(main)
└─ supervisor nursery  (SIGTERM/SIGINT -> graceful stop; a second signal -> stop now)
   ├─ proxy: hypercorn.trio.serve(proxy_app)
   │    └─ limiter adjustment task (every window)
   ├─ dashboard: ...
   └─ demo only: simulated upstream + simulated agents
```
A background task that raises is logged, counted and started again after a backoff
(1 s doubling to 30 s); it never takes its siblings down.  Cancellation always wins.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

__all__ = ["run_until_signalled", "supervised", "tune_runtime"]

log = logging.getLogger("zai_proxy.supervisor")


class _TaskFn(Protocol):
    def __call__(self, *, task_status: trio.TaskStatus[Any]) -> Awaitable[None]: ...


class _StartedOnce:
    """Passes `started()` to the real task status the first time only, so a task that is
    restarted after a crash can call it again harmlessly."""

    def __init__(self, inner: trio.TaskStatus[Any]) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self._inner.started(value)


def supervised(
    name: str,
    fn: _TaskFn,
    *,
    on_crash: Callable[[str], None] | None = None,
    base_delay: float = 1.0,
    max_delay: float = 30.0,
    healthy_after: float = 60.0,
) -> Callable[..., Awaitable[None]]:
    """Wrap a `nursery.start`-able task so crashes restart it with backoff."""

    async def run(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        status = _StartedOnce(task_status)
        delay = base_delay
        while True:
            began = trio.current_time()
            try:
                await fn(task_status=status)
                return
            except Exception:
                log.exception("task crashed; restarting", extra={"task": name, "delay_s": delay})
                if on_crash is not None:
                    on_crash(name)
            if trio.current_time() - began >= healthy_after:
                delay = base_delay
            await trio.sleep(delay)
            delay = min(delay * 2, max_delay)

    return run


async def run_until_signalled(
    body: Callable[[trio.Event], Awaitable[None]],
    *,
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Run `body(stop)`; the first signal sets `stop` (drain), a second cancels it all."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch(*, task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(*signals) as received:
                task_status.started()
                async for signum in received:
                    if not stop.is_set():
                        log.info(
                            "stopping: draining in-flight requests",
                            extra={"signal": signal.Signals(signum).name},
                        )
                        stop.set()
                    else:
                        log.warning("second signal: stopping now")
                        nursery.cancel_scope.cancel()
                        return

        await nursery.start(watch)
        await body(stop)
        nursery.cancel_scope.cancel()


def tune_runtime() -> None:
    """Process settings the servers run with, applied once start-up is done.

    - `gc.freeze()`: the objects made at start-up (modules, the tokenizer's tables) move
      out of the collector's reach, so a full collection stops the loop for ~0 ms
      instead of 10-30 ms.
    - A 1 ms GIL switch interval (default 5 ms): when token counting runs in a worker
      thread, the event loop waits at most about that long for the GIL at each handoff,
      which keeps its longest stall under 10 ms.  With one thread it changes nothing.
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.001)
