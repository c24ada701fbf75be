"""The limiter bench's scenario, end to end: the real proxy in front of the simulator.

Two modes.

**Virtual time** (the default, what `make bench` runs). The simulator's hidden limit
shifts 20 -> 40 -> 15 -> 20 req/s (120 s each, bucket depth one second of its rate);
80 agents keep demand above it; one proxy, in process, runs with a 10 s window and
RATE_LIMIT_PROBE_INTERVAL=1. Proxy, simulator and agents share trio's MockClock, so 8
virtual minutes take well under a minute and the figures repeat.

    python bench/limiter_e2e.py                         # 120 s phases, 10 s window
    python bench/limiter_e2e.py --phase 600 --window 30s  # limiter.py's scenario, about 4 min

**Replicas, in real time** (`--replicas`). Redis keeps its own clock, so this mode runs
on the wall clock. For each backend and replica count: a fresh simulator in the bench
process, whose hidden token-bucket limit steps through `--limits` (default 20 -> 10 ->
20 req/s: halved, then doubled), each step `--phase` seconds, bucket depth one second
of the rate in force, answers after 0.5 s; N `zai-proxy serve` subprocesses in front of
it (RATE_LIMIT_WINDOW=`--window`, default 2s, PROBE_INTERVAL=1, RATE_LIMIT_MAX=100,
MAX_WORKERS=500, LOG_LEVEL=`--log-level`, default warning, RATE_LIMIT_BACKEND=memory
or the URL of a fresh redis-server started for that run alone, no persistence);
`--clients` (48) client tasks spread round-robin over the replicas, each looping POST
/v1/messages and sleeping Retry-After on a 429. With the default 30 s phases and 10 s
warm-up a run takes about 100 s, the six of `--replicas 1,2,3 --backend memory,redis`
about 10 minutes, most of it waiting (the bench uses about a quarter of one core).

    python bench/limiter_e2e.py --replicas 1,2,3 --backend memory,redis   # ~10 min
    python bench/limiter_e2e.py --replicas 1,2 --phase 15 --warmup 6      # a quick check

Each run starts with a warm-up of `--warmup` seconds (default 10) at the first limit,
while the limiter searches up from RATE_LIMIT_INITIAL (10 req/s); the figures below
leave it out, except "start" tracking, which is about exactly that search. Figures per
(backend, replicas), over the measured phases only:

* used: the upstream's 200s / sum(limit x phase seconds), the share of what the
  hidden limit would have served (a 200 counts when its status line leaves the
  simulator, 0.5 s after the turn; the shifts' carried-over tokens can push a phase
  a little past 100 %);
* 429s: the upstream's 429s / all its answers;
* client errors: answers other than 200 that reached a client (a 429 the proxy's
  retries could not absorb, or its own 429 when the wait would pass MAX_WAIT), and
  transport errors, of all the requests answered;
* fair: the least served replica's client 200s as a share of an even split (100 %:
  every replica's clients were served alike; memory replicas that each learn from the
  others' 429s drift apart, one taking most of the limit);
* windows to track, per shift (and "start", from the warm-up's beginning): the rate
  the proxies enforce together, R(t), is read every 0.5 s from each proxy's /metrics
  `zai_proxy_rate_limit_requests_per_second` (memory: the sum over the replicas, each
  having its own bucket; redis: the judge replica's reading, which is the published
  shared rate, or the replicas' mean when none is judge). The shift is tracked at the
  first poll t from which R stays within [0.9, 1.1] x the new limit (every poll from t
  to t + one window); the figure is (t - shift) / RATE_LIMIT_WINDOW, "-" if that never
  happens within the phase. Requiring a whole window in the band keeps a rate that
  only passes through it (a collapse, an overshooting search) from counting; the
  band is wide enough for a probe (ceiling x 1.08) to stay inside it.

Goals, printed next to the Redis rows: >= 97 % used, <= 1 % 429s, every shift
tracked within 3 windows. A table of the limiter's own latency per request follows
(bench/limiter_latency.py: `gate.admit()` with memory and Redis, and a bare PING).

Every subprocess and redis-server is stopped when the run ends, on error or Ctrl-C
(SIGTERM first, SIGKILL after STOP_TIMEOUT); every wait has a deadline. `--trace FILE`
writes the polled rates (one line per poll) as tab-separated values; `--logs DIR` keeps
the proxies' logs, and `--log-level info` puts every limiter decision in them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx
import trio
import trio.testing

from limiter_latency import measure_latency, print_latency
from zai_proxy.proxy import serve_proxy
from zai_proxy.redis_process import RunningRedis, find_redis_server, serve_redis
from zai_proxy.settings import ProxySettings
from zai_proxy.sim.upstream import SimUpstream, UpstreamConfig

LIMITS = (20.0, 40.0, 15.0, 20.0)
AGENTS = 80
KEY = "sk-bench"
MESSAGE = {"model": "glm-4.6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


# -- virtual time: one proxy in process, on trio's MockClock ---------------------------------


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


# -- real time: N proxy processes on one key --------------------------------------------------

REAL_LIMITS = (20.0, 10.0, 20.0)
CLIENTS = 48
PHASE = 30.0
WARMUP = 10.0
UPSTREAM_LATENCY = 0.5
POLL = 0.5
BAND = (0.9, 1.1)
GOAL_USED = 0.97
GOAL_THROTTLED = 0.01
GOAL_WINDOWS = 3.0
# Deadlines.
READY_TIMEOUT = 30.0
SCRAPE_TIMEOUT = 1.0
REQUEST_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0
RETRY_AFTER_CAP = 30.0

_LABELLED = re.compile(r'direction="(\w+)"')
# Every proxy process started, for main()'s last resort if trio itself fails.
_CHILDREN: list[trio.Process] = []


@dataclass(frozen=True)
class Plan:
    limits: tuple[float, ...]
    phase: float
    warmup: float
    window: str
    window_seconds: float
    clients: int
    log_level: str = "warning"

    @property
    def seconds(self) -> float:
        return self.warmup + self.phase * len(self.limits)

    def shifts(self) -> list[tuple[str, float, float, float]]:
        """(name, from, to, limit), in seconds since the run began: the start (the
        warm-up and the first phase) and every change of the limit."""
        out = [("start", 0.0, self.warmup + self.phase, self.limits[0])]
        for i in range(1, len(self.limits)):
            begins = self.warmup + i * self.phase
            name = f"{self.limits[i - 1]:g}->{self.limits[i]:g}"
            out.append((name, begins, begins + self.phase, self.limits[i]))
        return out

    def describe(self) -> str:
        steps = " -> ".join(f"{limit:g}" for limit in self.limits)
        return (
            f"hidden limit {steps} req/s, {self.phase:g} s each after a {self.warmup:g} s"
            f" warm-up at {self.limits[0]:g} (not counted); upstream bucket 1 s deep,"
            f" answers after {UPSTREAM_LATENCY:g} s; {self.clients} clients;"
            f" RATE_LIMIT_WINDOW={self.window}, PROBE_INTERVAL=1"
        )


@dataclass(frozen=True)
class Sample:
    """One poll of every replica's /metrics."""

    t: float
    rate: float | None
    rates: tuple[float | None, ...]
    judges: int
    down: int


