"""`zai-proxy demo`: everything at once, live, without a key or a network.

```
run_until_signalled
└─ demo nursery
   ├─ simulated upstream (hidden limit that shifts on a schedule, faults, cache tokens)
   ├─ servers nursery
   │  ├─ proxy `production`  (DEPLOYMENT_VARIANT=production)
   │  ├─ proxy `canary`      (DEPLOYMENT_VARIANT=canary)
   │  ├─ dashboard scraping both
   │  └─ agents nursery: simulated agents (~70 % production, 30 % canary)
   └─ shutdown watchdog (only after stop)
```
Stop (first SIGINT/SIGTERM, or `--duration` elapsed): the agents are cancelled, the
proxies and the dashboard drain and return, then the simulator is cancelled.

With ZAI_API_KEY in the environment (and no `--simulate`), the demo runs the two proxies
and the dashboard against ZAI_TARGET_URL with the real key: no simulator, no agents.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import trio

from .dashboard.server import serve_dashboard
from .proxy.server import RunningProxy, serve_proxy
from .settings import DashboardSettings, ProxySettings
from .sim.agents import AgentPool, Target
from .sim.upstream import SimUpstream, UpstreamConfig
from .supervisor import run_until_signalled

__all__ = ["DEMO_KEY", "run_demo", "upstream_config"]

log = logging.getLogger("zai_proxy.demo")

# The simulator checks this key like the real API would; it is not a secret.
DEMO_KEY = "sk-zai-demo-not-a-real-key"
# How long each step of the hidden limit's schedule lasts.
SCHEDULE_STEP = 120.0
SHUTDOWN_TIMEOUT = 5.0


def upstream_config(args: argparse.Namespace) -> UpstreamConfig:
    limit = float(args.hidden_limit)
    return UpstreamConfig(
        host=args.host,
        port=args.upstream_port,
        api_key=DEMO_KEY,
        latency=0.2,
        stream_gap=0.08,
        events_per_stream=8,
        answer_words=60,
        hidden_limit=limit,
        # About a second of burst, like real token-bucket limits.
        hidden_limit_burst=max(1.0, limit),
        # The limit moves every couple of minutes: the limiter has to find it again.
        limit_schedule=(
            (SCHEDULE_STEP, limit),
            (SCHEDULE_STEP, max(0.5, limit * 0.5)),
            (SCHEDULE_STEP, limit * 1.5),
        ),
        fault_rate=args.fault_rate,
        cache_ratio=0.5,
    )


def _proxy_env(
    args: argparse.Namespace,
    variant: str,
    port: int,
    target: str,
    key: str,
    real: Mapping[str, str] | None,
) -> dict[str, str]:
    """The proxy's settings: with `real` (the environment), its settings plus ours."""
    env: dict[str, str] = dict(real) if real is not None else {}
    env.update(
        {
            "ZAI_API_KEY": key,
            "ZAI_TARGET_URL": target,
            "LISTEN_ADDR": f"{args.host}:{port}",
            "DEPLOYMENT_VARIANT": variant,
        }
    )
    if real is None:
        # Tuned so the limiter visibly works within a minute: short windows, fast probes
        # and a starting rate above the hidden limit, so 429s come early.
        limit = float(args.hidden_limit)
        env.update(
            {
                "RATE_LIMIT_WINDOW": "10s",
                "RATE_LIMIT_PROBE_INTERVAL": "1",
                "RATE_LIMIT_MIN": "0.5",
                "RATE_LIMIT_MAX": f"{max(50.0, limit * 4):g}",
                "RATE_LIMIT_INITIAL": f"{max(1.0, limit * 2):g}",
                "RATE_LIMIT_MAX_WAIT": "10s",
                "RETRY_BACKOFF_BASE": "250ms",
                "RETRY_AFTER_CAP": "5s",
                "MAX_WORKERS": "16",
                "SHUTDOWN_TIMEOUT": f"{SHUTDOWN_TIMEOUT:g}s",
            }
        )
    return env


