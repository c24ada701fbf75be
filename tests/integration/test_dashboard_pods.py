"""A dns+ target end to end: real proxies as pods on 127.0.0.1 and 127.0.0.2 (same port),
a resolver the test drives, the dashboard's snapshots and /api/status; and `localhost`
resolved for real."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import trio

from tests.conftest import ProxyHandle, StartProxy
from zai_proxy.dashboard import RunningDashboard, Snapshot, serve_dashboard
from zai_proxy.settings import DashboardSettings

MESSAGE = {
    "model": "glm-4.6",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Say hello."}],
}
NAME = "zai-proxy-production-headless"


class Resolver:
    """What the test's DNS name resolves to now; `fail` makes it fail."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.fail = False

    async def __call__(self, name: str) -> Sequence[str]:
        assert name == NAME
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise OSError("resolver down")
        return list(self.addresses)


def settings_for(target: str, tmp_path: Path) -> DashboardSettings:
    return DashboardSettings(
        scrape_targets=(target,),
        scrape_interval=0.2,
        scrape_timeout=0.15,
        listen_host="127.0.0.1",
        listen_port=0,
        db_path=str(tmp_path / "dashboard.db"),
        dns_refresh_scrapes=1,
    )


async def start_pods(start_proxy: StartProxy) -> tuple[ProxyHandle, ProxyHandle]:
    """Two proxies on one port, as two pods of a headless Service would be."""
    first = await start_proxy()
    second = await start_proxy(LISTEN_ADDR=f"127.0.0.2:{first.running.port}")
    return first, second


def pod(proxy: ProxyHandle, address: str) -> str:
    return f"http://{address}:{proxy.running.port}/metrics"


async def send_traffic(*proxies: ProxyHandle) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            for proxy in proxies:
                response = await client.post(proxy.url + "/v1/messages", json=MESSAGE)
                assert response.status_code == 200


async def snapshots_until(
    dashboard: str, done: Callable[[Snapshot], bool], seen: list[Snapshot] | None = None
) -> Snapshot:
    """Production snapshots pushed over SSE (kept in `seen`) until one is `done`."""
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", dashboard + "/api/events") as response:
            event = ""
            with trio.fail_after(10):
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "snapshot":
                        snapshot = Snapshot.from_json(line[5:].strip())
                        if snapshot.variant != "production":
                            continue
                        if seen is not None:
                            seen.append(snapshot)
                        if done(snapshot):
                            return snapshot
    raise AssertionError("the stream ended")