@dataclass
class Result:
    backend: str
    replicas: int
    phases: list[tuple[float, int, int]] = field(default_factory=list)
    """(limit, upstream 200s, upstream 429s) per measured phase."""
    statuses: Counter[str] = field(default_factory=Counter)
    served: Counter[int] = field(default_factory=Counter)
    """Client 200s by the replica that answered them."""
    samples: list[Sample] = field(default_factory=list)
    final: list[dict[str, float]] = field(default_factory=list)
    """Each replica's last scrape (counters included)."""
    tracking: list[float | None] = field(default_factory=list)
    logs: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.backend} x{self.replicas}"

    def used(self, phase: float) -> float:
        capacity = sum(limit * phase for limit, _, _ in self.phases)
        return sum(ok for _, ok, _ in self.phases) / capacity

    @property
    def throttled(self) -> float:
        ok = sum(ok for _, ok, _ in self.phases)
        throttled = sum(t for _, _, t in self.phases)
        return throttled / max(1, ok + throttled)

    @property
    def fair(self) -> float:
        """The least served replica's 200s, as a share of an even split."""
        total = sum(self.served.values())
        least = min(self.served.get(index, 0) for index in range(self.replicas))
        return least * self.replicas / total if total else 0.0

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "200")

    def missed_goals(self, phase: float) -> list[str]:
        missed = []
        if self.used(phase) < GOAL_USED:
            missed.append("used")
        if self.throttled > GOAL_THROTTLED:
            missed.append("429s")
        if any(w is None or w > GOAL_WINDOWS for w in self.tracking):
            missed.append("tracking")
        return missed


