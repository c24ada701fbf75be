"""The collector against a real Prometheus: same proxy, same scrapes, same answers.

```
traffic -> proxy /metrics <- tap /collector <- the dashboard's scrape loop (every 1 s)
                              tap /prometheus <- Prometheus (every 0.2 s)
```
The tap records every exposition the collector fetched, with the time it fetched it,
and serves the latest one to Prometheus with those times as explicit sample timestamps.
So Prometheus stores exactly the samples the collector saw, at the instants it saw them,
and `rate(x[W])` evaluated at one scrape's time, with W reaching back exactly to the
scrape before, covers the same two samples as the collector's snapshot: no extrapolation
(the window starts and ends on a sample), so the two must agree.  They can differ only
by when each side read its clock, a millisecond or so in a second.  The same maths
replayed with the tap's own timestamps must agree to rounding.
"""

from __future__ import annotations

import socket
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from quart import Response
from quart_trio import QuartTrio

from tests.conftest import ProxyHandle, StartProxy, StartUpstream, require_tool
from zai_proxy.dashboard import Collector, Hub, ScrapeLoop, Snapshot, fetch_metrics, serve_app

SNAPSHOTS = 6
LIVE_TOLERANCE = 0.02
REPLAY_TOLERANCE = 1e-9


class Tap:
    """Records each exposition the collector fetches; replays the latest to Prometheus."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.records: list[tuple[int, str]] = []
        self.app = QuartTrio("tap", static_folder=None)
        self.app.add_url_rule("/collector", view_func=self._collector)
        self.app.add_url_rule("/prometheus", view_func=self._prometheus)
        self._client = httpx.AsyncClient(timeout=5, trust_env=False)

    async def _collector(self) -> Response:
        text = await fetch_metrics(self._client, self.source)
        self.records.append((int(time.time() * 1000), text))
        return Response(text, content_type="text/plain; version=0.0.4")

    async def _prometheus(self) -> Response:
        if not self.records:
            return Response("", status=503)
        stamp, text = self.records[-1]
        lines = [
            line if not line or line.startswith("#") else f"{line} {stamp}"
            for line in text.splitlines()
        ]
        return Response("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")

    async def aclose(self) -> None:
        await self._client.aclose()


CONTEXT = "You answer briefly and precisely. " * 40


def message(i: int) -> dict[str, Any]:
    """A cached system prompt shared by five requests in a row (one cache write, four
    reads) and a question of its own (input tokens): all four token directions move."""
    return {
        "model": "glm-4.6",
        "max_tokens": 64,
        "stream": i % 2 == 1,
        "system": [
            {"type": "text", "text": f"{CONTEXT}#{i // 5}", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [{"role": "user", "content": f"Question {i}: say hello to number {i}."}],
    }


async def drive(proxy: ProxyHandle, warmed: trio.Event, *, per_second: float = 60.0) -> None:
    """Steady mixed traffic: streaming and not, some 500s, some slow answers."""
    sent = 0
    done = 0

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal done
        headers = {}
        if i % 10 == 0:
            headers["x-sim-fault"] = "500"
        elif i % 7 == 0:
            headers["x-sim-fault"] = f"slow;delay={0.02 + (i % 3) * 0.03}"
        async with client.stream(
            "POST", proxy.url + "/v1/messages", json=message(i), headers=headers
        ) as r:
            await r.aread()
        done += 1
        if done >= 40:
            warmed.set()

    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=50)) as client:
        async with trio.open_nursery() as nursery:
            next_at = trio.current_time()
            while True:
                nursery.start_soon(one, sent, client)
                sent += 1
                next_at += 1.0 / per_second
                await trio.sleep_until(next_at)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, binary: str, tmp_path: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
            "scrape_configs:\n  - job_name: tap\n    honor_timestamps: true\n"
            f"    metrics_path: /prometheus\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            "--storage.tsdb.retention.time=1h",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.process: trio.Process | None = None
        self.client = httpx.AsyncClient(timeout=5, trust_env=False)

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with trio.fail_after(20):
            while True:
                try:
                    if (await self.client.get(self.url + "/-/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.process.returncode is None, "prometheus exited"
                await trio.sleep(0.05)  # noqa: ASYNC110 - polls another process

    async def scraping(self) -> None:
        """Wait for the first scrape (target discovery holds the first one back ~5 s)."""
        with trio.fail_after(20):
            while not await self.query('up{job="tap"}', int(time.time() * 1000)):  # noqa: ASYNC110
                await trio.sleep(0.05)

    async def stop(self) -> None:
        await self.client.aclose()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with trio.move_on_after(10, shield=True):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()

    async def query(self, expr: str, at_ms: int) -> dict[str, float]:
        response = await self.client.get(
            self.url + "/api/v1/query", params={"query": expr, "time": f"{at_ms / 1000:.3f}"}
        )
        body: dict[str, Any] = response.json()
        assert body["status"] == "success", body
        return {
            ",".join(f"{k}={v}" for k, v in sorted(item["metric"].items())): float(item["value"][1])
            for item in body["data"]["result"]
        }

    async def scalar(self, expr: str, at_ms: int) -> float:
        result = await self.query(expr, at_ms)
        assert len(result) == 1, (expr, result)
        return next(iter(result.values()))


def relative(a: float | None, b: float) -> float:
    assert a is not None
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


async def promql_figures(prometheus: Prometheus, start_ms: int, end_ms: int) -> dict[str, float]:
    """The snapshot's figures in PromQL, over exactly the two samples at start and end."""
    # Prometheus 2.x selects [t - W, t] with both ends included, so W = end - start holds
    # both samples; if a version ever leaves the start out, widen by 1 ms (extrapolation
    # over 1 ms then changes the result by ~0.1 %).
    window = end_ms - start_ms
    if await prometheus.scalar(f"count_over_time(zai_proxy_max_workers[{window}ms])", end_ms) < 2:
        window += 1
    w = f"[{window}ms]"
    figures = {
        "req_rate": await prometheus.scalar(f"sum(rate(zai_proxy_requests_total{w}))", end_ms),
        "error_rate_pct": await prometheus.scalar(
            f'100 * sum(rate(zai_proxy_requests_total{{status_code=~"5.."}}{w}))'
            f" / sum(rate(zai_proxy_requests_total{w}))",
            end_ms,
        ),
    }
    for q, name in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms"), (0.99, "latency_p99_ms")):
        figures[name] = await prometheus.scalar(
            f"1000 * histogram_quantile({q}, sum by (le)"
            f" (rate(zai_proxy_request_duration_seconds_bucket{w})))",
            end_ms,
        )
    tokens = await prometheus.query(f"sum by (direction) (rate(zai_proxy_tokens_total{w}))", end_ms)
    for direction, name in (
        ("input", "token_rate_in"),
        ("output", "token_rate_out"),
        ("cache_read", "token_rate_cache_read"),
        ("cache_write", "token_rate_cache_write"),
    ):
        figures[name] = tokens.get(f"direction={direction}", 0.0)
    return figures


