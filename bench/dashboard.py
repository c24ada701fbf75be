"""Benchmark: the dashboard's history query and its SSE fan-out.

1. A week of history: a full 1 min table (7 d, two variants: 20 160 rows), a full 5 s
   table (24 h, two variants: 34 560 rows), the last 10 minutes not yet downsampled (so
   the on-the-fly minutes are part of the work).  Times `Store.query_json` for 7d (goal:
   <= 100 ms), plus 24h and 1h for comparison, and the 7d query over HTTP.
2. Fan-out: 100 SSE clients (httpx, real loopback sockets, same process) connected to the
   app on hypercorn; snapshots published every 50 ms; the lag from `publish` to each
   client holding the parsed frame (goal: <= 50 ms at p99).  Clients and server share
   one process and one core, so this is an upper bound on what a browser would see.

Run: `python bench/dashboard.py`.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from zai_proxy.dashboard import AsyncStore, Collector, Hub, Snapshot, Store, create_app, serve_app
from zai_proxy.settings import DashboardSettings

DAY = 24 * 3600.0
WEEK = 7 * DAY
CLIENTS = 100
PUBLISHES = 60


def realistic(ts: float, variant: str, rng: random.Random, interval: float) -> Snapshot:
    rate = rng.uniform(5, 40)
    return Snapshot(
        ts=ts,
        variant=variant,
        interval_s=interval,
        targets_up=2,
        targets_total=2,
        req_rate=rate,
        error_rate_pct=rng.uniform(0, 3),
        latency_p50_ms=rng.uniform(200, 900),
        latency_p95_ms=rng.uniform(900, 4000),
        latency_p99_ms=rng.uniform(4000, 9000),
        request_size_avg=rng.uniform(2e3, 9e4),
        response_size_avg=rng.uniform(5e2, 2e4),
        status_code_rates={"200": rate * 0.97, "429": rate * 0.02, "502": rate * 0.01},
        token_rate_in=rate * 900,
        token_rate_out=rate * 300,
        token_rate_cache_read=rate * 4000,
        token_rate_cache_write=rate * 200,
        tokens_in=rate * 900 * interval,
        tokens_out=rate * 300 * interval,
        tokens_cache_read=rate * 4000 * interval,
        tokens_cache_write=rate * 200 * interval,
        rate_limit_rps=rng.uniform(10, 50),
        rate_limit_ceiling=45.0,
        rate_limit_adj_increase=0.0,
        rate_limit_adj_decrease=0.0,
        rate_limit_adj_probe=0.0,
        rejections=0.0,
        rejections_by_reason={"rate_limit": 0.0, "capacity": 0.0},
        concurrent=rng.uniform(0, 20),
        max_workers=20.0,
        worker_utilization=rng.uniform(0, 1),
        retry_rates={"network_error": 0.0, "429": 0.1, "truncated_response": 0.0},
        upstream_error_rates={"429": 0.1, "timeout": 0.0, "upstream_connection": 0.0},
    )


def fill(store: Store, now: float) -> tuple[int, int]:
    rng = random.Random(1)
    variants = ("production", "canary")
    pending = now - 600  # downsampling last ran ten minutes ago
    minutes = [
        realistic(ts, v, rng, 60.0)
        for ts in (pending - WEEK + 60 * i for i in range(int(WEEK // 60)))
        for v in variants
    ]
    store.insert_many(minutes, table="metrics_1m")
    fives = [
        realistic(ts, v, rng, 5.0)
        for ts in (now - DAY + 5 * i for i in range(int(DAY // 5)))
        for v in variants
    ]
    store.insert_many(fives)
    return len(minutes), len(fives)


def timed(fn: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"median {statistics.median(ms):6.1f} ms   max {ms[-1]:6.1f} ms"


async def bench_history(directory: Path) -> None:
    now = 1_800_000_000.0
    path = directory / "week.db"
    store = Store(str(path), retention_5s=DAY, retention_1m=WEEK)
    loaded = time.perf_counter()
    rows_1m, rows_5s = fill(store, now)
    store.checkpoint()  # as the maintenance pass leaves it
    load_s = time.perf_counter() - loaded
    size_mb = store.size_bytes() / 1e6
    print(
        f"history: {rows_1m} 1 min rows + {rows_5s} 5 s rows "
        f"({size_mb:.0f} MB on disk, loaded in {load_s:.1f} s)"
    )
    body = store.query_json(WEEK, "all", now)
    print(f"  7d all: {len(json.loads(body))} snapshots, {len(body) / 1e6:.1f} MB of JSON")
    for label, range_s, variant in [
        ("7d  all       ", WEEK, "all"),
        ("7d  production", WEEK, "production"),
        ("24h all       ", DAY, "all"),
        ("1h  all       ", 3600.0, "all"),
    ]:
        runs = timed(lambda r=range_s, v=variant: store.query_json(r, v, now), 15)
        goal = "   (goal <= 100 ms)" if range_s == WEEK and variant == "all" else ""
        print(f"  query {label}  {summary(runs)}{goal}")

    settings = DashboardSettings(scrape_targets=("http://x/metrics",), db_path=str(path))
    hub = Hub(scrape_interval=5.0)
    app = create_app(
        settings=settings,
        collector=Collector(settings.scrape_targets, interval=5.0, epoch_ts=now),
        hub=hub,
        store=AsyncStore(store),
        now=lambda: now,
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_app, app, hub, "127.0.0.1", 0, stop)
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"http://127.0.0.1:{port}/api/metrics?range=7d&variant=all"
            http = []
            size = 0
            for _ in range(8):
                start = time.perf_counter()
                response = await client.get(url)
                size = len(await response.aread())
                http.append((time.perf_counter() - start) * 1000)
        print(
            f"  GET /api/metrics?range=7d  {summary(http)}"
            f"   (query + {size / 1e6:.0f} MB over loopback into httpx)"
        )
        stop.set()
    store.close()


async def listen_all(base: str, count: int, expect: int) -> list[float]:
    """Connect `count` SSE clients; return each frame's lag (receipt - its ts), in ms."""
    lags: list[float] = []
    connected = 0
    all_connected = trio.Event()

    async def listen(client: httpx.AsyncClient) -> None:
        nonlocal connected
        got = 0
        async with client.stream("GET", f"{base}/api/events") as response:
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "connected":
                    connected += 1
                    if connected == count:
                        all_connected.set()
                elif line.startswith("data:") and event == "snapshot":
                    ts = json.loads(line[5:])["ts"]
                    lags.append((time.time() - ts) * 1000)
                    got += 1
                    if got == expect:
                        return

    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async with trio.open_nursery() as clients:
            for _ in range(count):
                clients.start_soon(listen, client)
            await all_connected.wait()
    return lags