@dataclass
class _Proxy:
    process: trio.Process
    url: str
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _proxy_env(plan: Plan, target: str, backend: str) -> dict[str, str]:
    # Only what a Python needs from this environment: a RATE_LIMIT_* set in the shell
    # must not change the scenario.
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH")
    env = {name: value for name in keep if (value := os.environ.get(name))}
    env.update(
        ZAI_API_KEY=KEY,
        ZAI_TARGET_URL=target,
        RATE_LIMIT_WINDOW=plan.window,
        RATE_LIMIT_PROBE_INTERVAL="1",
        RATE_LIMIT_MAX="100",
        MAX_WORKERS="500",
        RATE_LIMIT_BACKEND=backend,
        LOG_LEVEL=plan.log_level,
        SHUTDOWN_TIMEOUT="5s",
    )
    return env


async def _start_proxies(
    count: int, env: dict[str, str], directory: Path, proxies: list[_Proxy]
) -> None:
    """Start `count` proxies into `proxies` (the caller stops whatever got there) and
    wait until each answers /health."""
    for index in range(count):
        port = _free_port()
        log = directory / f"proxy-{index}.log"
        fd = _open_log(log)
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "zai_proxy", "serve"],
                env={**env, "LISTEN_ADDR": f"127.0.0.1:{port}"},
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                # Ctrl-C reaches the bench alone; it stops the proxies in order.
                start_new_session=True,
            )
        finally:
            os.close(fd)
        _CHILDREN.append(process)
        proxies.append(_Proxy(process, f"http://127.0.0.1:{port}", log))
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT, trust_env=False) as client:
        with trio.fail_after(READY_TIMEOUT):
            for proxy in proxies:
                while True:
                    if proxy.process.returncode is not None:
                        raise RuntimeError(
                            f"a proxy exited at start-up ({proxy.process.returncode}):\n"
                            + _tail(proxy.log)
                        )
                    try:
                        if (await client.get(proxy.url + "/health")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await trio.sleep(0.05)


async def _stop(processes: Sequence[trio.Process]) -> None:
    """SIGTERM (a clean leave from the shared limiter), then SIGKILL; shielded."""
    with trio.CancelScope(shield=True):
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()
        with trio.move_on_after(KILL_TIMEOUT):
            for process in processes:
                await process.wait()


async def _redis_or_fail(
    program: str, *, task_status: trio.TaskStatus[RunningRedis] = trio.TASK_STATUS_IGNORED
) -> None:
    """serve_redis, but a redis-server that dies mid-run fails the run: its figures
    would be the fallback's, not the shared limiter's."""
    await serve_redis(program, task_status=task_status)
    raise RuntimeError("redis-server exited mid-run")


async def _watch_exit(proxy: _Proxy) -> None:
    code = await proxy.process.wait()
    raise RuntimeError(f"a proxy exited mid-run ({code}):\n{_tail(proxy.log)}")


def _parse_metrics(text: str) -> dict[str, float]:
    """The figures the bench reads, summed over label sets (adjustments by direction)."""
    wanted = (
        "zai_proxy_rate_limit_requests_per_second",
        "zai_proxy_rate_limit_judge",
        "zai_proxy_rate_limit_backend_up",
        "zai_proxy_rate_limit_backend_errors_total",
        "zai_proxy_rate_limit_replicas",
        "zai_proxy_task_restarts_total",
        "zai_proxy_rate_limit_adjustments_total",
    )
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        name = series.partition("{")[0]
        if name not in wanted:
            continue
        if name == "zai_proxy_rate_limit_adjustments_total":
            found = _LABELLED.search(series)
            name += ":" + (found.group(1) if found else "?")
        out[name] = out.get(name, 0.0) + float(value)
    return out


async def _scrape(
    client: httpx.AsyncClient, url: str, readings: list[dict[str, float] | None], index: int
) -> None:
    try:
        response = await client.get(url + "/metrics")
    except httpx.HTTPError:
        return
    if response.status_code == 200:
        readings[index] = _parse_metrics(response.text)


def _combine(t: float, backend: str, readings: list[dict[str, float] | None]) -> Sample:
    key = "zai_proxy_rate_limit_requests_per_second"
    rates = tuple(None if r is None else r.get(key) for r in readings)
    judges = [r for r in readings if r is not None and r.get("zai_proxy_rate_limit_judge") == 1]
    down = sum(
        1 for r in readings if r is not None and r.get("zai_proxy_rate_limit_backend_up") == 0
    )
    known = [rate for rate in rates if rate is not None]
    rate: float | None
    if backend == "memory":
        rate = sum(known) if len(known) == len(rates) else None
    elif len(judges) == 1:
        rate = judges[0].get(key)
    else:
        rate = sum(known) / len(known) if known else None
    return Sample(t, rate, rates, len(judges), down)


async def _poll_rates(proxies: list[_Proxy], backend: str, began: float, result: Result) -> None:
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT, trust_env=False) as client:
        next_poll = began
        while True:
            readings: list[dict[str, float] | None] = [None] * len(proxies)
            at = trio.current_time() - began
            async with trio.open_nursery() as nursery:
                for index, proxy in enumerate(proxies):
                    nursery.start_soon(_scrape, client, proxy.url, readings, index)
            result.samples.append(_combine(at, backend, readings))
            if all(r is not None for r in readings):
                result.final = [r for r in readings if r is not None]
            next_poll = max(next_poll + POLL, trio.current_time())
            await trio.sleep_until(next_poll)