def replay(url: str, first: tuple[int, str], second: tuple[int, str]) -> Snapshot:
    """The collector's maths on the same two texts, timed by the tap's clock.  Times are
    taken relative to the first, as Prometheus subtracts whole milliseconds: unix seconds
    as floats would lose ~1e-7 s to rounding."""
    collector = Collector([url], interval=1.0, epoch_ts=0.0)
    collector.observe(url, 0, at=0.0, text=first[1])
    (snapshot,) = collector.observe(url, 1, at=(second[0] - first[0]) / 1000, text=second[1])
    return snapshot


async def test_collector_figures_match_prometheus(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    binary = require_tool("prometheus")
    upstream = await start_upstream(latency=0.004, stream_gap=0.001, cache_ratio=0.5)
    proxy = await start_proxy(upstream)
    tap = Tap(proxy.origin + "/metrics")
    tap_stop = trio.Event()
    tap_port = await nursery.start(
        serve_app, tap.app, Hub(scrape_interval=1.0), "127.0.0.1", 0, tap_stop
    )
    prometheus = Prometheus(binary, tmp_path, f"127.0.0.1:{tap_port}")
    try:
        async with trio.open_nursery() as work:
            warmed = trio.Event()
            work.start_soon(drive, proxy, warmed)
            await prometheus.start()
            with trio.fail_after(10):
                await warmed.wait()
            await prometheus.scraping()

            # Every series (statuses, streaming, slow) exists before the first scrape.
            url = f"http://127.0.0.1:{tap_port}/collector"
            snapshots: list[Snapshot] = []
            enough = trio.Event()

            async def emit(snapshot: Snapshot) -> None:
                snapshots.append(snapshot)
                if len(snapshots) == SNAPSHOTS:
                    enough.set()

            client = httpx.AsyncClient(timeout=2, trust_env=False)
            collector = Collector([url], interval=1.0, epoch_ts=time.time())
            loop = ScrapeLoop(
                collector, fetch=partial(fetch_metrics, client), emit=emit, timeout=0.9
            )
            work.start_soon(loop.run_target, url)
            with trio.fail_after(SNAPSHOTS + 5):
                await enough.wait()
            work.cancel_scope.cancel()
        await client.aclose()

        records = list(tap.records)
        assert len(records) >= SNAPSHOTS + 1
        assert not any(s.stale for s in snapshots)
        # Prometheus has ingested the last sample compared.
        last_ms = records[SNAPSHOTS][0]
        with trio.fail_after(10):
            while True:
                seen = await prometheus.query("timestamp(zai_proxy_max_workers)", last_ms)
                if seen and next(iter(seen.values())) == last_ms / 1000:
                    break
                await trio.sleep(0.05)  # noqa: ASYNC110 - polls another process

        worst_live: dict[str, float] = {}
        worst_replay = 0.0
        for i, snapshot in enumerate(snapshots[:SNAPSHOTS]):
            start_ms, end_ms = records[i][0], records[i + 1][0]
            truth = await promql_figures(prometheus, start_ms, end_ms)
            exact = replay(url, records[i], records[i + 1])
            assert snapshot.req_rate and snapshot.req_rate > 10
            assert snapshot.error_rate_pct and snapshot.error_rate_pct > 0
            for name, expected in truth.items():
                assert expected > 0, (name, truth)  # every figure compared is a real one
                live = getattr(snapshot, name)
                worst_live[name] = max(worst_live.get(name, 0.0), relative(live, expected))
                worst_replay = max(worst_replay, relative(getattr(exact, name), expected))
        print(
            "\ncollector vs Prometheus, max relative difference over "
            f"{SNAPSHOTS} one-second windows:"
        )
        for name, worst in worst_live.items():
            print(f"  {name:24s} live {worst:.2e}")
        print(f"  replayed on the same timestamps: {worst_replay:.2e}")
        assert max(worst_live.values()) <= LIVE_TOLERANCE, worst_live
        assert worst_replay <= REPLAY_TOLERANCE
    finally:
        tap_stop.set()
        await tap.aclose()
        await prometheus.stop()
