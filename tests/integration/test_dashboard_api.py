"""The dashboard service end to end: serve_dashboard scraping a real proxy, its REST
endpoints, the page and static files, and shutdown."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from tests.conftest import ProxyHandle
from zai_proxy.dashboard import (
    AsyncStore,
    Collector,
    Hub,
    RunningDashboard,
    Snapshot,
    Store,
    create_app,
    serve_app,
    serve_dashboard,
)
from zai_proxy.errors import StoreError
from zai_proxy.settings import DashboardSettings

MESSAGE = {
    "model": "glm-4.6",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Say hello."}],
}
# Nothing listens on port 1; "canary" in the URL makes it the canary variant.
DOWN_TARGET = "http://127.0.0.1:1/canary/metrics"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Dashboard:
    running: RunningDashboard
    stop: trio.Event
    proxy: ProxyHandle

    @property
    def url(self) -> str:
        return self.running.url


def settings_for(proxy: ProxyHandle, tmp_path: Path, **changes: object) -> DashboardSettings:
    # Userinfo in the target: it must be used for the scrape but never shown.
    host_port = proxy.origin.removeprefix("http://")
    values: dict[str, object] = {
        "scrape_targets": (f"http://scraper:s3cret-pw@{host_port}/metrics", DOWN_TARGET),
        "scrape_interval": 0.2,
        "scrape_timeout": 0.15,
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "db_path": str(tmp_path / "dashboard.db"),
    }
    values.update(changes)
    return DashboardSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def dashboard(
    nursery: trio.Nursery, proxy: ProxyHandle, tmp_path: Path
) -> AsyncIterator[Dashboard]:
    stop = trio.Event()
    running: RunningDashboard = await nursery.start(
        serve_dashboard, settings_for(proxy, tmp_path), stop
    )
    yield Dashboard(running=running, stop=stop, proxy=proxy)
    stop.set()


async def next_snapshot(url: str, variant: str, *, busy: bool = False) -> Snapshot:
    """The next snapshot of `variant` pushed over SSE (with requests in it, if `busy`)."""
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url + "/api/events") as response:
            event = ""
            with trio.fail_after(10):
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "snapshot":
                        snapshot = Snapshot.from_json(line[5:].strip())
                        if snapshot.variant == variant and (not busy or snapshot.req_rate):
                            return snapshot
    raise AssertionError("the stream ended")


async def send_traffic(proxy: ProxyHandle) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            response = await client.post(proxy.url + "/v1/messages", json=MESSAGE)
            assert response.status_code == 200


async def test_snapshots_follow_the_proxys_traffic(dashboard: Dashboard) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_traffic, dashboard.proxy)
        snapshot = await next_snapshot(dashboard.url, "production", busy=True)
        nursery.cancel_scope.cancel()
    assert snapshot.req_rate and snapshot.req_rate > 0
    assert snapshot.targets_up == 1 and not snapshot.stale
    assert snapshot.error_rate_pct == 0.0
    assert snapshot.latency_p95_ms is not None and snapshot.token_rate_out
    assert snapshot.max_workers == 10
    # Every token of the interval is on the one model the traffic asked for.
    assert list(snapshot.token_rates_by_model) == [MESSAGE["model"]]
    spent = sum(
        getattr(snapshot, f"token_rate_{d}") or 0.0
        for d in ("in", "out", "cache_read", "cache_write")
    )
    assert snapshot.token_rates_by_model[str(MESSAGE["model"])] == pytest.approx(spent)


async def test_history_is_a_json_array_oldest_first(dashboard: Dashboard) -> None:
    await next_snapshot(dashboard.url, "production")
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(dashboard.url + "/api/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        rows = response.json()
        for range_name in ("5m", "15m", "1h", "6h", "24h", "7d"):
            for variant in ("production", "canary", "all"):
                one = await client.get(
                    dashboard.url + "/api/metrics", params={"range": range_name, "variant": variant}
                )
                assert one.status_code == 200 and isinstance(one.json(), list)
        canary = (await client.get(dashboard.url + "/api/metrics?variant=canary")).json()
    assert rows and [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    assert {r["variant"] for r in rows} == {"production", "canary"}
    assert canary and all(r["variant"] == "canary" and r["stale"] for r in canary)


@pytest.mark.parametrize(
    ("query", "parameter", "allowed"),
    [
        ("range=2h", "range", ["5m", "15m", "1h", "6h", "24h", "7d"]),
        ("range=", "range", ["5m", "15m", "1h", "6h", "24h", "7d"]),
        ("variant=staging", "variant", ["production", "canary", "all"]),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_the_allowed_values(
    dashboard: Dashboard, query: str, parameter: str, allowed: list[str]
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{dashboard.url}/api/metrics?{query}")
    assert response.status_code == 400
    body = response.json()
    assert body["parameter"] == parameter and body["allowed"] == allowed


async def test_status_shows_the_latest_per_variant_and_the_down_target_as_stale(
    dashboard: Dashboard,
) -> None:
    await next_snapshot(dashboard.url, "production")
    await next_snapshot(dashboard.url, "canary")
    async with httpx.AsyncClient(timeout=10) as client:
        status = (await client.get(dashboard.url + "/api/status")).json()
    production, canary = status["variants"]["production"], status["variants"]["canary"]
    assert not production["stale"] and production["snapshot"]["variant"] == "production"
    assert canary["stale"] and canary["snapshot"]["stale"]
    targets = {t["variant"]: t for t in status["targets"]}
    assert targets["production"]["up"] and not targets["production"]["stale"]
    assert not targets["canary"]["up"] and targets["canary"]["stale"]
    assert targets["canary"]["last_error"]
    assert "s3cret" not in json.dumps(status)


async def test_config_shows_targets_without_userinfo(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(dashboard.url + "/api/config")
    config = response.json()
    origin = dashboard.proxy.origin
    assert config["targets"] == [f"{origin}/metrics", DOWN_TARGET]
    assert config["scrape_interval_s"] == 0.2
    assert "s3cret" not in response.text and "scraper" not in response.text


def _rule(name: str) -> str:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    [expr] = [r["expr"] for g in rules["groups"] for r in g["rules"] if r["alert"] == name]
    return " ".join(str(expr).split())


def _compared(expr: str, op: str) -> float:
    """The number an alert expression compares with after `op` ("> 0.05" -> 0.05)."""
    found = re.findall(re.escape(op) + r" ?(\d+(?:\.\d+)?)", expr)
    assert found, (expr, op)
    return float(found[-1])


async def test_config_serves_the_alert_rules_thresholds(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        served = (await client.get(dashboard.url + "/api/config")).json()["thresholds"]
    assert served["error_pct"]["warn"] == 100 * _compared(
        _rule("ZaiProxyErrorRateAboveTarget"), ">"
    )
    assert served["error_pct"]["bad"] == 100 * _compared(_rule("ZaiProxyHighErrorRate"), ">")
    assert served["p95_ms"]["bad"] == 1000 * _compared(_rule("ZaiProxyHighLatency"), ">")
    assert served["upstream_429_pct"]["bad"] == 100 * _compared(
        _rule("ZaiProxyUpstream429RateHigh"), ">"
    )
    assert served["utilization"]["warn"] == _compared(_rule("ZaiProxyHighUtilization"), ">")
    # At max capacity: every worker busy, concurrent >= max_workers.
    assert ">= sum by (variant) (zai_proxy_max_workers)" in _rule("ZaiProxyAtMaxCapacity")
    assert served["utilization"]["bad"] == 1.0
    degraded = _rule("ZaiProxyCanaryDegradedVsProduction")
    assert served["canary_errors"]["ratio"] == _compared(degraded, "> ")
    assert served["canary_errors"]["floor_pct"] == 100 * _compared(degraded, "+")
    slower = _rule("ZaiProxyCanarySlowerThanProduction")
    assert served["canary_p95"]["ratio"] == _compared(slower, "> ")


async def test_healthz(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(dashboard.url + "/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_own_metrics_count_scrapes_clients_and_db_size(dashboard: Dashboard) -> None:
    await next_snapshot(dashboard.url, "canary")
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(dashboard.url + "/metrics")).text
    origin = dashboard.proxy.origin
    assert f'zai_dashboard_scrapes_total{{result="ok",target="{origin}/metrics"}}' in text
    assert f'zai_dashboard_scrapes_total{{result="failed",target="{DOWN_TARGET}"}}' in text
    assert "zai_dashboard_sse_clients " in text
    assert "zai_dashboard_sse_dropped_clients_total 0.0" in text
    size = next(line for line in text.splitlines() if line.startswith("zai_dashboard_db_size"))
    assert float(size.split()[1]) > 0
    assert "s3cret" not in text


async def test_the_page_is_served_from_the_package(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        page = await client.get(dashboard.url + "/")
        same = await client.get(dashboard.url + "/static/index.html")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert b"<html" in page.content and same.content == page.content


async def test_stop_ends_streams_and_the_service_promptly(
    proxy: ProxyHandle, tmp_path: Path
) -> None:
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            running: RunningDashboard = await nursery.start(
                serve_dashboard, settings_for(proxy, tmp_path), stop
            )

            async def listen() -> None:
                async with httpx.AsyncClient(timeout=30) as client:
                    async with client.stream("GET", running.url + "/api/events") as response:
                        async for _ in response.aiter_lines():
                            pass

            for _ in range(3):
                nursery.start_soon(listen)
            while running.hub.clients < 3:
                await running.hub.wait_changed()
            stopped_at = trio.current_time()
            stop.set()
        took = trio.current_time() - stopped_at
    assert took < 2.0


async def test_an_unusable_db_path_stops_start_up_with_a_clear_error(
    proxy: ProxyHandle, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    settings = settings_for(proxy, tmp_path, db_path=str(tmp_path / "file" / "dashboard.db"))
    with pytest.raises(StoreError, match=r"^DB_PATH="):
        await serve_dashboard(settings, trio.Event())


# --------------------------------------------------------------------------- static files


@pytest.fixture
async def static_site(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[str]:
    root = tmp_path / "static"
    (root / "img").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>t</title>")
    (root / "app.js").write_text("console.log(1)")
    (root / "style.css").write_text("body{}")
    (root / "img" / "logo.svg").write_text("<svg/>")
    (tmp_path / "secret.txt").write_text("do not serve")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    settings = DashboardSettings(
        scrape_targets=("http://x/metrics",), db_path=str(tmp_path / "d.db")
    )
    collector = Collector(settings.scrape_targets, interval=5.0, epoch_ts=0.0)
    hub = Hub(scrape_interval=5.0)
    store = Store(settings.db_path, retention_5s=3600.0, retention_1m=7200.0)
    app = create_app(
        settings=settings, collector=collector, hub=hub, store=AsyncStore(store), static_dir=root
    )
    stop = trio.Event()
    port = await nursery.start(serve_app, app, hub, "127.0.0.1", 0, stop)
    yield f"127.0.0.1:{port}"
    stop.set()
    store.close()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
        ("/static/img/logo.svg", "image/svg+xml"),
        ("/static/index.html", "text/html; charset=utf-8"),
    ],
)
async def test_static_files_have_their_content_types(
    static_site: str, path: str, content_type: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://{static_site}{path}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type


async def raw_get(host_port: str, target: str) -> bytes:
    """A request line sent as written: clients would normalise the `..` away."""
    host, port = host_port.split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = f"GET {target} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        answer = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some()
            head, _, body = answer.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += await stream.receive_some()
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "target",
    [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/img/../../secret.txt",
        "/static/link.txt",
        "/static//etc/passwd",
        "/static/",
        "/static/missing.js",
    ],
)
async def test_paths_outside_static_are_refused(static_site: str, target: str) -> None:
    answer = await raw_get(static_site, target)
    status = answer.split(b"\r\n", 1)[0]
    assert b" 200 " not in status, status
    assert b"do not serve" not in answer and b"root:" not in answer