async def _client(
    client: httpx.AsyncClient,
    url: str,
    replica: int,
    counted: tuple[float, float],
    result: Result,
) -> None:
    """One client: POST, and again; after a 429, sleep its Retry-After."""
    begins, ends = counted
    while True:
        try:
            response = await client.post(url, json=MESSAGE)
        except httpx.HTTPError as error:
            status, pause = type(error).__name__, 1.0
        else:
            status, pause = str(response.status_code), 0.0
            if response.status_code == 429:
                try:
                    pause = float(response.headers.get("retry-after", "1"))
                except ValueError:
                    pause = 1.0
            elif response.status_code != 200:
                pause = 1.0
        if begins <= trio.current_time() < ends:
            result.statuses[status] += 1
            if status == "200":
                result.served[replica] += 1
        await trio.sleep(min(max(pause, 0.0), RETRY_AFTER_CAP))


def _tracking(
    samples: list[Sample], begins: float, ends: float, limit: float, window: float
) -> float | None:
    """Windows from `begins` until R stays within BAND x limit for a whole window."""
    low, high = BAND[0] * limit, BAND[1] * limit
    polls = [
        (s.t, s.rate is not None and low <= s.rate <= high) for s in samples if begins <= s.t < ends
    ]
    for index, (t, _) in enumerate(polls):
        if t + window > ends:
            break
        if all(inside for at, inside in polls[index:] if at <= t + window):
            return (t - begins) / window
    return None


