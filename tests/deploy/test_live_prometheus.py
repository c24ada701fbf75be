"""A real Prometheus scrapes a production and a canary proxy under traffic with faults;
then every Grafana query and every alert expression runs against it.

Prometheus gets the ServiceMonitor's own relabelling (translated to a scrape config), the
Kubernetes label it reads set by hand on each target, and rules.yml with the group
interval shortened so the rules evaluate within the test.  Everything is on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml

from tests.conftest import ProxyHandle, StartProxy, StartUpstream, require_tool
from tests.deploy.manifests import DASHBOARD, RULES, one, overlay

TRAFFIC_SECONDS = 5.0
SCRAPE = "1s"
COMMIT = "c0ffee1"

# What Grafana would put in place of its variables: a multi-value `$variant` is a regex
# alternation, `$__rate_interval` at least four scrape intervals.
GRAFANA_VARIABLES = {
    "$__rate_interval": "30s",
    "$__interval": "2s",
    "$__range": "1m",
    "${variant}": "(production|canary)",
    "$variant": "(production|canary)",
}
INSTANT_PANELS = {"stat", "gauge", "bargauge", "table"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _relabel_configs() -> list[dict[str, Any]]:
    """The production ServiceMonitor's relabelings, as Prometheus spells them."""
    monitor = one(list(overlay("production")), "ServiceMonitor", "zai-proxy")
    (endpoint,) = monitor["spec"]["endpoints"]
    snake = re.compile(r"(?<!^)(?=[A-Z])")
    return [
        {snake.sub("_", key).lower(): value for key, value in item.items()}
        for item in endpoint["relabelings"]
    ]