async def run_listeners(base: str, count: int, expect: int) -> None:
    """Child process mode: the clients, reporting their lags as one JSON line."""
    lags = await listen_all(base, count, expect)
    print(json.dumps(lags), flush=True)


async def bench_fanout(directory: Path, processes: int) -> None:
    """Clients in the same process (processes=0) or spread over child processes."""
    settings = DashboardSettings(
        scrape_targets=("http://x/metrics",), db_path=str(directory / "fanout.db")
    )
    hub = Hub(scrape_interval=5.0)
    store = Store(settings.db_path, retention_5s=DAY, retention_1m=WEEK)
    app = create_app(
        settings=settings,
        collector=Collector(settings.scrape_targets, interval=5.0, epoch_ts=0.0),
        hub=hub,
        store=AsyncStore(store),
    )
    stop = trio.Event()
    rng = random.Random(2)
    lags: list[float] = []

    async def publish() -> None:
        with trio.fail_after(60):
            while hub.clients < CLIENTS:
                await hub.wait_changed()
        next_at = trio.current_time()
        for _ in range(PUBLISHES):
            # ts is the publish time: each client measures its own lag from it.
            hub.publish(realistic(time.time(), "production", rng, 5.0))
            next_at += 0.05
            await trio.sleep_until(next_at)

    async def child(base: str, count: int) -> None:
        result = await trio.run_process(
            [sys.executable, __file__, "--listen", base, str(count), str(PUBLISHES)],
            capture_stdout=True,
        )
        lags.extend(json.loads(result.stdout.decode().splitlines()[-1]))

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_app, app, hub, "127.0.0.1", 0, stop)
        base = f"http://127.0.0.1:{port}"
        async with trio.open_nursery() as work:
            if processes == 0:

                async def local() -> None:
                    lags.extend(await listen_all(base, CLIENTS, PUBLISHES))

                work.start_soon(local)
            else:
                for i in range(processes):
                    share = CLIENTS // processes + (1 if i < CLIENTS % processes else 0)
                    work.start_soon(child, base, share)
            await publish()
        stop.set()
    store.close()
    lags.sort()
    where = "in this process" if processes == 0 else f"in {processes} other process(es)"
    print(
        f"fan-out: {CLIENTS} clients {where} x {PUBLISHES} snapshots "
        f"({len(lags)} deliveries, dropped {hub.dropped})"
    )
    print(
        f"  publish -> parsed by client: p50 {lags[len(lags) // 2]:5.1f} ms   "
        f"p99 {lags[int(len(lags) * 0.99)]:5.1f} ms   max {lags[-1]:5.1f} ms   (goal <= 50 ms)"
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        await bench_history(Path(directory))
        await bench_fanout(Path(directory), processes=1)
        await bench_fanout(Path(directory), processes=0)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--listen":
        trio.run(run_listeners, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        trio.run(main)