async def _drive(
    plan: Plan, upstream: SimUpstream, proxies: list[_Proxy], backend: str, result: Result
) -> None:
    """The limit's schedule, the clients and the polls, for one run."""
    began = trio.current_time()
    measured_from = began + plan.warmup
    ends = began + plan.seconds

    def answered() -> tuple[int, int]:
        return upstream.status_counts.get(200, 0), upstream.status_counts.get(429, 0)

    upstream.set_hidden_limit(plan.limits[0], burst=plan.limits[0])
    async with trio.open_nursery() as nursery:
        for proxy in proxies:
            nursery.start_soon(_watch_exit, proxy)
        nursery.start_soon(_poll_rates, proxies, backend, began, result)
        limits = httpx.Limits(max_connections=plan.clients, max_keepalive_connections=plan.clients)
        async with httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT, limits=limits, trust_env=False
        ) as client:
            async with trio.open_nursery() as load:
                for index in range(plan.clients):
                    replica = index % len(proxies)
                    url = proxies[replica].url + "/v1/messages"
                    counted = (measured_from, ends)
                    load.start_soon(_client, client, url, replica, counted, result)
                await trio.sleep_until(measured_from)
                mark = answered()
                for index, limit in enumerate(plan.limits):
                    if index:
                        upstream.set_hidden_limit(limit, burst=limit)
                    await trio.sleep_until(measured_from + (index + 1) * plan.phase)
                    now = answered()
                    result.phases.append((limit, now[0] - mark[0], now[1] - mark[1]))
                    mark = now
                load.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    for _, begins, until, limit in plan.shifts():
        result.tracking.append(_tracking(result.samples, begins, until, limit, plan.window_seconds))


def _summarise_log(path: Path, counts: Counter[str]) -> None:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            entry = json.loads(line)
            counts[f"{entry.get('level')}: {entry.get('msg')}"] += 1
        except (ValueError, AttributeError):
            if line.strip():
                counts["(not a log line)"] += 1


async def _run_one(
    plan: Plan, backend: str, replicas: int, program: str | None, directory: Path
) -> Result:
    result = Result(backend, replicas)
    started = time.monotonic()
    upstream = SimUpstream(
        UpstreamConfig(
            api_key=KEY,
            latency=UPSTREAM_LATENCY,
            stream_gap=0.0,
            hidden_limit=plan.limits[0],
            hidden_limit_burst=plan.limits[0],
        )
    )
    run_dir = directory / f"{backend}-{replicas}"
    run_dir.mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        backend_url = "memory"
        if backend == "redis":
            assert program is not None
            redis = await nursery.start(_redis_or_fail, program)
            backend_url = redis.url
        await nursery.start(upstream.serve)
        env = _proxy_env(plan, upstream.url, backend_url)
        ProxySettings.from_env({**env, "LISTEN_ADDR": "127.0.0.1:0"})  # fail early, here
        proxies: list[_Proxy] = []
        try:
            await _start_proxies(replicas, env, run_dir, proxies)
            await _drive(plan, upstream, proxies, backend, result)
        finally:
            await _stop([proxy.process for proxy in proxies])
        for proxy in proxies:
            _summarise_log(proxy.log, result.logs)
        nursery.cancel_scope.cancel()
    result.wall = time.monotonic() - started
    return result


