"""The dashboard's HTTP surface: a QuartTrio app.

```
GET /api/events                      SSE: connected, then snapshot frames, keepalives
GET /api/metrics?range=&variant=     history, JSON array of snapshots, oldest first
GET /api/status                      latest snapshot per variant, targets (pods too), dns+ targets
GET /api/config                      scrape interval and targets (userinfo removed)
GET /healthz                         liveness
GET /metrics                         the dashboard's own health, zai_dashboard_*
GET /  and  /static/<path>           the page, from the installed package zai_proxy.static
```
`range` defaults to 1h (what the page shows first) and `variant` to all.  A bad
parameter (unknown value, or given twice) is a 400 whose JSON names the allowed values
and quotes at most ECHO_LIMIT characters of what was sent; unknown parameters are
ignored.  Every answer says `X-Content-Type-Options: nosniff`, so nothing a client sent
is ever read as HTML.
"""

from __future__ import annotations

import importlib.util
import json
import mimetypes
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from prometheus_client import CollectorRegistry, exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector
from quart import Response, request
from quart_trio import QuartTrio

from .. import __version__
from ..settings import VARIANTS, DashboardSettings, without_userinfo
from .collector import Collector
from .hub import Hub
from .store import AsyncStore

__all__ = [
    "ALERT_THRESHOLDS",
    "DEFAULT_RANGE",
    "ECHO_LIMIT",
    "RANGES",
    "STATIC_DIR",
    "VARIANT_CHOICES",
    "DashboardStats",
    "create_app",
]


def _find_static_dir() -> Path:
    """The page's directory: the package zai_proxy.static, which pyproject.toml maps from
    the repository's static/ (a wheel holds a copy, an editable install points at the
    checkout).  Found without importing it; from a checkout run with PYTHONPATH=src
    (nothing installed), the checkout's static/."""
    spec = importlib.util.find_spec("zai_proxy.static")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[3] / "static"


RANGES: dict[str, float] = {
    "5m": 300.0,
    "15m": 900.0,
    "1h": 3600.0,
    "6h": 6 * 3600.0,
    "24h": 24 * 3600.0,
    "7d": 7 * 24 * 3600.0,
}
DEFAULT_RANGE = "1h"
VARIANT_CHOICES = (*VARIANTS, "all")
STATIC_DIR = _find_static_dir()
# The alert rules' thresholds (deploy/prometheus/rules.yml), served in /api/config so the
# page colours its verdict tiles by the rules, not by figures of its own; a test reads
# the rules file and checks that these agree with it.
ALERT_THRESHOLDS: dict[str, dict[str, float]] = {
    # ZaiProxyErrorRateAboveTarget (info) and ZaiProxyHighErrorRate (warning): 5xx share.
    "error_pct": {"warn": 2.0, "bad": 5.0},
    # ZaiProxyHighLatency: p95 above 10 s.
    "p95_ms": {"bad": 10_000.0},
    # ZaiProxyUpstream429RateHigh: 429s per upstream attempt.
    "upstream_429_pct": {"bad": 5.0},
    # ZaiProxyHighUtilization (0.9) and ZaiProxyAtMaxCapacity (every worker busy).
    "utilization": {"warn": 0.9, "bad": 1.0},
    # ZaiProxyCanaryDegradedVsProduction: canary errors > ratio x (production + floor).
    "canary_errors": {"ratio": 2.0, "floor_pct": 1.0},
    # ZaiProxyCanarySlowerThanProduction: canary p95 > ratio x production's.
    "canary_p95": {"ratio": 1.5},
}
# How much of a bad parameter's value a 400 quotes back: enough to see the mistake.
ECHO_LIMIT = 64
# The last write of an answer, which also closes a `Connection: close` connection.
_LAST_WRITE_TIMEOUT = 10.0
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}


class DashboardStats:
    """Counts the server keeps for /metrics, beside those of the hub and the collector."""

    def __init__(self) -> None:
        self.store_errors = 0
        self.task_restarts: dict[str, int] = {}

    def restarted(self, task: str) -> None:
        self.task_restarts[task] = self.task_restarts.get(task, 0) + 1


