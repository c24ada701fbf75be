"""Command line: `zai-proxy serve | dashboard | demo` (also `python -m zai_proxy`), and
the operator's tools `check | loadtest | evaluate` (zai_proxy.ops).

Settings come from the environment under the names of the Go proxy; every setting also
has a flag (`MAX_WORKERS` -> `--max-workers`) that overrides it.  A bad value stops
start-up with one line naming the variable, the value and what is allowed, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from functools import partial

import trio

from . import __version__
from .errors import ListenError, SettingsError
from .logs import configure
from .ops import commands as tools
from .settings import DashboardSettings, ProxySettings
from .supervisor import run_until_signalled

__all__ = ["main"]

PROXY_VARIABLES = {
    "ZAI_TARGET_URL": "upstream base URL (default https://api.z.ai/api/anthropic)",
    "LISTEN_ADDR": "address to listen on, HOST:PORT or :PORT (default :8080)",
    "DEPLOYMENT_VARIANT": "production or canary: the `variant` label of every metric",
    "MAX_WORKERS": "requests in flight before new ones get 503 (default 10)",
    "MAX_WEBSOCKETS": "WebSocket sessions open before new upgrades get 503 (default 100)",
    "MAX_RETRIES": "extra attempts after a retryable failure (default 3)",
    "RETRY_BACKOFF_BASE": "first retry delay; doubles each retry (default 1s)",
    "RETRY_AFTER_CAP": "longest upstream Retry-After honoured (default 60s)",
    "TOKEN_COUNTING_ENABLED": "count tokens locally when the upstream reports none (true)",
    "TOKEN_ACCURACY_SAMPLE": "share of requests also counted locally, for accuracy (0.05)",
    "TOKENIZER_MODEL": "model label when a request names none (default glm-4)",
    "RATE_LIMIT_INITIAL": "starting limiter rate, requests/s (default 10)",
    "RATE_LIMIT_MIN": "lowest limiter rate (default 1)",
    "RATE_LIMIT_MAX": "highest limiter rate (default 50)",
    "RATE_LIMIT_CEILING_ALPHA": "EWMA weight of a new ceiling observation (default 0.3)",
    "RATE_LIMIT_HOLD_MARGIN": "hold this fraction below the ceiling (default 0.02)",
    "RATE_LIMIT_PROBE_INTERVAL": "clean windows before probing above the ceiling (default 10)",
    "RATE_LIMIT_WINDOW": "limiter adjustment window (default 30s)",
    "RATE_LIMIT_MAX_WAIT": "longest wait for a limiter token before a 429 (default 30s)",
    "RATE_LIMIT_BACKEND": "memory (default), or redis://HOST:PORT/DB: one limiter shared by "
    "every proxy on that Redis and key (a password belongs in the environment, not a flag)",
    "RATE_LIMIT_NAMESPACE": "the shared limiter's name (default: derived from the key)",
    "RATE_LIMIT_BACKEND_TIMEOUT": "deadline of each Redis call (default 250ms)",
    "MAX_BODY_BYTES": "largest request body accepted (default 33554432)",
    "UPSTREAM_CONNECT_TIMEOUT": "connect timeout to the upstream (default 10s)",
    "UPSTREAM_READ_TIMEOUT": "longest silence from the upstream (default 300s)",
    "UPSTREAM_WRITE_TIMEOUT": "longest stall sending to the upstream (default 60s)",
    "UPSTREAM_POOL_TIMEOUT": "longest wait for a pooled connection (default 10s)",
    "SHUTDOWN_TIMEOUT": "how long SIGTERM waits for in-flight requests (default 30s)",
    "CLIENT_BODY_TIMEOUT": "longest a client may take to send its body; then 408 (30s)",
    "CLIENT_WRITE_TIMEOUT": "longest a write to a client may stall; then closed (60s)",
    "ADMIN_TOKEN": "when set, /admin/* needs Authorization: Bearer <token>",
    "LOG_LEVEL": "debug, info, warning or error (default info)",
    "LOG_FORMAT": "auto (console on a terminal, else JSON lines), json or console",
}


DASHBOARD_VARIABLES = {
    "SCRAPE_TARGETS": "comma-separated proxy /metrics URLs; dns+http://NAME:PORT/metrics "
    "scrapes every address NAME resolves to (a headless Service's pods)",
    "DNS_REFRESH_SCRAPES": "scrape intervals between re-resolving dns+ targets (default 6)",
    "SCRAPE_INTERVAL": "how often to scrape each target (default 5s)",
    "SCRAPE_TIMEOUT": "per-scrape timeout (default 3s)",
    "LISTEN_ADDR": "address to listen on, HOST:PORT or :PORT (default :8080)",
    "DB_PATH": "SQLite history file (default /data/dashboard.db)",
    "RETENTION_5S": "how long 5-second rows are kept (default 24h)",
    "RETENTION_1M": "how long 1-minute rows are kept (default 168h)",
    "LOG_LEVEL": "debug, info, warning or error (default info)",
    "LOG_FORMAT": "auto (console on a terminal, else JSON lines), json or console",
}


def _flag(variable: str) -> str:
    return "--" + variable.lower().replace("_", "-")


def _add_variables(parser: argparse.ArgumentParser, variables: Mapping[str, str]) -> None:
    group = parser.add_argument_group("settings (each overrides the environment variable)")
    for variable, help_text in variables.items():
        group.add_argument(
            _flag(variable), dest=variable, metavar="VALUE", help=f"{variable}: {help_text}"
        )


def _environment(args: argparse.Namespace, variables: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for variable in variables:
        value = getattr(args, variable, None)
        if value is not None:
            env[variable] = value
    return env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zai-proxy",
        description="Credential-keeping reverse proxy for LLM APIs, with an adaptive rate "
        "limiter, token accounting and a live dashboard.",
    )
    parser.add_argument("--version", action="version", version=f"zai-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the proxy (needs ZAI_API_KEY)",
        description="Run the proxy in front of ZAI_TARGET_URL.  The key comes from "
        "ZAI_API_KEY only (never a flag, so it stays out of process listings).",
    )
    _add_variables(serve, PROXY_VARIABLES)

    dashboard = commands.add_parser(
        "dashboard",
        help="run the metrics dashboard (scrapes proxies, keeps history, serves the page)",
        description="Scrape SCRAPE_TARGETS every SCRAPE_INTERVAL, keep the history in "
        "SQLite at DB_PATH, and serve the live page and its API on LISTEN_ADDR.",
    )
    _add_variables(dashboard, DASHBOARD_VARIABLES)

    demo = commands.add_parser(
        "demo",
        help="run two proxies, the dashboard, a simulated upstream and simulated agents",
        description="Start the simulated upstream, a production and a canary proxy in "
        "front of it, the dashboard scraping both and a pool of simulated agents; print "
        "where they are, and run until Ctrl-C (or --duration).  --replicas N runs N "
        "production proxies, on one shared limiter when redis-server is installed.  With "
        "ZAI_API_KEY set (and no --simulate), run the proxies and the dashboard against "
        "ZAI_TARGET_URL instead.",
    )
    demo.add_argument("--dashboard-port", type=int, default=8080, help="dashboard (8080; 0: any)")
    demo.add_argument(
        "--proxy-port",
        type=int,
        default=8081,
        help="production proxy (8081); further replicas on the next free ports above it",
    )
    demo.add_argument("--canary-port", type=int, default=8082, help="canary proxy (8082)")
    demo.add_argument("--upstream-port", type=int, default=0, help="simulator port (0: any)")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    demo.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="production proxies, 1 to 16 (default 1); with more than one and redis-server "
        "on PATH, all proxies share one limiter on a redis-server the demo starts",
    )
    demo.add_argument("--agents", type=int, default=12, help="simulated agents (default 12)")
    demo.add_argument("--no-agents", action="store_true", help="run no simulated agents")
    demo.add_argument("--hidden-limit", type=float, default=6.0, help="simulated limit, req/s")
    demo.add_argument("--fault-rate", type=float, default=0.03, help="share of faulty answers")
    demo.add_argument("--duration", type=float, default=None, help="exit after N seconds")
    demo.add_argument("--db-path", default=None, help="dashboard history (default: temp dir)")
    demo.add_argument(
        "--simulate", action="store_true", help="use the simulator even if ZAI_API_KEY is set"
    )
    tools.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in tools.TOOLS:
        return tools.run(args)
    try:
        if args.command == "serve":
            settings = ProxySettings.from_env(_environment(args, PROXY_VARIABLES))
            configure(settings.log_level, secrets=[settings.api_key, settings.admin_token or ""])
            trio.run(_serve, settings)
        elif args.command == "dashboard":
            dashboard = DashboardSettings.from_env(_environment(args, DASHBOARD_VARIABLES))
            configure(dashboard.log_level)
            trio.run(_dashboard, dashboard)
        elif args.command == "demo":
            from .demo import check_args, run_demo

            check_args(args)
            # With a real key the demo proxies to the real API: its logs redact it too.
            configure("info", secrets=[os.environ.get("ZAI_API_KEY", "").strip()])
            trio.run(partial(run_demo, args))
    except (SettingsError, BaseExceptionGroup) as raised:
        # Bare from parsing, or wrapped by a nursery (e.g. the dashboard's DB check).
        error = _settings_error(raised)
        if error is None:
            raise
        hint = ""
        if args.command == "demo" and isinstance(error, ListenError):
            hint = " (choose others with --dashboard-port, --proxy-port, --canary-port)"
        print(f"zai-proxy: {error}{hint}", file=sys.stderr)
        return 2
    return 0


def _settings_error(raised: BaseException) -> SettingsError | None:
    if isinstance(raised, SettingsError):
        return raised
    if isinstance(raised, BaseExceptionGroup):
        for inner in raised.exceptions:
            found = _settings_error(inner)
            if found is not None:
                return found
    return None


async def _dashboard(settings: DashboardSettings) -> None:
    from .dashboard.server import serve_dashboard

    async def body(stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_dashboard, settings, stop)

    await run_until_signalled(body)


async def _serve(settings: ProxySettings) -> None:
    from .proxy.server import serve_proxy

    async def body(stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_proxy, settings, stop)

    await run_until_signalled(body)