def _print_results(plan: Plan, results: list[Result], out: TextIO) -> None:
    shifts = [name for name, _, _, _ in plan.shifts()]
    print("limiter end to end in real time: N proxy processes on one key, one simulator", file=out)
    print(plan.describe(), file=out)
    print(file=out)
    track = "  ".join(f"{name:>7}" for name in shifts)
    print(
        f"{'backend':<8} {'replicas':>8} {'used':>7} {'429s':>7} {'client errors':>15}"
        f" {'fair':>5}   windows to track: {track}   goals",
        file=out,
    )
    for r in results:
        answered = sum(r.statuses.values())
        errors = f"{r.errors} of {answered}"
        windows = "  ".join(f"{'-' if w is None else f'{w:.1f}':>7}" for w in r.tracking)
        if r.backend == "redis":
            missed = r.missed_goals(plan.phase)
            goals = "met" if not missed else "missed: " + ", ".join(missed)
        else:
            goals = ""
        print(
            f"{r.backend:<8} {r.replicas:>8} {r.used(plan.phase):>7.1%} {r.throttled:>7.2%}"
            f" {errors:>15} {r.fair:>5.0%}   {'':>17} {windows}   {goals}".rstrip(),
            file=out,
        )
    print(
        f"goals for the redis rows: used >= {GOAL_USED:.0%}, 429s <= {GOAL_THROTTLED:.0%},"
        f" every shift tracked within {GOAL_WINDOWS:g} windows"
        f" (R within {BAND[0]:g}-{BAND[1]:g} x the new limit for a whole window)",
        file=out,
    )
    print(
        "fair: the least served replica's client 200s as a share of an even split",
        file=out,
    )
    print(file=out)
    print("per phase, used / 429s:", file=out)
    for r in results:
        cells = "   ".join(
            f"{limit:>3g}: {ok / (limit * plan.phase):>6.1%} / {t / max(1, ok + t):>6.2%}"
            for limit, ok, t in r.phases
        )
        print(f"  {r.name:<10} {cells}", file=out)
    print(file=out)
    print("per run, from the proxies' own figures (summed over replicas):", file=out)
    for r in results:
        print(f"  {r.name:<10} {_run_notes(r)}", file=out)
        for line, count in r.logs.most_common(4):
            print(f"  {'':<10}   log x{count}: {line[:110]}", file=out)


def _run_notes(r: Result) -> str:
    totals: Counter[str] = Counter()
    for reading in r.final:
        totals.update(reading)
    directions = {
        name.partition(":")[2]: int(value)
        for name, value in sorted(totals.items())
        if name.startswith("zai_proxy_rate_limit_adjustments_total:")
    }
    parts = [
        f"wall {r.wall:.0f} s",
        f"adjustments {directions or '{}'}",
        f"client statuses {dict(sorted(r.statuses.items()))}",
    ]
    if r.backend == "redis":
        no_judge = sum(1 for s in r.samples if s.judges == 0)
        many = sum(1 for s in r.samples if s.judges > 1)
        down = sum(1 for s in r.samples if s.down)
        parts += [
            f"backend errors {int(totals.get('zai_proxy_rate_limit_backend_errors_total', 0))}",
            f"polls with no judge {no_judge}, with several {many}, with a replica on its"
            f" local bucket {down} (of {len(r.samples)})",
        ]
    restarts = int(totals.get("zai_proxy_task_restarts_total", 0))
    if restarts:
        parts.append(f"task restarts {restarts}")
    return "; ".join(parts)


def _write_trace(path: Path, plan: Plan, results: list[Result]) -> None:
    with path.open("w") as out:
        out.write("backend\treplicas\tt\tlimit\trate\tjudges\tdown\trates\n")
        for r in results:
            for s in r.samples:
                rate = "" if s.rate is None else f"{s.rate:.3f}"
                rates = ",".join("" if x is None else f"{x:.3f}" for x in s.rates)
                out.write(
                    f"{r.backend}\t{r.replicas}\t{s.t:.2f}\t{_limit_at(plan, s.t):g}"
                    f"\t{rate}\t{s.judges}\t{s.down}\t{rates}\n"
                )


def _limit_at(plan: Plan, t: float) -> float:
    index = max(0, min(len(plan.limits) - 1, math.floor((t - plan.warmup) / plan.phase)))
    return plan.limits[index]


