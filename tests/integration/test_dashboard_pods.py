"""A dns+ target end to end: real proxies as pods on 127.0.0.1 and 127.0.0.2 (same port),
a resolver the test drives, the dashboard's snapshots and /api/status; and `localhost`
resolved for real.  Pods on a shared limiter are served as fixed exposition text by
`FakePods`, a real HTTP server on both addresses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
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


# --------------------------------------------------------------- pods on a shared limiter


@dataclass
class FakePod:
    """The limiter gauges one pod exports; `backend` None is a proxy from before them."""

    backend: str | None = "redis"
    up: int = 1
    rate: float = 7.5
    ceiling: float = 9.0
    judge: int = 0
    replicas: int = 2
    variant: str = "production"
    requests: int = 0

    def exposition(self) -> str:
        self.requests += 10  # some traffic, so every snapshot has a request rate
        v = f'variant="{self.variant}"'
        lines = [
            "# TYPE zai_proxy_requests_total counter",
            f'zai_proxy_requests_total{{method="POST",path="/v1/messages",status_code="200",{v}}}'
            f" {self.requests}",
            "# TYPE zai_proxy_rate_limit_requests_per_second gauge",
            f"zai_proxy_rate_limit_requests_per_second{{{v}}} {self.rate}",
            "# TYPE zai_proxy_rate_limit_ceiling_requests_per_second gauge",
            f"zai_proxy_rate_limit_ceiling_requests_per_second{{{v}}} {self.ceiling}",
        ]
        if self.backend is not None:
            lines += [
                "# TYPE zai_proxy_rate_limit_backend_up gauge",
                f'zai_proxy_rate_limit_backend_up{{backend="{self.backend}",{v}}} {self.up}',
                "# TYPE zai_proxy_rate_limit_backend_errors_total counter",
                f"zai_proxy_rate_limit_backend_errors_total{{{v}}} 0",
                "# TYPE zai_proxy_rate_limit_replicas gauge",
                f"zai_proxy_rate_limit_replicas{{{v}}} {self.replicas}",
                "# TYPE zai_proxy_rate_limit_judge gauge",
                f"zai_proxy_rate_limit_judge{{{v}}} {self.judge}",
            ]
        return "\n".join(lines) + "\n"


@dataclass
class FakePods:
    """One port on 127.0.0.1 and 127.0.0.2, each address a pod answering its /metrics."""

    pods: dict[str, FakePod] = field(
        default_factory=lambda: {"127.0.0.1": FakePod(judge=1), "127.0.0.2": FakePod()}
    )
    port: int = 0

    def target(self) -> str:
        return f"dns+http://{NAME}:{self.port}/metrics"

    def pod_url(self, address: str) -> str:
        return f"http://{address}:{self.port}/metrics"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        first = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = first[0].socket.getsockname()[1]
        second = await trio.open_tcp_listeners(self.port, host="127.0.0.2")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, partial(self._handle, "127.0.0.1"), first)
            nursery.start_soon(trio.serve_listeners, partial(self._handle, "127.0.0.2"), second)
            task_status.started()

    async def _handle(self, address: str, stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in request:
                    chunk = await stream.receive_some()
                    if not chunk:
                        return
                    request += chunk
            body = self.pods[address].exposition().encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            try:
                await stream.send_all(head.encode() + body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the scraper gave up


async def start_fake_pods(nursery: trio.Nursery, pods: FakePods | None = None) -> FakePods:
    pods = pods if pods is not None else FakePods()
    await nursery.start(pods.serve)
    return pods


async def test_pods_sharing_a_limiter_give_its_rate_once_not_once_per_pod(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    pods = await start_fake_pods(nursery)
    resolver = Resolver("127.0.0.1", "127.0.0.2")
    running, stop = await start_dashboard(
        nursery, settings_for(pods.target(), tmp_path), resolve=resolver
    )
    snapshot = await snapshots_until(running.url, lambda s: s.targets_up == 2)
    assert (snapshot.rate_limit_rps, snapshot.rate_limit_ceiling) == (7.5, 9.0)
    assert snapshot.rate_limit_backend == "redis"
    assert (snapshot.rate_limit_backend_up, snapshot.rate_limit_replicas) == (2.0, 2.0)
    assert snapshot.rate_limit_backend_error_rate == 0.0
    body = await status(running.url)
    limiters = {t["url"]: t["limiter"] for t in body["targets"]}  # type: ignore[attr-defined]
    assert limiters == {
        pods.pod_url("127.0.0.1"): {
            "backend": "redis",
            "up": True,
            "judge": True,
            "replicas": 2.0,
            "rate": 7.5,
            "ceiling": 9.0,
        },
        pods.pod_url("127.0.0.2"): {
            "backend": "redis",
            "up": True,
            "judge": False,
            "replicas": 2.0,
            "rate": 7.5,
            "ceiling": 9.0,
        },
    }
    stop.set()


async def test_a_pod_whose_redis_is_down_adds_its_local_bucket_to_the_shared_rate(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    pods = await start_fake_pods(nursery)
    fallback = pods.pods["127.0.0.2"]
    fallback.up, fallback.rate, fallback.replicas = 0, 2.0, 1
    resolver = Resolver("127.0.0.1", "127.0.0.2")
    running, stop = await start_dashboard(
        nursery, settings_for(pods.target(), tmp_path), resolve=resolver
    )
    snapshot = await snapshots_until(running.url, lambda s: s.targets_up == 2)
    assert (snapshot.rate_limit_rps, snapshot.rate_limit_ceiling) == (9.5, 18.0)
    assert snapshot.rate_limit_backend == "redis"
    assert (snapshot.rate_limit_backend_up, snapshot.rate_limit_replicas) == (1.0, 2.0)
    body = await status(running.url)
    ups = {t["url"]: t["limiter"]["up"] for t in body["targets"]}  # type: ignore[attr-defined]
    assert ups == {pods.pod_url("127.0.0.1"): True, pods.pod_url("127.0.0.2"): False}
    stop.set()


async def test_older_proxies_without_the_backend_metrics_are_summed_as_memory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    old = {"127.0.0.1": FakePod(backend=None, rate=4.0), "127.0.0.2": FakePod(backend=None)}
    pods = await start_fake_pods(nursery, FakePods(pods=old))
    resolver = Resolver("127.0.0.1", "127.0.0.2")
    running, stop = await start_dashboard(
        nursery, settings_for(pods.target(), tmp_path), resolve=resolver
    )
    snapshot = await snapshots_until(running.url, lambda s: s.targets_up == 2)
    assert (snapshot.rate_limit_rps, snapshot.rate_limit_ceiling) == (11.5, 18.0)
    assert snapshot.rate_limit_backend == "memory"
    assert (snapshot.rate_limit_backend_up, snapshot.rate_limit_replicas) == (2.0, None)
    stop.set()


async def test_pods_joining_and_leaving_a_shared_limiter_make_no_step_in_its_rate(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    pods = await start_fake_pods(nursery)
    resolver = Resolver("127.0.0.1")
    running, stop = await start_dashboard(
        nursery, settings_for(pods.target(), tmp_path), resolve=resolver
    )
    seen: list[Snapshot] = []
    await snapshots_until(running.url, lambda s: bool(s.req_rate), seen)
    resolver.addresses = ["127.0.0.1", "127.0.0.2"]  # a pod appears
    await snapshots_until(running.url, lambda s: s.targets_up == 2, seen)
    await snapshots_until(running.url, lambda s: s.targets_up == 2, seen)
    resolver.addresses = ["127.0.0.2"]  # the judge goes away
    await snapshots_until(running.url, lambda s: s.targets_total == 1, seen)
    await snapshots_until(running.url, lambda s: s.targets_total == 1, seen)
    assert {s.targets_up for s in seen} == {1, 2}
    assert all(not s.stale and s.req_rate and s.req_rate > 0 for s in seen)
    assert {(s.rate_limit_rps, s.rate_limit_ceiling) for s in seen} == {(7.5, 9.0)}
    stop.set()