def _banner(
    real: bool,
    production: RunningProxy,
    canary: RunningProxy,
    dashboard_url: str,
    upstream: SimUpstream | None,
    args: argparse.Namespace,
    agents: int,
    db_path: str,
) -> str:
    lines = ["", "zai-proxy demo", ""]
    if real:
        target = production.app.target
        lines.append(f"  ZAI_API_KEY is set: proxying to {target.origin}{target.base_path}")
        lines.append("  (no simulator, no simulated agents; --simulate to use the simulator)")
    else:
        assert upstream is not None
        lines.append(
            f"  simulated upstream:   {upstream.url} (hidden limit {args.hidden_limit:g} req/s, "
            f"shifting every {SCHEDULE_STEP:g}s; fault rate {args.fault_rate:g})"
        )
        lines.append(
            f"  simulated agents:     {agents} (70 % production, 30 % canary)"
            if agents
            else "  simulated agents:     none (--no-agents)"
        )
    lines += [
        f"  production proxy:     {production.url}   (metrics {production.origin}/metrics)",
        f"  canary proxy:         {canary.url}   (metrics {canary.origin}/metrics)",
        f"  dashboard:            {dashboard_url}   (history in {db_path})",
        "",
        "  Point a client at a proxy (any token: the proxy holds the real key):",
        f"    ANTHROPIC_BASE_URL={production.url} ANTHROPIC_AUTH_TOKEN=anything claude",
        f"    anthropic.Anthropic(base_url='{production.url}', api_key='anything')",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def _cancel_after(scope: trio.CancelScope, seconds: float) -> None:
    await trio.sleep(seconds)
    log.warning("demo parts did not stop in time; cancelling them")
    scope.cancel()


async def run_demo(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> None:
    environ = os.environ if env is None else env
    real_key = environ.get("ZAI_API_KEY", "").strip()
    real = bool(real_key) and not getattr(args, "simulate", False)
    real_env = environ if real else None
    agent_count = 0 if real or getattr(args, "no_agents", False) else int(args.agents)
    # One line per request is too much for a terminal demo.
    access_log = logging.getLogger("zai_proxy.access")
    access_level = access_log.level
    access_log.setLevel(logging.WARNING)
    try:
        await _run(args, environ, real_key, real_env, agent_count)
    finally:
        access_log.setLevel(access_level)


async def _run(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    real_key: str,
    real_env: Mapping[str, str] | None,
    agent_count: int,
) -> None:
    real = real_env is not None
    with tempfile.TemporaryDirectory(prefix="zai-proxy-demo-") as tmp:
        db_path = args.db_path or str(Path(tmp) / "dashboard.db")

        async def body(stop: trio.Event) -> None:
            async with trio.open_nursery() as nursery:
                upstream: SimUpstream | None = None
                if real:
                    target = environ.get("ZAI_TARGET_URL", "").strip() or (
                        "https://api.z.ai/api/anthropic"
                    )
                    key = real_key
                else:
                    upstream = SimUpstream(upstream_config(args))
                    await nursery.start(upstream.serve)
                    target, key = upstream.url, DEMO_KEY
                servers_stop = trio.Event()
                async with trio.open_nursery() as servers:
                    production: RunningProxy = await servers.start(
                        serve_proxy,
                        ProxySettings.from_env(
                            _proxy_env(args, "production", args.proxy_port, target, key, real_env)
                        ),
                        servers_stop,
                    )
                    canary: RunningProxy = await servers.start(
                        serve_proxy,
                        ProxySettings.from_env(
                            _proxy_env(args, "canary", args.canary_port, target, key, real_env)
                        ),
                        servers_stop,
                    )
                    dashboard_settings = DashboardSettings.from_env(
                        {
                            "SCRAPE_TARGETS": f"{production.origin}/metrics,"
                            f"{canary.origin}/metrics",
                            "SCRAPE_INTERVAL": "2s",
                            "SCRAPE_TIMEOUT": "1s",
                            "LISTEN_ADDR": f"{args.host}:{args.dashboard_port}",
                            "DB_PATH": db_path,
                        }
                    )
                    dashboard = await servers.start(
                        serve_dashboard, dashboard_settings, servers_stop
                    )
                    print(
                        _banner(
                            real,
                            production,
                            canary,
                            dashboard.url,
                            upstream,
                            args,
                            agent_count,
                            db_path,
                        ),
                        flush=True,
                    )
                    # Machine-readable lines, for scripts and tests.
                    print(f"dashboard: {dashboard.url}", flush=True)
                    print(f"production: {production.url}", flush=True)
                    print(f"canary: {canary.url}", flush=True)

                    pool: AgentPool | None = None
                    async with trio.open_nursery() as agents:
                        if agent_count:
                            pool = AgentPool(
                                [
                                    Target("production", production.url, 0.7),
                                    Target("canary", canary.url, 0.3),
                                ],
                                agents=agent_count,
                                concurrency=max(4, agent_count * 2),
                            )
                            await agents.start(pool.run)
                        duration = math.inf if args.duration is None else float(args.duration)
                        with trio.move_on_after(duration):
                            await stop.wait()
                        agents.cancel_scope.cancel()
                    log.info("demo stopping: draining proxies and the dashboard")
                    servers_stop.set()
                    nursery.start_soon(_cancel_after, servers.cancel_scope, SHUTDOWN_TIMEOUT + 5.0)
                if pool is not None:
                    s = pool.stats
                    print(
                        f"agents sent {s.sent} requests: {s.ok} ok, {s.rate_limited} got 429, "
                        f"{s.overloaded} got 503, {s.failed} failed",
                        flush=True,
                    )
                print("demo stopped", flush=True)
                # The simulator (and the watchdog) go last.
                nursery.cancel_scope.cancel()

        await run_until_signalled(body)