class _HealthCollector(PromCollector):
    """Reads the dashboard's state when scraped: nothing to keep in step per event."""

    def __init__(
        self, collector: Collector, hub: Hub, store: AsyncStore, stats: DashboardStats
    ) -> None:
        self._collector = collector
        self._hub = hub
        self._store = store
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        scrapes = CounterMetricFamily(
            "zai_dashboard_scrapes",
            "Scrapes of each target, by result.",
            labels=["target", "result"],
        )
        up = GaugeMetricFamily(
            "zai_dashboard_target_up",
            "1 if the target's last scrape succeeded.",
            labels=["target", "variant"],
        )
        for status in self._collector.status():
            scrapes.add_metric([status.url, "ok"], status.scrapes_ok)
            scrapes.add_metric([status.url, "failed"], status.scrapes_failed)
            up.add_metric([status.url, status.variant], 1.0 if status.up else 0.0)
        yield scrapes
        yield up
        yield GaugeMetricFamily(
            "zai_dashboard_sse_clients", "Connected SSE clients.", value=self._hub.clients
        )
        yield CounterMetricFamily(
            "zai_dashboard_sse_dropped_clients",
            "SSE clients dropped because their buffer was full.",
            value=self._hub.dropped,
        )
        yield CounterMetricFamily(
            "zai_dashboard_snapshots_published",
            "Snapshots pushed to SSE clients and the store.",
            value=self._hub.published,
        )
        yield GaugeMetricFamily(
            "zai_dashboard_db_size_bytes",
            "Size of the SQLite database on disk, WAL included.",
            value=self._store.size_bytes(),
        )
        yield CounterMetricFamily(
            "zai_dashboard_store_errors",
            "Snapshots that could not be written to the database.",
            value=self._stats.store_errors,
        )
        restarts = CounterMetricFamily(
            "zai_dashboard_task_restarts",
            "Background tasks restarted after a crash.",
            labels=["task"],
        )
        for task, count in sorted(self._stats.task_restarts.items()):
            restarts.add_metric([task], count)
        yield restarts
        info = GaugeMetricFamily(
            "zai_dashboard_build_info", "Build information; always 1.", labels=["version"]
        )
        info.add_metric([__version__], 1.0)
        yield info


def _bad_parameter(
    name: str, value: str, allowed: tuple[str, ...], *, repeated: bool = False
) -> Response:
    shown = value if len(value) <= ECHO_LIMIT else value[:ECHO_LIMIT] + "\u2026"
    body = {
        "error": f"{name} given more than once" if repeated else f"invalid value for {name}",
        "parameter": name,
        "value": shown,
        "allowed": list(allowed),
    }
    # A quoted value can hold markup: escaped in the JSON too, not only by content type.
    text = _json(body).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    response: Response = Response(text, status=400, content_type="application/json")
    return response


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str | Response:
    """The query parameter `name`, one of `allowed`; else the 400 that says so."""
    values = request.args.getlist(name)
    if len(values) > 1:
        return _bad_parameter(name, values[-1], allowed, repeated=True)
    value = values[0] if values else default
    if value not in allowed:
        return _bad_parameter(name, value, allowed)
    return value


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


class _DashboardApp(QuartTrio):
    async def asgi_app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            send = _last_write_uncancelled(send)
        await super().asgi_app(scope, receive, send)


def _last_write_uncancelled(send: ASGISendCallable) -> ASGISendCallable:
    # The last write of an answer is where hypercorn closes a `Connection: close`
    # connection, and quart-trio cancels the request's tasks as soon as the answer is
    # complete: the close was cancelled half-way and the socket stayed open until the
    # client went away.  Shielded, with a bound, the close happens.
    async def send_last_uncancelled(message: ASGISendEvent) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            with trio.move_on_after(_LAST_WRITE_TIMEOUT, shield=True):
                await send(message)
        else:
            await send(message)

    return send_last_uncancelled