def _config(tmp_path: Path, proxies: dict[str, ProxyHandle]) -> Path:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        group["interval"] = SCRAPE
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(rules))
    config = {
        "global": {
            "scrape_interval": SCRAPE,
            "scrape_timeout": "900ms",
            "evaluation_interval": SCRAPE,
        },
        "rule_files": [str(rules_file)],
        "scrape_configs": [
            {
                "job_name": "zai-proxy",
                "metrics_path": "/metrics",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{proxy.running.port}"],
                        # What Kubernetes service discovery would read off each Service.
                        "labels": {"__meta_kubernetes_service_label_variant": variant},
                    }
                    for variant, proxy in proxies.items()
                ],
                "relabel_configs": _relabel_configs(),
            }
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _expand(query: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        query = query.replace(name, value)
    assert "$" not in query, f"unreplaced Grafana variable in {query!r}"
    return query


# ----------------------------------------------------------------------------- traffic

MESSAGE = {
    "model": "glm-4.6",
    "max_tokens": 64,
    "system": "You are a careful assistant. " * 20,
    "messages": [{"role": "user", "content": "Say hello."}],
}
CHAT = {
    "model": "glm-4.5",
    "stream": True,
    "messages": [{"role": "user", "content": "Count to five, slowly and with feeling."}],
}
# (path, body, x-sim-fault header or None), in turn; the canary gets a worse mix.
SCRIPTS: dict[str, list[tuple[str, dict[str, Any], str | None]]] = {
    "production": [
        ("/v1/messages", MESSAGE, None),
        ("/v1/messages", {**MESSAGE, "stream": True}, None),
        ("/v1/chat/completions", CHAT, None),
        ("/v1/messages", MESSAGE, None),
        ("/v1/messages", MESSAGE, "429"),
        ("/v1/messages", MESSAGE, None),
        ("/v1/messages", MESSAGE, "truncated_json"),
        ("/v1/messages", {**MESSAGE, "stream": True}, None),
    ],
    "canary": [
        ("/v1/messages", MESSAGE, None),
        ("/v1/messages", {**MESSAGE, "stream": True}, "die_mid_stream"),
        ("/v1/chat/completions", CHAT, None),
        ("/v1/messages", MESSAGE, "500"),
        ("/v1/messages", MESSAGE, "429"),
        ("/v1/messages", MESSAGE, "reset"),
        ("/v1/messages", {**MESSAGE, "stream": True}, None),
        ("/v1/messages", MESSAGE, "slow;delay=0.2"),
    ],
}


async def _agent(proxy: ProxyHandle, variant: str, until: float, sent: dict[str, int]) -> None:
    script = SCRIPTS[variant]
    async with httpx.AsyncClient(timeout=10) as client:
        step = 0
        while trio.current_time() < until:
            path, body, fault = script[step % len(script)]
            step += 1
            headers = {"x-sim-fault": fault} if fault else {}
            async with client.stream(
                "POST", proxy.url + path, json=body, headers=headers
            ) as response:
                try:
                    async for _ in response.aiter_bytes():
                        pass
                except httpx.RemoteProtocolError:
                    pass  # a stream the upstream broke off: the proxy ends it early
            sent[variant] += 1
            await trio.sleep(0.01)


# ----------------------------------------------------------------------------- prometheus


class Prometheus:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str, **params: str) -> Any:
        response = await self.client.get(path, params=params)
        # Before it is ready Prometheus answers 503 with a plain-text body.
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (
            f"{path} {params}: {response.status_code} {body}"
        )
        return body["data"]

    async def query(self, query: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=query)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def query_range(self, query: str, seconds: float) -> list[dict[str, Any]]:
        end = await self._now()  # Prometheus's clock, not trio's
        data = await self.get(
            "/api/v1/query_range",
            query=query,
            start=f"{end - seconds:.3f}",
            end=f"{end:.3f}",
            step="1",
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    async def _now(self) -> float:
        data = await self.get("/api/v1/query", query="time()")
        return float(data["result"][0])

    async def wait_until(self, query: str, check: Any) -> list[dict[str, Any]]:
        """Poll (another process: no event to wait on) until `check(result)` holds."""
        while True:
            try:
                result = await self.query(query)
            except (httpx.HTTPError, AssertionError):
                result = None
            if result is not None and check(result):
                return result
            await trio.sleep(0.25)


def _has_numbers(series: list[dict[str, Any]]) -> bool:
    values = [s["value"][1] for s in series if "value" in s]
    values += [v for s in series for _, v in s.get("values", [])]
    return any(v not in ("NaN", "+Inf", "-Inf") for v in values)


async def test_prometheus_scrapes_both_variants_and_every_panel_and_alert_evaluates(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    binary = require_tool("prometheus")
    upstream = await start_upstream(cache_ratio=0.5)
    common = {
        "MAX_RETRIES": "2",
        "RATE_LIMIT_WINDOW": "1s",
        "RATE_LIMIT_MAX_WAIT": "1s",
        "BUILD_COMMIT": COMMIT,
        "BUILD_TIME": "2026-01-01T00:00:00Z",
    }
    proxies = {
        variant: await start_proxy(upstream, DEPLOYMENT_VARIANT=variant, **common)
        for variant in ("production", "canary")
    }

    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = await trio.lowlevel.open_process(
        [
            binary,
            f"--config.file={_config(tmp_path, proxies)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            prometheus = Prometheus(client)
            with trio.fail_after(20):
                await prometheus.wait_until(
                    'up{job="zai-proxy"} == 1', lambda result: len(result) == 2
                )

            sent = {"production": 0, "canary": 0}
            until = trio.current_time() + TRAFFIC_SECONDS
            async with trio.open_nursery() as nursery:
                for variant, proxy in proxies.items():
                    for _ in range(3):
                        nursery.start_soon(_agent, proxy, variant, until, sent)
            for proxy in proxies.values():
                await proxy.settled()
            assert min(sent.values()) >= 20, sent

            await _wait_for_final_scrape(prometheus, proxies)

            await _check_relabelling_and_build_info(prometheus)
            await _check_dashboard(prometheus)
            await _check_alert_rules(prometheus)
    finally:
        with trio.move_on_after(10, shield=True) as waited:
            process.terminate()
            await process.wait()
        if waited.cancelled_caught:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        log.close()
        # Shown by pytest only when the test failed.
        print((tmp_path / "prometheus.log").read_text(errors="replace")[-4000:])


async def _wait_for_final_scrape(prometheus: Prometheus, proxies: dict[str, ProxyHandle]) -> None:
    """Until Prometheus has each proxy's request count as the proxy has it now."""
    wanted: dict[str, float] = {}
    for variant, proxy in proxies.items():
        registry = proxy.running.app.metrics.registry
        wanted[variant] = sum(
            sample.value
            for family in registry.collect()
            if family.name == "zai_proxy_requests"
            for sample in family.samples
            if sample.name == "zai_proxy_requests_total"
        )

    def caught_up(result: list[dict[str, Any]]) -> bool:
        seen = {s["metric"]["variant"]: float(s["value"][1]) for s in result}
        return seen == wanted

    with trio.fail_after(10):
        await prometheus.wait_until("sum by (variant) (zai_proxy_requests_total)", caught_up)


async def _check_relabelling_and_build_info(prometheus: Prometheus) -> None:
    pairs = await prometheus.query(
        "group by (variant, deployment_variant) (zai_proxy_requests_total)"
    )
    assert {(s["metric"]["variant"], s["metric"]["deployment_variant"]) for s in pairs} == {
        ("production", "production"),
        ("canary", "canary"),
    }
    builds = await prometheus.query(f'zai_proxy_build_info{{commit="{COMMIT}"}}')
    assert {s["metric"]["variant"] for s in builds} == {"production", "canary"}
    # Both variants saw errors of their own, so the error panels have something to show.
    errors = await prometheus.query(
        "sum by (variant) (increase(zai_proxy_upstream_errors_total[1m])) > 0"
    )
    assert {s["metric"]["variant"] for s in errors} == {"production", "canary"}
    directions = await prometheus.query("sum by (direction) (zai_proxy_tokens_total) > 0")
    assert {s["metric"]["direction"] for s in directions} == {
        "input",
        "output",
        "cache_read",
        "cache_write",
    }


async def _check_dashboard(prometheus: Prometheus) -> None:
    """Every target returns series, and every panel shows at least one number."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    empty: list[str] = []
    checked = 0
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        numbers = False
        for target in panel["targets"]:
            query = _expand(target["expr"])
            if panel["type"] in INSTANT_PANELS:
                result = await prometheus.query(query)
            else:
                result = await prometheus.query_range(query, seconds=20)
            checked += 1
            if not result:
                empty.append(f"{panel['title']} / {target['legendFormat']}")
            numbers |= _has_numbers(result)
        if not numbers:
            empty.append(panel["title"])
    assert checked == sum(len(p.get("targets", [])) for p in dashboard["panels"]) > 30
    assert empty == [], f"queries without data: {empty}"


async def _check_alert_rules(prometheus: Prometheus) -> None:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    expected = {rule["alert"] for group in groups for rule in group["rules"]}
    for group in groups:
        for rule in group["rules"]:
            await prometheus.query(rule["expr"])  # evaluates without error

    def evaluated(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            rule["name"]: rule
            for group in data["groups"]
            for rule in group["rules"]
            if rule["lastEvaluation"] > "1970-01-01T00:00:01Z"
        }

    with trio.fail_after(10):
        while set(evaluated(await prometheus.get("/api/v1/rules"))) != expected:  # noqa: ASYNC110
            await trio.sleep(0.25)
    for name, rule in evaluated(await prometheus.get("/api/v1/rules")).items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
