"""`zai-proxy demo`: the proxy in front of the built-in simulated upstream, live.

The simulator plays a Z.AI-like API with a hidden rate limit and occasional faults, so
everything the proxy does (retries, the limiter learning the limit, token accounting)
can be watched on its /metrics without a key or a network.
"""

from __future__ import annotations

import argparse
import logging

import trio

from .proxy.server import serve_proxy
from .settings import ProxySettings
from .sim.upstream import SimUpstream, UpstreamConfig
from .supervisor import run_until_signalled

__all__ = ["run_demo"]

log = logging.getLogger("zai_proxy.demo")

# The simulator checks this key like the real API would; it is not a secret.
DEMO_KEY = "sk-zai-demo-not-a-real-key"


async def run_demo(args: argparse.Namespace) -> None:
    upstream = SimUpstream(
        UpstreamConfig(
            host=args.host,
            port=args.upstream_port,
            api_key=DEMO_KEY,
            latency=0.2,
            stream_gap=0.05,
            hidden_limit=args.hidden_limit,
            # About a second of burst, like real token-bucket limits.
            hidden_limit_burst=max(1.0, args.hidden_limit),
            fault_rate=args.fault_rate,
            cache_ratio=0.5,
        )
    )

    async def body(stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            settings = ProxySettings.from_env(
                {
                    "ZAI_API_KEY": DEMO_KEY,
                    "ZAI_TARGET_URL": upstream.url,
                    "LISTEN_ADDR": f"{args.host}:{args.proxy_port}",
                    "RATE_LIMIT_WINDOW": "10s",
                    "RATE_LIMIT_PROBE_INTERVAL": "1",
                    "SHUTDOWN_TIMEOUT": "5s",
                }
            )
            proxy = await nursery.start(serve_proxy, settings, stop)
            print(
                f"\nzai-proxy demo\n"
                f"  proxy base URL:      {proxy.url}\n"
                f"  proxy metrics:       {proxy.origin}/metrics\n"
                f"  simulated upstream:  {upstream.url}"
                f" (hidden limit {args.hidden_limit:g} req/s)\n"
                f"\n  ANTHROPIC_BASE_URL={proxy.url} ANTHROPIC_AUTH_TOKEN=any claude\n"
                f"  anthropic.Anthropic(base_url='{proxy.url}', api_key='any')\n"
                f"\nCtrl-C stops everything.\n",
                flush=True,
            )
            if args.duration is not None:
                await trio.sleep(args.duration)
                stop.set()
            await stop.wait()
            # serve_proxy drains and returns; then the simulator can go.
            with trio.move_on_after(settings.shutdown_timeout + 1):
                while proxy.app.active:  # noqa: ASYNC110 - a plain counter
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    await run_until_signalled(body)