def create_app(
    *,
    settings: DashboardSettings,
    collector: Collector,
    hub: Hub,
    store: AsyncStore,
    stats: DashboardStats | None = None,
    now: Callable[[], float] = time.time,
    static_dir: Path = STATIC_DIR,
) -> QuartTrio:
    app = _DashboardApp("zai_proxy.dashboard", static_folder=None)
    # SSE responses last as long as the client stays; no per-response deadline.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = 30
    stats = stats if stats is not None else DashboardStats()
    registry = CollectorRegistry()
    registry.register(_HealthCollector(collector, hub, store, stats))
    root = static_dir.resolve()

    @app.after_request
    async def no_sniffing(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.route("/api/events")
    async def events() -> Response:
        response: Response
        if request.method == "HEAD":
            # The headers a GET would get, and no stream: a HEAD never subscribes.
            response = Response(
                b"", content_type="text/event-stream; charset=utf-8", headers=_SSE_HEADERS
            )
            return response
        response = Response(
            hub.stream(), content_type="text/event-stream; charset=utf-8", headers=_SSE_HEADERS
        )
        response.timeout = None
        return response

    @app.route("/api/metrics")
    async def metrics_history() -> Response:
        range_name = _choice("range", DEFAULT_RANGE, tuple(RANGES))
        if isinstance(range_name, Response):
            return range_name
        variant = _choice("variant", "all", VARIANT_CHOICES)
        if isinstance(variant, Response):
            return variant
        body = await store.query_json(RANGES[range_name], variant, now())
        return Response(body, content_type="application/json")

    @app.route("/api/status")
    async def status() -> Response:
        current = now()
        # Older than two intervals plus the timeout: the scrape loop has stopped producing.
        max_age = 2 * settings.scrape_interval + settings.scrape_timeout
        variants: dict[str, Any] = {}
        for variant in sorted(set(collector.variants()) | set(hub.latest)):
            snapshot = hub.latest.get(variant)
            if snapshot is None:
                variants[variant] = {"stale": True, "age_s": None, "snapshot": None}
                continue
            age = max(0.0, current - snapshot.ts)
            variants[variant] = {
                "stale": snapshot.stale or age > max_age,
                "age_s": age,
                "snapshot": snapshot.to_dict(),
            }
        body = {
            "now": current,
            "scrape_interval_s": settings.scrape_interval,
            "variants": variants,
            "targets": [s.to_dict() for s in collector.status()],
            "dns_targets": [s.to_dict() for s in collector.dns_status()],
        }
        return Response(_json(body), content_type="application/json")

    @app.route("/api/config")
    async def config() -> Response:
        body = {
            "version": __version__,
            "scrape_interval_s": settings.scrape_interval,
            "scrape_timeout_s": settings.scrape_timeout,
            "targets": [without_userinfo(url) for url in settings.scrape_targets],
            "variants": list(VARIANTS),
            "ranges": list(RANGES),
            "default_range": DEFAULT_RANGE,
            "retention_5s_s": settings.retention_5s,
            "retention_1m_s": settings.retention_1m,
            "thresholds": ALERT_THRESHOLDS,
        }
        return Response(_json(body), content_type="application/json")

    @app.route("/healthz")
    async def healthz() -> Response:
        targets = collector.status()
        body = {
            "status": "ok",
            "version": __version__,
            "targets_up": sum(1 for t in targets if t.up),
            "targets_total": len(targets),
            "sse_clients": hub.clients,
        }
        return Response(_json(body), content_type="application/json")

    @app.route("/metrics")
    async def own_metrics() -> Response:
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(registry), content_type=content_type)

    @app.route("/")
    async def index() -> Response:
        return await _static_file(root, "index.html")

    @app.route("/static/<path:name>")
    async def static_file(name: str) -> Response:
        return await _static_file(root, name)

    return app


async def _static_file(root: Path, name: str) -> Response:
    try:
        candidate = (root / name).resolve()
    except (OSError, ValueError):
        candidate = None
    # resolve() follows "..", and symlinks: anything that lands outside static/ is refused.
    if candidate is None or not candidate.is_relative_to(root) or not candidate.is_file():
        return Response(_json({"error": "not found"}), status=404, content_type="application/json")
    content_type = _CONTENT_TYPES.get(candidate.suffix.lower())
    if content_type is None:
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
    body = await trio.Path(candidate).read_bytes()
    cache = "no-cache" if candidate.suffix == ".html" else "public, max-age=300"
    return Response(body, content_type=content_type, headers={"Cache-Control": cache})