async def status(dashboard: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(dashboard + "/api/status")
        assert response.status_code == 200
        body: dict[str, object] = response.json()
        return body


async def start_dashboard(
    nursery: trio.Nursery, settings: DashboardSettings, **options: object
) -> tuple[RunningDashboard, trio.Event]:
    stop = trio.Event()
    with trio.fail_after(10):
        running: RunningDashboard = await nursery.start(
            lambda task_status: serve_dashboard(settings, stop, task_status=task_status, **options)
        )
    return running, stop


async def test_each_pod_is_scraped_and_the_variant_is_their_sum(
    nursery: trio.Nursery, start_proxy: StartProxy, tmp_path: Path
) -> None:
    first, second = await start_pods(start_proxy)
    target = f"dns+http://{NAME}:{first.running.port}/metrics"
    resolver = Resolver("127.0.0.1", "127.0.0.2")
    running, stop = await start_dashboard(nursery, settings_for(target, tmp_path), resolve=resolver)
    async with trio.open_nursery() as traffic:
        traffic.start_soon(send_traffic, first, second)
        snapshot = await snapshots_until(
            running.url, lambda s: bool(s.req_rate) and s.targets_up == 2
        )
        traffic.cancel_scope.cancel()
    assert snapshot.targets_total == 2 and not snapshot.stale
    assert snapshot.max_workers == 20  # 10 a pod, summed
    assert snapshot.latency_p95_ms is not None
    body = await status(running.url)
    assert body["dns_targets"] == [
        {
            "target": target,
            "variant": "production",
            "pods": [pod(first, "127.0.0.1"), pod(second, "127.0.0.2")],
            "last_resolution": body["dns_targets"][0]["last_resolution"],  # type: ignore[index]
            "last_error": None,
            "resolutions_ok": body["dns_targets"][0]["resolutions_ok"],  # type: ignore[index]
            "resolutions_failed": 0,
        }
    ]
    targets = body["targets"]
    assert isinstance(targets, list)
    assert {t["url"] for t in targets} == {pod(first, "127.0.0.1"), pod(second, "127.0.0.2")}
    assert all(t["source"] == target and t["up"] for t in targets)
    stop.set()


async def test_pods_that_come_and_go_never_stop_the_variants_figures(
    nursery: trio.Nursery, start_proxy: StartProxy, tmp_path: Path
) -> None:
    first, second = await start_pods(start_proxy)
    target = f"dns+http://{NAME}:{first.running.port}/metrics"
    resolver = Resolver("127.0.0.1")
    running, stop = await start_dashboard(nursery, settings_for(target, tmp_path), resolve=resolver)
    seen: list[Snapshot] = []
    async with trio.open_nursery() as traffic:
        traffic.start_soon(send_traffic, first, second)
        await snapshots_until(running.url, lambda s: bool(s.req_rate), seen)
        resolver.addresses = ["127.0.0.1", "127.0.0.2"]  # a pod appears
        await snapshots_until(running.url, lambda s: s.targets_up == 2, seen)
        resolver.addresses = ["127.0.0.2"]  # the first goes away
        await snapshots_until(running.url, lambda s: s.targets_total == 1, seen)
        await snapshots_until(running.url, lambda s: s.targets_total == 1, seen)
        traffic.cancel_scope.cancel()
    assert all(not s.stale and s.req_rate and s.req_rate > 0 for s in seen)
    body = await status(running.url)
    [dns] = body["dns_targets"]  # type: ignore[misc]
    assert dns["pods"] == [pod(second, "127.0.0.2")]
    stop.set()


async def test_a_failed_resolution_keeps_scraping_the_last_pods(
    nursery: trio.Nursery, start_proxy: StartProxy, tmp_path: Path
) -> None:
    first, second = await start_pods(start_proxy)
    target = f"dns+http://{NAME}:{first.running.port}/metrics"
    resolver = Resolver("127.0.0.1", "127.0.0.2")
    running, stop = await start_dashboard(nursery, settings_for(target, tmp_path), resolve=resolver)
    await snapshots_until(running.url, lambda s: s.targets_up == 2)
    resolver.fail = True
    seen: list[Snapshot] = []
    async with trio.open_nursery() as traffic:
        traffic.start_soon(send_traffic, first, second)
        await snapshots_until(running.url, lambda s: bool(s.req_rate) and len(seen) > 3, seen)
        traffic.cancel_scope.cancel()
    assert all(s.targets_up == 2 for s in seen)
    body = await status(running.url)
    [dns] = body["dns_targets"]  # type: ignore[misc]
    assert dns["last_error"] == "OSError: resolver down" and dns["resolutions_failed"] >= 1
    assert len(dns["pods"]) == 2
    stop.set()


async def test_localhost_is_resolved_for_real(
    nursery: trio.Nursery, start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy = await start_proxy()
    target = f"dns+http://localhost:{proxy.running.port}/metrics"
    running, stop = await start_dashboard(nursery, settings_for(target, tmp_path))
    async with trio.open_nursery() as traffic:
        traffic.start_soon(send_traffic, proxy)
        snapshot = await snapshots_until(running.url, lambda s: bool(s.req_rate))
        traffic.cancel_scope.cancel()
    assert snapshot.targets_up >= 1
    body = await status(running.url)
    [dns] = body["dns_targets"]  # type: ignore[misc]
    # localhost may also resolve to ::1, where nothing listens: that pod is down.
    assert pod(proxy, "127.0.0.1") in dns["pods"] and dns["last_error"] is None
    stop.set()
