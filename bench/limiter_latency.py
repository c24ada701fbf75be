"""What the limiter adds to each request: `gate.admit()` with each backend, in process.

A gate is built from ProxySettings the way the proxy builds it (app.make_gate), with
RATE_LIMIT_INITIAL = RATE_LIMIT_MAX = 100000 req/s so that no turn ever waits: what is
timed is the bookkeeping alone. With RATE_LIMIT_BACKEND=redis:// that is one script
call (the atomic grant) to a redis-server of the bench's own on loopback, started for
the run and killed after it; the gate's heartbeat runs alongside, as in the proxy. A
bare PING on its own connection is timed for reference: the round trip no limiter can
beat. Each figure: `--admits` sequential calls after 200 untimed ones (connections,
script loading).

    python bench/limiter_latency.py                 # 2000 admits per backend, ~5 s

`bench/limiter_e2e.py --replicas ...` prints the same table after its own.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import coredis
import trio

from zai_proxy.proxy.app import make_gate
from zai_proxy.proxy.metrics import LiveState, ProxyMetrics
from zai_proxy.proxy.rate_gate import RateGate
from zai_proxy.redis_process import find_redis_server, serve_redis
from zai_proxy.settings import ProxySettings

__all__ = ["Latency", "measure_latency", "print_latency"]

ADMITS = 2000
_UNTIMED = 200
_FAST = "100000"
# Every wait has a deadline; 2000 round trips on loopback take well under a second.
_DEADLINE = 120.0


@dataclass(frozen=True)
class Latency:
    name: str
    seconds: list[float]

    def quantile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _time_calls(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    for _ in range(_UNTIMED):
        await call()
    seconds = []
    for _ in range(count):
        began = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - began)
    return seconds


async def _admits(backend: str, count: int) -> list[float]:
    settings = ProxySettings.from_env(
        {
            "ZAI_API_KEY": "sk-bench",
            "ZAI_TARGET_URL": "http://127.0.0.1:9/api/anthropic",
            "RATE_LIMIT_INITIAL": _FAST,
            "RATE_LIMIT_MAX": _FAST,
            "RATE_LIMIT_BACKEND": backend,
        }
    )
    gate: RateGate | None = None

    def live() -> LiveState:
        assert gate is not None
        return gate.live(0, settings.max_workers)

    metrics = ProxyMetrics(variant=settings.variant, live=live)
    gate = make_gate(settings, metrics)
    max_wait = settings.rate_limit_max_wait
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        if gate.describe().get("rate_limit_backend_up") is not True:
            raise RuntimeError(f"the {backend} gate did not come up")
        seconds = await _time_calls(lambda: gate.admit(max_wait), count)
        if gate.describe().get("rate_limit_backend_up") is not True:
            raise RuntimeError(f"the {backend} gate fell back to its local bucket meanwhile")
        nursery.cancel_scope.cancel()
    return seconds


async def _pings(url: str, count: int) -> list[float]:
    client: coredis.Redis[str] = coredis.Redis.from_url(
        url, decode_responses=True, stream_timeout=1.0, connect_timeout=1.0
    )
    async with client:
        return await _time_calls(client.ping, count)


async def measure_latency(admits: int = ADMITS) -> list[Latency]:
    """admit() with memory and with redis://, and a bare PING; a redis-server of its own."""
    program = find_redis_server()
    if program is None:
        raise RuntimeError("redis-server is not on PATH")
    results = []
    with trio.fail_after(_DEADLINE):
        results.append(Latency("memory: admit()", await _admits("memory", admits)))
        async with trio.open_nursery() as nursery:
            redis = await nursery.start(serve_redis, program)
            results.append(Latency("redis: admit()", await _admits(redis.url, admits)))
            results.append(Latency("redis: PING alone", await _pings(redis.url, admits)))
            nursery.cancel_scope.cancel()
    return results


def print_latency(results: list[Latency]) -> None:
    count = len(results[0].seconds) if results else 0
    print(f"limiter latency per request: {count} sequential calls each, never waiting for a turn")
    print(f"{'':<20} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8}")
    for result in results:
        print(
            f"{result.name:<20} {result.quantile(0.5) * 1e3:>8.3f}"
            f" {result.quantile(0.99) * 1e3:>8.3f}"
            f" {statistics.fmean(result.seconds) * 1e3:>8.3f}"
            f" {max(result.seconds) * 1e3:>8.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--admits", type=int, default=ADMITS, help="timed calls per figure")
    args = parser.parse_args()
    print_latency(trio.run(measure_latency, args.admits))


if __name__ == "__main__":
    main()