async def _stop_on_signal() -> None:
    """SIGTERM and SIGHUP stop the bench as Ctrl-C does, through every cleanup."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            raise KeyboardInterrupt


async def run_replicas(
    plan: Plan,
    replicas: list[int],
    backends: list[str],
    latency_admits: int,
    trace: Path | None,
    logs: Path | None,
) -> None:
    program = find_redis_server()
    if "redis" in backends and program is None:
        raise SystemExit("limiter_e2e: redis-server is not on PATH")
    results: list[Result] = []
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        keep = contextlib.nullcontext(str(logs)) if logs is not None else None
        with keep or tempfile.TemporaryDirectory(prefix="zai-limiter-e2e-") as directory:
            runs = [(backend, count) for count in replicas for backend in backends]
            for backend, count in runs:
                print(
                    f"running {backend} x{count} ({plan.seconds:.0f} s) ...",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(await _run_one(plan, backend, count, program, Path(directory)))
        # The runs' figures first: a latency measurement that fails loses nothing.
        _print_results(plan, results, sys.stdout)
        if trace is not None:
            _write_trace(trace, plan, results)
        sys.stdout.flush()
        if latency_admits:
            latency = []
            try:
                latency = await measure_latency(latency_admits)
            except* RuntimeError as group:  # the gate fell back: the machine was too busy
                print(f"\nlimiter latency not measured: {group.exceptions[0]}")
            if latency:
                print()
                print_latency(latency)
        nursery.cancel_scope.cancel()
    print(f"\nwall time: {time.monotonic() - started:.0f} s")


def _numbers(text: str) -> Iterator[float]:
    for part in text.split(","):
        if part.strip():
            yield float(part)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--phase", type=float, help="seconds per limit step (120; replicas: 30)")
    parser.add_argument("--window", help="RATE_LIMIT_WINDOW (10s; replicas: 2s)")
    parser.add_argument(
        "--replicas", help="real-time mode: proxy counts to run, e.g. 1,2,3 (default: virtual)"
    )
    parser.add_argument("--backend", default="memory,redis", help="replicas: memory,redis")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="replicas: client tasks")
    parser.add_argument(
        "--limits", default=",".join(f"{x:g}" for x in REAL_LIMITS), help="replicas: req/s steps"
    )
    parser.add_argument("--warmup", type=float, default=WARMUP, help="replicas: seconds")
    parser.add_argument(
        "--latency-admits", type=int, default=2000, help="replicas: admits timed (0: none)"
    )
    parser.add_argument("--trace", type=Path, help="replicas: write the polled rates here")
    parser.add_argument(
        "--logs", type=Path, help="replicas: keep the proxies' logs here (BACKEND-N/proxy-I.log)"
    )
    parser.add_argument(
        "--log-level", default="warning", help="replicas: the proxies' LOG_LEVEL (info: decisions)"
    )
    args = parser.parse_args()
    if args.replicas is None:
        trio.run(
            run,
            args.phase or 120.0,
            args.window or "10s",
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        return
    window = args.window or "2s"
    settings = ProxySettings.from_env(
        {
            "ZAI_API_KEY": KEY,
            "ZAI_TARGET_URL": "http://x/",
            "RATE_LIMIT_WINDOW": window,
            "LOG_LEVEL": args.log_level,
        }
    )
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if not backends or not set(backends) <= {"memory", "redis"}:
        parser.error("--backend: memory, redis or both")
    replicas = [int(n) for n in _numbers(args.replicas)]
    if not replicas or min(replicas) < 1 or args.clients < max(replicas):
        parser.error("--replicas: counts >= 1, and no more than --clients")
    plan = Plan(
        limits=tuple(_numbers(args.limits)),
        phase=args.phase or PHASE,
        warmup=args.warmup,
        window=window,
        window_seconds=settings.rate_limit_window,
        clients=args.clients,
        log_level=args.log_level,
    )
    interrupted = False
    try:
        trio.run(run_replicas, plan, replicas, backends, args.latency_admits, args.trace, args.logs)
    except* KeyboardInterrupt:
        interrupted = True
    finally:
        # The last resort: trio's own cleanup stops them; this only acts if it could not.
        for process in _CHILDREN:
            if process.poll() is None:
                process.kill()
    if interrupted:
        print("limiter_e2e: interrupted; every proxy and redis-server stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
