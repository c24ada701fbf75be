"""The limiter bench's scenario, end to end: the real proxy in front of the simulator.

The simulator's hidden limit shifts 20 -> 40 -> 15 -> 20 req/s (120 s each, bucket depth
one second of its rate); 80 agents keep demand above it; the proxy runs with a 10 s
window and RATE_LIMIT_PROBE_INTERVAL=1.  Proxy, simulator and agents share trio's
MockClock, so 8 virtual minutes take well under a minute and the figures repeat.

    python bench/limiter_e2e.py                         # 120 s phases, 10 s window
    python bench/limiter_e2e.py --phase 600 --window 30s  # limiter.py's scenario, about 4 min
"""

from __future__ import annotations

import argparse
import functools
import sys

import httpx
import trio
import trio.testing

from zai_proxy.proxy import serve_proxy
from zai_proxy.settings import ProxySettings
from zai_proxy.sim.upstream import SimUpstream, UpstreamConfig

LIMITS = (20.0, 40.0, 15.0, 20.0)
AGENTS = 80
KEY = "sk-bench"
MESSAGE = {"model": "glm-4.6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


async def run(phase: float, window: str) -> None:
    phases = tuple((phase, limit) for limit in LIMITS)
    upstream = SimUpstream(
        UpstreamConfig(
            api_key=KEY,
            latency=0.5,
            stream_gap=0.0,
            hidden_limit=LIMITS[0],
            hidden_limit_burst=LIMITS[0],
            limit_schedule=phases,
        )
    )
    statuses: dict[int, int] = {}
    answered_per_phase: list[tuple[int, int]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        settings = ProxySettings.from_env(
            {
                "ZAI_API_KEY": KEY,
                "ZAI_TARGET_URL": upstream.url,
                "LISTEN_ADDR": "127.0.0.1:0",
                "RATE_LIMIT_MAX": "100",
                "RATE_LIMIT_WINDOW": window,
                "RATE_LIMIT_PROBE_INTERVAL": "1",
                "MAX_WORKERS": "500",
            }
        )
        stop = trio.Event()
        proxy = await nursery.start(serve_proxy, settings, stop)
        start = trio.current_time()
        end = start + sum(seconds for seconds, _ in phases)

        async def agent(client: httpx.AsyncClient) -> None:
            while trio.current_time() < end:
                response = await client.post(proxy.url + "/v1/messages", json=MESSAGE)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 429:
                    await trio.sleep(float(response.headers.get("retry-after", "1")))

        async def measure_phases() -> None:
            for seconds, _ in phases:
                ok_before = upstream.status_counts.get(200, 0)
                throttled_before = upstream.rate_limited
                await trio.sleep(seconds)
                answered_per_phase.append(
                    (
                        upstream.status_counts.get(200, 0) - ok_before,
                        upstream.rate_limited - throttled_before,
                    )
                )

        limits = httpx.Limits(max_connections=AGENTS)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            async with trio.open_nursery() as agents:
                agents.start_soon(measure_phases)
                for _ in range(AGENTS):
                    agents.start_soon(agent, client)
        nursery.cancel_scope.cancel()

    print(f"end-to-end: real proxy + simulated upstream on virtual time, window {window}")
    print(f"{'phase':>14} {'limit':>6} {'goodput':>8} {'used':>7} {'429s':>7}")
    total_ok = total_429 = 0
    capacity = 0.0
    for (seconds, limit), (ok, throttled) in zip(phases, answered_per_phase, strict=True):
        total_ok += ok
        total_429 += throttled
        capacity += seconds * limit
        used = ok / (seconds * limit)
        share = throttled / max(1, ok + throttled)
        print(f"{seconds:>12.0f} s {limit:>6.0f} {ok / seconds:>8.2f} {used:>7.1%} {share:>7.2%}")
    print(
        f"{'all':>14} {'':>6} {'':>8} {total_ok / capacity:>7.1%}"
        f" {total_429 / max(1, total_ok + total_429):>7.2%}"
    )
    errors = sum(n for status, n in statuses.items() if status != 200)
    print(f"client-visible errors: {errors} of {sum(statuses.values())} requests {statuses}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", type=float, default=120.0, help="seconds per limit step")
    parser.add_argument("--window", default="10s", help="RATE_LIMIT_WINDOW")
    args = parser.parse_args()
    trio.run(run, args.phase, args.window, clock=trio.testing.MockClock(autojump_threshold=0))


if __name__ == "__main__":
    sys.exit(functools.partial(main)())
