"""/api/events with real clients: httpx streaming over loopback to the app on hypercorn."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from zai_proxy.dashboard import AsyncStore, Collector, Hub, Snapshot, Store, create_app, serve_app
from zai_proxy.settings import DashboardSettings

TARGET = "http://zai-proxy:8080/metrics"


@dataclass
class Served:
    url: str
    hub: Hub
    stop: trio.Event
    store: Store

    @property
    def events(self) -> str:
        return self.url + "/api/events"


async def serve(nursery: trio.Nursery, tmp_path: Path, *, buffer: int = 64) -> Served:
    settings = DashboardSettings(
        scrape_targets=(TARGET,),
        listen_host="127.0.0.1",
        listen_port=0,
        db_path=str(tmp_path / "dashboard.db"),
    )
    collector = Collector(settings.scrape_targets, interval=5.0, epoch_ts=0.0)
    hub = Hub(scrape_interval=5.0, variants=collector.variants(), buffer=buffer)
    store = Store(settings.db_path, retention_5s=3600.0, retention_1m=7200.0)
    app = create_app(settings=settings, collector=collector, hub=hub, store=AsyncStore(store))
    stop = trio.Event()
    port = await nursery.start(serve_app, app, hub, "127.0.0.1", 0, stop)
    return Served(url=f"http://127.0.0.1:{port}", hub=hub, stop=stop, store=store)


@pytest.fixture
async def served(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Served]:
    running = await serve(nursery, tmp_path)
    yield running
    running.stop.set()
    running.store.close()


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) per frame; a comment line comes as ("comment", text)."""
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif line == "" and data:
            yield event, data
            event, data = "message", ""


def snapshot(n: int, *, pad: int = 0) -> Snapshot:
    rates = {f"s{i:05d}": 1.0 for i in range(pad)}
    return Snapshot(
        ts=float(n),
        variant="production",
        interval_s=5.0,
        req_rate=float(n),
        status_code_rates=rates,
    )


async def wait_for_clients(hub: Hub, count: int) -> None:
    with trio.fail_after(10):
        while hub.clients != count:
            await hub.wait_changed()


async def test_a_new_client_gets_connected_first_then_snapshots_as_made(served: Served) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", served.events) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            frames = sse(response)
            with trio.fail_after(5):
                event, data = await anext(frames)
                assert event == "connected"
                assert json.loads(data) == {"scrape_interval_s": 5.0, "variants": ["production"]}
                served.hub.publish(snapshot(7))
                event, data = await anext(frames)
    assert event == "snapshot"
    assert Snapshot.from_json(data) == snapshot(7)


async def test_keepalive_every_30_seconds(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    running = await serve(nursery, tmp_path)
    try:
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("GET", running.events) as response:
                frames = sse(response)
                with trio.fail_after(100):
                    assert (await anext(frames))[0] == "connected"
                    start = trio.current_time()
                    seen = [(await anext(frames), trio.current_time() - start) for _ in range(3)]
    finally:
        running.stop.set()
        running.store.close()
    assert seen == [
        (("comment", "keepalive"), 30.0),
        (("comment", "keepalive"), 60.0),
        (("comment", "keepalive"), 90.0),
    ]


async def test_snapshots_do_not_postpone_the_keepalive(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    running = await serve(nursery, tmp_path)
    try:
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("GET", running.events) as response:
                frames = sse(response)
                with trio.fail_after(100):
                    await anext(frames)
                    start = trio.current_time()
                    await trio.sleep(20)
                    running.hub.publish(snapshot(1))
                    assert (await anext(frames))[0] == "snapshot"
                    assert (await anext(frames))[0] == "comment"
                    waited = trio.current_time() - start
    finally:
        running.stop.set()
        running.store.close()
    assert waited == 30.0


async def test_a_slow_client_is_dropped_while_fast_ones_keep_up(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    running = await serve(nursery, tmp_path, buffer=4)
    hub = running.hub
    fast_count = 3
    received = [0] * fast_count
    progress = trio.Event()

    async def fast(i: int, client: httpx.AsyncClient) -> None:
        nonlocal progress
        async with client.stream("GET", running.events) as response:
            async for event, data in sse(response):
                if event == "snapshot":
                    # In order, none skipped.
                    assert json.loads(data)["ts"] == received[i] + 1
                    received[i] += 1
                    progress.set()
                    progress = trio.Event()

    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=10)) as client:
            async with trio.open_nursery() as clients:
                for i in range(fast_count):
                    clients.start_soon(fast, i, client)
                async with client.stream("GET", running.events) as slow:
                    slow_frames = sse(slow)
                    with trio.fail_after(5):
                        assert (await anext(slow_frames))[0] == "connected"
                    await wait_for_clients(hub, fast_count + 1)
                    # ~30 kB frames fill the slow client's socket buffers, then its
                    # 4-frame channel; it is never read meanwhile.
                    published = 0
                    with trio.fail_after(30):
                        while hub.dropped == 0:
                            published += 1
                            assert published < 5000, "the slow client was never dropped"
                            hub.publish(snapshot(published, pad=1500))
                            while min(received) < published:
                                await progress.wait()
                    assert hub.clients == fast_count
                    # The dropped client's stream ends after what was already queued.
                    with trio.fail_after(10):
                        rest = [frame async for frame in slow_frames]
                    assert 0 < len(rest) < published
                # The fast ones are still there and still served.
                hub.publish(snapshot(published + 1))
                with trio.fail_after(10):
                    while min(received) < published + 1:
                        await progress.wait()
                assert hub.dropped == 1
                clients.cancel_scope.cancel()
    finally:
        running.stop.set()
        running.store.close()


async def test_a_hundred_clients_all_get_every_snapshot(served: Served) -> None:
    count = 100
    got: list[list[float]] = [[] for _ in range(count)]

    async def listen(i: int, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", served.events) as response:
            async for event, data in sse(response):
                if event == "snapshot":
                    got[i].append(json.loads(data)["ts"])
                    if len(got[i]) == 3:
                        return

    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        with trio.fail_after(20):
            async with trio.open_nursery() as clients:
                for i in range(count):
                    clients.start_soon(listen, i, client)
                await wait_for_clients(served.hub, count)
                for n in (1, 2, 3):
                    served.hub.publish(snapshot(n))
    assert got == [[1.0, 2.0, 3.0]] * count
    assert served.hub.dropped == 0


async def test_a_client_that_leaves_is_forgotten(served: Served) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", served.events) as response:
            with trio.fail_after(5):
                await anext(sse(response))
            await wait_for_clients(served.hub, 1)
    await wait_for_clients(served.hub, 0)


async def test_stop_ends_every_stream_and_the_server_promptly(tmp_path: Path) -> None:
    ended: list[float] = []

    async def listen(client: httpx.AsyncClient, url: str) -> None:
        async with client.stream("GET", url) as response:
            async for _ in sse(response):
                pass
        ended.append(trio.current_time())

    with trio.fail_after(10):
        async with trio.open_nursery() as server:
            running = await serve(server, tmp_path)
            async with httpx.AsyncClient(timeout=30) as client:
                async with trio.open_nursery() as clients:
                    for _ in range(5):
                        clients.start_soon(listen, client, running.events)
                    await wait_for_clients(running.hub, 5)
                    stopped_at = trio.current_time()
                    running.stop.set()
        # Both nurseries are done: every stream ended and serve_app returned.
        server_done = trio.current_time()
    running.store.close()
    assert len(ended) == 5
    assert max(ended) - stopped_at < 1.0
    assert server_done - stopped_at < 2.0
