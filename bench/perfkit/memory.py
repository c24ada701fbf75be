"""Memory of the proxies: RSS with many streams open, and RSS over a steady soak."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11
import trio

from .client import Response, trio_connect, trio_request
from .plan import REQUEST, SLOW_REQUEST, STREAM_REQUEST, Plan
from .service import Service


@dataclass(frozen=True, slots=True)
class OpenStreams:
    wanted: int
    opened: int
    flowing: int
    idle_mb: float
    open_mb: float
    seconds_to_open: float
    note: str = ""


async def measure_open_streams(target: Service, count: int) -> OpenStreams:
    """Open `count` slow streams, wait until each has its first event, then read RSS."""
    idle = target.rss()
    first = 0
    marks_seen: dict[int, int] = {}
    failures: list[str] = []
    gate = trio.Semaphore(64)
    all_open = trio.Event()
    started = trio.current_time()

    async def one(i: int) -> None:
        nonlocal first
        counted = False

        def on_data(response: Response) -> None:
            nonlocal first, counted
            marks_seen[i] = len(response.marks)
            if response.marks and not counted:
                counted = True
                first += 1
                gate.release()
                if first == count:
                    all_open.set()

        await gate.acquire()
        try:
            stream, conn = await trio_connect(target.port)
            async with stream:
                response = await trio_request(stream, conn, target.port, SLOW_REQUEST, on_data)
                if response.status != 200:
                    failures.append(f"HTTP {response.status}")
        except (OSError, ConnectionError, h11.ProtocolError) as exc:
            failures.append(type(exc).__name__)
        finally:
            if not counted:
                gate.release()

    note = ""
    open_mb = math.nan
    flowing = 0
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
        with trio.move_on_after(60 + count / 10):
            await all_open.wait()
        opened = first
        seconds = trio.current_time() - started
        if opened < count:
            note = f"{count - opened} never got a first event"
            if failures:
                note += f" ({failures[0]} and {len(failures) - 1} more failures)"
        # Streams that keep receiving over 3 s are flowing, not just open.
        before = dict(marks_seen)
        samples = []
        for _ in range(3):
            await trio.sleep(1)
            samples.append(target.rss())
        open_mb = max(samples)
        flowing = sum(1 for i, n in marks_seen.items() if n > before.get(i, 0))
        nursery.cancel_scope.cancel()
    return OpenStreams(count, opened, flowing, idle, open_mb, seconds, note)


@dataclass
class Soak:
    samples: list[tuple[float, float]] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    skipped: int = 0


async def soak(targets: Sequence[Service], plan: Plan) -> dict[str, Soak]:
    """All proxies at `soak_rate` req/s each at once (one in ten a short stream), RSS
    sampled every `sample_every` s.  Paced open-ish loop: 32 workers per target, each
    keeps its own schedule and skips ahead rather than bursting when late."""
    results = {t.name: Soak() for t in targets}
    workers = 32
    start = trio.current_time()
    end = start + plan.soak_seconds

    async def worker(target: Service, j: int) -> None:
        result = results[target.name]
        period = workers / plan.soak_rate
        due = start + j / plan.soak_rate
        k = j
        while due < end:
            try:
                stream, conn = await trio_connect(target.port)
                async with stream:
                    while due < end:
                        await trio.sleep_until(due)
                        body = STREAM_REQUEST if k % 10 == 0 else REQUEST
                        response = await trio_request(stream, conn, target.port, body)
                        if response.status == 200:
                            result.ok += 1
                        else:
                            result.errors += 1
                        k += workers
                        due += period
                        now = trio.current_time()
                        if due < now - 1:
                            behind = math.ceil((now - due) / period)
                            result.skipped += behind
                            due += behind * period
                        if not response.reusable:
                            break
            except (OSError, ConnectionError, h11.ProtocolError):
                result.errors += 1
                due += period

    async def sampler() -> None:
        tick = start
        while tick <= end:
            await trio.sleep_until(tick)
            for target in targets:
                results[target.name].samples.append((tick - start, target.rss()))
            tick += plan.sample_every

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        for target in targets:
            for j in range(workers):
                nursery.start_soon(worker, target, j)
    return results
