"""`zai-proxy demo`: everything at once, live, without a key or a network.

```
run_until_signalled
└─ demo nursery
   ├─ simulated upstream (hidden limit that shifts on a schedule, faults, cache tokens)
   ├─ redis-server: the shared limiter (--replicas > 1 and redis-server on PATH only)
   ├─ servers nursery
   │  ├─ proxies `production-1` … `production-N`  (DEPLOYMENT_VARIANT=production;
   │  │                                             one `production` when N is 1)
   │  ├─ proxy `canary`      (DEPLOYMENT_VARIANT=canary)
   │  ├─ dashboard scraping every proxy (a variant's figures summed over its replicas)
   │  └─ agents nursery: simulated agents (~70 % production, spread evenly over its
   │                     replicas; 30 % canary), and one more agent in Realtime
   │                     (WebSocket) sessions
   └─ shutdown watchdog (only after stop)
```
Stop (first SIGINT/SIGTERM, or `--duration` elapsed): the agents are cancelled, the
proxies and the dashboard drain and return, then the simulator and redis-server are
cancelled: no proxy loses its limiter while it drains.

`--replicas N` (1 to MAX_REPLICAS; default 1):
- N is 1: the demo as it always was, every proxy on its own limiter (memory), and no
  redis-server even when one is installed.  The shared limiter is for replicas; for a
  single production proxy it would only tie the canary to it, and the two finding the
  limit each on its own is what the one-replica demo has always shown.
- N > 1 with redis-server on PATH: the demo starts its own (`redis_process`; loopback,
  free port, no persistence, killed on the way out) and sets RATE_LIMIT_BACKEND on
  every proxy, the canary too: it spends the same key, and the upstream's limit is per
  key.  RATE_LIMIT_NAMESPACE is left unset, so the proxies derive the same one.
- N > 1 without it (or if it fails to start): one warning line says so, and each
  proxy runs its own limiter (memory).
- Ports: the first replica on --proxy-port, the others on the next ports above it that
  no other flag names and that are free; all on ports of the OS's choosing when
  --proxy-port is 0.  Every URL is printed, one `production: URL` line per replica.

With ZAI_API_KEY in the environment (and no `--simulate`), the demo runs the proxies
and the dashboard against ZAI_TARGET_URL with the real key: no simulator, no agents.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from .dashboard.server import serve_dashboard
from .errors import SettingsError
from .proxy.server import RunningProxy, serve_proxy
from .redis_process import RedisUnavailable, RunningRedis, find_redis_server, serve_redis
from .settings import DashboardSettings, ProxySettings
from .sim.agents import AgentPool, Target
from .sim.upstream import SimUpstream, UpstreamConfig
from .supervisor import run_until_signalled

__all__ = ["DEMO_KEY", "MAX_REPLICAS", "check_args", "run_demo", "upstream_config"]

log = logging.getLogger("zai_proxy.demo")

# The simulator checks this key like the real API would; it is not a secret.
DEMO_KEY = "sk-zai-demo-not-a-real-key"
# How long each step of the hidden limit's schedule lasts.
SCHEDULE_STEP = 120.0
SHUTDOWN_TIMEOUT = 5.0
MAX_REPLICAS = 16
# Agents in Realtime API (WebSocket) sessions, besides the HTTP ones.
REALTIME_AGENTS = 1


def check_args(args: argparse.Namespace) -> None:
    """Raise a one-line `SettingsError` for a flag the demo cannot run with."""
    replicas = getattr(args, "replicas", 1)
    if not 1 <= replicas <= MAX_REPLICAS:
        raise SettingsError("--replicas", str(replicas), f"an integer from 1 to {MAX_REPLICAS}")


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


@dataclass(frozen=True, slots=True)
class _Limiter:
    """The limiter every proxy runs on: a shared redis-server, or each its own."""

    redis: RunningRedis | None
    why_not: str = ""  # when redis is None with replicas: why there is no shared one

    @property
    def backend(self) -> str | None:
        """RATE_LIMIT_BACKEND for the proxies; None leaves it as it was."""
        return None if self.redis is None else self.redis.url


def _proxy_env(
    args: argparse.Namespace,
    variant: str,
    port: int,
    target: str,
    key: str,
    real: Mapping[str, str] | None,
    backend: str | None = None,
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
    if backend is not None:
        env["RATE_LIMIT_BACKEND"] = backend
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


def _replica_names(count: int) -> list[str]:
    return ["production"] if count == 1 else [f"production-{i}" for i in range(1, count + 1)]


async def _can_bind(host: str, port: int) -> bool:
    try:
        family, kind, proto, _, address = (
            await trio.socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        )[0]
        with trio.socket.socket(family, kind, proto) as sock:
            # As the server will bind: a port in TIME_WAIT is free to it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await sock.bind(address)
    except OSError:
        return False
    return True


async def _replica_ports(host: str, first: int, count: int, taken: set[int]) -> list[int]:
    """`first`, then the next ports above it not in `taken` and free now; all 0 for 0."""
    if first == 0:
        return [0] * count
    ports = [first]
    candidate = first + 1
    while len(ports) < count:
        if candidate > 65535:
            raise SettingsError(
                "--proxy-port", str(first), f"a port with {count - 1} free ports above it"
            )
        if candidate not in taken and await _can_bind(host, candidate):
            ports.append(candidate)
        candidate += 1
    return ports


async def _shared_limiter(
    nursery: trio.Nursery, environ: Mapping[str, str], replicas: int
) -> _Limiter:
    """A redis-server of the demo's own for the proxies to share, if it can have one."""
    if replicas == 1:
        return _Limiter(redis=None)
    program = find_redis_server(environ.get("PATH"))
    if program is None:
        log.warning(
            "redis-server is not installed (not on PATH): each of the %d production "
            "replicas and the canary runs its own limiter (memory), not one shared limiter",
            replicas,
        )
        return _Limiter(redis=None, why_not="redis-server is not installed")
    try:
        redis: RunningRedis = await nursery.start(serve_redis, program)
    except RedisUnavailable as error:
        log.warning(
            "%s: each of the %d production replicas and the canary runs its own limiter "
            "(memory), not one shared limiter",
            error,
            replicas,
        )
        return _Limiter(redis=None, why_not="redis-server did not start")
    log.info(
        "shared limiter: redis-server for all %d proxies",
        replicas + 1,
        extra={"url": redis.url, "pid": redis.pid},
    )
    return _Limiter(redis=redis)


def _banner(
    real: bool,
    production: Sequence[tuple[str, RunningProxy]],
    canary: RunningProxy,
    limiter: _Limiter,
    dashboard_url: str,
    upstream: SimUpstream | None,
    args: argparse.Namespace,
    agents: int,
    db_path: str,
) -> str:
    first = production[0][1]
    lines = ["", "zai-proxy demo", ""]
    if real:
        target = first.app.target
        lines.append(f"  ZAI_API_KEY is set: proxying to {target.origin}{target.base_path}")
        lines.append("  (no simulator, no simulated agents; --simulate to use the simulator)")
    else:
        assert upstream is not None
        lines.append(
            f"  simulated upstream:   {upstream.url} (hidden limit {args.hidden_limit:g} req/s, "
            f"shifting every {SCHEDULE_STEP:g}s; fault rate {args.fault_rate:g})"
        )
        spread = f" over {len(production)} replicas" if len(production) > 1 else ""
        lines.append(
            f"  simulated agents:     {agents} (70 % production{spread}, 30 % canary), "
            f"and {REALTIME_AGENTS} in Realtime WebSocket sessions"
            if agents
            else "  simulated agents:     none (--no-agents)"
        )
    if len(production) == 1:
        lines.append(f"  production proxy:     {first.url}   (metrics {first.origin}/metrics)")
    else:
        for name, proxy in production:
            lines.append(f"  {name + ' proxy:':<22}{proxy.url}   (metrics {proxy.origin}/metrics)")
    lines.append(f"  canary proxy:         {canary.url}   (metrics {canary.origin}/metrics)")
    if limiter.redis is not None:
        lines.append(
            f"  shared limiter:       {limiter.redis.url} (redis-server pid {limiter.redis.pid}; "
            f"all {len(production) + 1} proxies act as one)"
        )
    elif len(production) > 1:
        lines.append(f"  limiter:              each proxy its own ({limiter.why_not})")
    lines += [
        f"  dashboard:            {dashboard_url}   (history in {db_path})",
        "",
        "  Point a client at a proxy (any token: the proxy holds the real key):",
        f"    ANTHROPIC_BASE_URL={first.url} ANTHROPIC_AUTH_TOKEN=anything claude",
        f"    anthropic.Anthropic(base_url='{first.url}', api_key='anything')",
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
    """Run the demo until a signal or --duration.  `env` stands for the environment
    (ZAI_API_KEY, ZAI_TARGET_URL, and PATH, where redis-server is looked for)."""
    check_args(args)
    environ = os.environ if env is None else env
    real_key = environ.get("ZAI_API_KEY", "").strip()
    real = bool(real_key) and not getattr(args, "simulate", False)
    real_env = environ if real else None
    agent_count = 0 if real or getattr(args, "no_agents", False) else int(args.agents)
    # One line per request is too much for a terminal demo (logs.configure already keeps
    # the Redis client's routine notes out).
    quiet = [logging.getLogger(name) for name in ("zai_proxy.access",)]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        await _run(args, environ, real_key, real_env, agent_count)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


async def _run(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    real_key: str,
    real_env: Mapping[str, str] | None,
    agent_count: int,
) -> None:
    real = real_env is not None
    replicas = int(getattr(args, "replicas", 1))
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
                limiter = await _shared_limiter(nursery, environ, replicas)
                taken = {args.canary_port, args.dashboard_port, args.upstream_port} - {0}
                ports = await _replica_ports(args.host, args.proxy_port, replicas, taken)
                servers_stop = trio.Event()
                async with trio.open_nursery() as servers:

                    async def start_proxy(variant: str, port: int) -> RunningProxy:
                        env = _proxy_env(
                            args, variant, port, target, key, real_env, limiter.backend
                        )
                        running: RunningProxy = await servers.start(
                            serve_proxy, ProxySettings.from_env(env), servers_stop
                        )
                        return running

                    production = [
                        (name, await start_proxy("production", port))
                        for name, port in zip(_replica_names(replicas), ports, strict=True)
                    ]
                    canary = await start_proxy("canary", args.canary_port)
                    proxies = [proxy for _, proxy in production] + [canary]
                    dashboard_settings = DashboardSettings.from_env(
                        {
                            "SCRAPE_TARGETS": ",".join(f"{p.origin}/metrics" for p in proxies),
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
                            limiter,
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
                    for _, proxy in production:
                        print(f"production: {proxy.url}", flush=True)
                    if replicas > 1:
                        print(f"limiter: {limiter.backend or 'memory'}", flush=True)
                    print(f"canary: {canary.url}", flush=True)

                    pool: AgentPool | None = None
                    async with trio.open_nursery() as agents:
                        if agent_count:
                            share = 0.7 / replicas
                            pool = AgentPool(
                                [Target(name, proxy.url, share) for name, proxy in production]
                                + [Target("canary", canary.url, 0.3)],
                                agents=agent_count,
                                concurrency=max(4, agent_count * 2),
                                realtime=REALTIME_AGENTS,
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
                        f"{s.overloaded} got 503, {s.failed} failed; "
                        f"{s.realtime_opened} realtime sessions, "
                        f"{s.realtime_responses} realtime responses",
                        flush=True,
                    )
                print("demo stopped", flush=True)
                # The simulator, redis-server (and the watchdog) go last.
                nursery.cancel_scope.cancel()

        await run_until_signalled(body)
