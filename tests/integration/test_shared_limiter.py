"""The shared limiter against a real redis-server: proxies on one key act as one.

Real time throughout (Redis keeps its own clock); every test bounds its waits.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import trio

from tests.conftest import UPSTREAM_KEY, ProxyHandle, StartProxy, StartUpstream
from tests.integration.test_limiter_e2e import agents
from tests.redis_server import RedisServer, free_port
from zai_proxy.proxy import ProxyMetrics, SharedGate, default_namespace, make_gate
from zai_proxy.proxy.metrics import LiveState
from zai_proxy.settings import ProxySettings
from zai_proxy.sim.upstream import SimUpstream

MESSAGE = {"model": "glm-4.6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def shared(redis: RedisServer, **overrides: str) -> dict[str, str]:
    """Settings for a proxy on the shared limiter, with short windows for tests."""
    env = {
        "RATE_LIMIT_BACKEND": redis.url,
        "RATE_LIMIT_WINDOW": "2s",
        "RATE_LIMIT_PROBE_INTERVAL": "1",
        "RATE_LIMIT_INITIAL": "15",
        "RATE_LIMIT_MAX": "100",
        "MAX_WORKERS": "200",
        "RETRY_BACKOFF_BASE": "200ms",
    }
    env.update(overrides)
    return env


def gate_of(proxy: ProxyHandle) -> SharedGate:
    gate = proxy.running.app.limiter
    assert isinstance(gate, SharedGate)
    return gate


async def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll until `condition` holds; return the seconds it took."""
    began = trio.current_time()
    with trio.move_on_after(seconds):
        while not condition():  # noqa: ASYNC110 - polls plain attributes
            await trio.sleep(0.02)
        return trio.current_time() - began
    raise AssertionError(f"not within {seconds}s: {what}")


async def load(urls: list[str], clients: int, seconds: float, statuses: dict[int, int]) -> None:
    """`clients` agents spread evenly over `urls`, each posting until `seconds` pass."""
    until = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for n, url in enumerate(urls):
            share = clients // len(urls) + (n < clients % len(urls))
            nursery.start_soon(agents, url, share, until, statuses)


# ------------------------------------------------------------------ the bucket in Redis


def settings_for(redis: RedisServer, **overrides: str) -> ProxySettings:
    env = {
        "ZAI_API_KEY": UPSTREAM_KEY,
        "ZAI_TARGET_URL": "http://127.0.0.1:9/api/anthropic",
        "RATE_LIMIT_BACKEND": redis.url,
        "RATE_LIMIT_INITIAL": "50",
        "RATE_LIMIT_MAX": "100",
    }
    env.update(overrides)
    return ProxySettings.from_env(env)


def new_gate(settings: ProxySettings) -> SharedGate:
    def live() -> LiveState:
        raise AssertionError("not scraped here")

    gate = make_gate(settings, ProxyMetrics(variant=settings.variant, live=live))
    assert isinstance(gate, SharedGate)
    return gate


async def test_the_grant_is_atomic_and_paces_every_replica_together(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    # Three replicas (three clients, three connections) take 40 turns each at once.
    settings = settings_for(redis_server)
    gates = [new_gate(settings) for _ in range(3)]
    for gate in gates:
        await nursery.start(gate.run)
    sent: list[float] = []

    async def turns(gate: SharedGate) -> None:
        for _ in range(40):
            sent.append(await gate.admit(30.0))

    began = trio.current_time()
    async with trio.open_nursery() as takers:
        for gate in gates:
            for _ in range(4):
                takers.start_soon(turns, gate)
    assert all(gate.up for gate in gates)
    # 480 turns at 50/s from one bucket: no faster than 479 spacings of 20 ms. Three
    # separate buckets would have taken a third of that.
    sent.sort()
    assert sent[-1] - began >= 479 / 50 * 0.97
    # And no turn before its token: the k-th send comes (k - 1) / 50 s after the first
    # grant at the earliest, however the callers' wake-ups bunch up.
    for k, at in enumerate(sent):
        assert at - began >= k / 50 * 0.97, (k, at - began)
    # Every ticket was handed out once: the bucket counted exactly 480.
    issued = await redis_field(redis_server, f"zai-proxy:{{{gates[0].namespace}}}:bucket", "issued")
    assert issued == "480"


async def redis_field(redis: RedisServer, key: str, field: str) -> str:
    result = await trio.run_process(
        ["redis-cli", "-p", str(redis.port), "HGET", key, field], capture_stdout=True
    )
    return result.stdout.decode().strip()


async def test_a_rate_cut_holds_back_callers_already_queued(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    # 30 callers queue at 40/s (turns 25 ms apart, the last 0.75 s away); at 0.2 s the
    # rate is cut to 10/s. Those still queued follow the cut, however short their wait.
    gate = new_gate(settings_for(redis_server, RATE_LIMIT_INITIAL="40"))
    await nursery.start(gate.run)
    sent: list[float] = []

    async def caller() -> None:
        sent.append(await gate.admit(30.0))

    began = trio.current_time()
    async with trio.open_nursery() as callers:
        for _ in range(30):
            callers.start_soon(caller)
        await trio.sleep(0.2)
        # What the judge's publish does to the bucket.
        bucket = f"zai-proxy:{{{gate.namespace}}}:bucket"
        await trio.run_process(
            ["redis-cli", "-p", str(redis_server.port), "HSET", bucket, "rate", "10"],
            capture_stdout=True,
        )
        cut = trio.current_time()
    after = [t for t in sent if t > cut]
    in_first_second = sum(1 for t in after if t <= cut + 1.0)
    # At 10/s about 10 go in the second after the cut (at 40/s all ~22 left would).
    assert in_first_second <= 12, (in_first_second, [round(t - began, 3) for t in sent])
    assert max(sent) - cut >= 1.5


async def test_a_caller_that_gives_up_gives_its_turn_back(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    gate = new_gate(settings_for(redis_server, RATE_LIMIT_INITIAL="2", RATE_LIMIT_MIN="1"))
    await nursery.start(gate.run)
    await gate.admit(30.0)  # the one token there was
    with trio.move_on_after(0.2):
        await gate.admit(30.0)  # waits 0.5 s for its turn; cancelled after 0.2
    # The cancelled ticket gave its token back: the next caller goes at 0.5 s, not 1 s.
    began = trio.current_time()
    await gate.admit(30.0)
    assert trio.current_time() - began < 0.45


async def test_a_wait_past_max_wait_is_refused_by_the_shared_bucket(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    gate = new_gate(settings_for(redis_server, RATE_LIMIT_INITIAL="1", RATE_LIMIT_MIN="1"))
    await nursery.start(gate.run)
    await gate.admit(5.0)
    from zai_proxy.errors import RateLimited

    with pytest.raises(RateLimited) as refused:
        await gate.admit(0.5)
    assert refused.value.retry_after == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------ proxies against the limit


@pytest.mark.parametrize("replicas", [2, 3])
async def test_replicas_share_the_hidden_limit_as_one(
    replicas: int,
    redis_server: RedisServer,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
) -> None:
    upstream = await start_upstream(hidden_limit=20.0, hidden_limit_burst=20.0, latency=0.3)
    # No probes in so short a run: what is measured is the sharing, not the probing.
    env = shared(redis_server, RATE_LIMIT_PROBE_INTERVAL="10", RATE_LIMIT_INITIAL="18")
    proxies = [await start_proxy(upstream, **env) for _ in range(replicas)]
    statuses: dict[int, int] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load, [p.url for p in proxies], 36, 16.0, statuses)
        # Learning, as one proxy alone would: 18/s for a window (4 s: shorter windows
        # than the 3 s a storm is watched run on), a search to 18 x 4/5 x 2 = 28.8/s, a
        # throttled stretch measured, settled just under 20/s by about 8 s.
        await trio.sleep(10.0)
        ok_before, throttled_before = upstream.status_counts.get(200, 0), upstream.rate_limited
        began = trio.current_time()
    seconds = trio.current_time() - began
    ok = upstream.status_counts.get(200, 0) - ok_before
    throttled = upstream.rate_limited - throttled_before
    # One limiter: every replica applies the same rate, one of them judges...
    gates = [gate_of(p) for p in proxies]
    assert len({gate.rate for gate in gates}) == 1, [gate.rate for gate in gates]
    assert sum(gate.judge for gate in gates) == 1
    assert all(gate.replicas == replicas for gate in gates)
    # ...and together they use the limit, where each on its own limiter (15/s each)
    # would have sent 30-45/s into a limit of 20.
    assert ok / seconds >= 0.8 * 20.0, (ok, seconds)
    assert throttled / max(1, ok + throttled) < 0.05, (ok, throttled)
    assert statuses.get(200, 0) >= 0.95 * sum(statuses.values()), statuses


async def test_memory_replicas_each_spend_the_key_on_their_own(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # The comparison the shared limiter exists for: two limiters of 15/s each start by
    # sending 30/s into a limit of 20.
    upstream = await start_upstream(hidden_limit=20.0, hidden_limit_burst=20.0, latency=0.3)
    env = {
        "RATE_LIMIT_WINDOW": "30s",
        "RATE_LIMIT_INITIAL": "15",
        "RATE_LIMIT_MAX": "100",
        "MAX_WORKERS": "200",
    }
    proxies = [await start_proxy(upstream, **env) for _ in range(2)]
    statuses: dict[int, int] = {}
    await load([p.url for p in proxies], 36, 3.0, statuses)
    assert upstream.rate_limited / sum(upstream.status_counts.values()) > 0.15


# ---------------------------------------------------------------------- Redis trouble


async def test_redis_killed_and_restarted_mid_load_loses_no_request(
    redis_server: RedisServer,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="zai_proxy.limiter")
    upstream = await start_upstream(latency=0.05)
    env = shared(redis_server, RATE_LIMIT_INITIAL="40", RATE_LIMIT_WINDOW="30s")
    proxies = [await start_proxy(upstream, **env) for _ in range(2)]
    gates = [gate_of(p) for p in proxies]
    await wait_until(lambda: all(g.replicas == 2 for g in gates), 3, "both replicas seen")
    statuses: dict[int, int] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load, [p.url for p in proxies], 8, 6.0, statuses)
        await trio.sleep(1.0)
        redis_server.kill()
        await wait_until(lambda: not any(g.up for g in gates), 2, "both fell back")
        # Each runs on its share of the shared rate meanwhile.
        assert [g.rate for g in gates] == [20.0, 20.0]
        await trio.sleep(1.5)
        redis_server.restart()
        await wait_until(lambda: all(g.up for g in gates), 4, "both rejoined")
        # The empty Redis got the state back from the judge: still 40/s, not reset.
        await wait_until(lambda: sum(g.judge for g in gates) == 1, 4, "a judge")
        await trio.sleep(0.3)
        assert [g.rate for g in gates] == [40.0, 40.0]
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 100
    for proxy in proxies:
        assert proxy.sample("zai_proxy_rate_limit_backend_errors_total")
        assert proxy.sample("zai_proxy_rate_limit_backend_up", backend="redis") == 1.0
    lines = [r.getMessage() for r in caplog.records if r.name == "zai_proxy.limiter"]
    # One line when a replica falls back and one when it is back, not one per failed
    # call (a busy machine may cut a replica off twice; the lines still pair up).
    down = lines.count(
        "rate limit backend unavailable; using a local bucket at this replica's share"
    )
    back = lines.count("rate limit backend back; sharing again")
    assert down == back >= 2, lines
    failed = sum(p.sample("zai_proxy_rate_limit_backend_errors_total") or 0 for p in proxies)
    assert failed > down, (failed, down)


async def test_rejoining_makes_no_burst(
    redis_server: RedisServer,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
) -> None:
    # 30 agents queue at 10/s. Redis goes away: the queue goes on locally at 10/s (one
    # replica's share). When Redis is back, the callers still queued locally move to
    # the shared bucket, so the upstream still sees 10/s, not the local queue's 10/s
    # beside the shared bucket's.
    upstream = await start_upstream(latency=0.0)
    env = shared(redis_server, RATE_LIMIT_INITIAL="10", RATE_LIMIT_WINDOW="60s")
    proxy = await start_proxy(upstream, **env)
    gate = gate_of(proxy)

    def sent() -> int:
        return sum(upstream.status_counts.values())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load, [proxy.url], 30, 9.0, {})
        await trio.sleep(1.0)
        redis_server.kill()
        await wait_until(lambda: not gate.up, 2, "fell back")
        await trio.sleep(2.0)
        redis_server.restart()
        await wait_until(lambda: gate.up, 4, "rejoined")
        before, began = sent(), trio.current_time()
        await trio.sleep(3.0)
        rate = (sent() - before) / (trio.current_time() - began)
        nursery.cancel_scope.cancel()
    assert 7.0 <= rate <= 11.5, rate


async def test_a_proxy_starts_and_serves_without_redis_and_joins_when_it_comes(
    redis_server: RedisServer,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
) -> None:
    redis_server.kill()
    upstream = await start_upstream()
    with trio.fail_after(5):  # start-up is not held up by the missing Redis
        proxy = await start_proxy(upstream, **shared(redis_server))
    gate = gate_of(proxy)
    assert not gate.up and gate.rate == 15.0
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(proxy.url + "/v1/messages", json=MESSAGE)
        assert response.status_code == 200
        redis_server.restart()
        await wait_until(lambda: gate.up and gate.judge, 5, "joined once Redis came")
        health = (await client.get(proxy.origin + "/healthz")).json()
    assert health["rate_limit_backend"] == "redis" and health["rate_limit_backend_up"] is True
    assert health["rate_limit_replicas"] == 1 and health["rate_limit_judge"] is True


async def test_a_hung_redis_delays_no_request_beyond_its_timeout(
    redis_server: RedisServer,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
) -> None:
    upstream = await start_upstream(latency=0.0)
    proxy = await start_proxy(
        upstream,
        **shared(redis_server, RATE_LIMIT_INITIAL="100", RATE_LIMIT_BACKEND_TIMEOUT="100ms"),
    )
    gate = gate_of(proxy)
    redis_server.pause()
    try:
        times = []
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(20):
                began = trio.current_time()
                response = await client.post(proxy.url + "/v1/messages", json=MESSAGE)
                assert response.status_code == 200
                times.append(trio.current_time() - began)
        assert not gate.up
        # The first request paid the deadline (2 x 100 ms at most); the rest go local.
        assert max(times) < 0.5, times
        assert sorted(times)[10] < 0.05, times
    finally:
        redis_server.resume()
    await wait_until(lambda: gate.up, 5, "rejoined after the pause")


async def test_reset_on_one_replica_resets_them_all(
    redis_server: RedisServer,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
) -> None:
    upstream = await start_upstream(hidden_limit=10.0, hidden_limit_burst=10.0, latency=0.1)
    env = shared(redis_server, RATE_LIMIT_INITIAL="40")
    proxies = [await start_proxy(upstream, **env) for _ in range(2)]
    gates = [gate_of(p) for p in proxies]
    statuses: dict[int, int] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load, [p.url for p in proxies], 20, 30.0, statuses)
        await wait_until(
            lambda: all(g.ceiling is not None and g.rate < 15 for g in gates), 12, "learnt"
        )
        nursery.cancel_scope.cancel()
    follower = next(p for p, g in zip(proxies, gates, strict=True) if not g.judge)
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(follower.origin + "/admin/reset-rate-limit")
    assert response.status_code == 200
    assert response.json()["rate_limit_rps"] == 40.0
    await wait_until(
        lambda: all(g.rate == 40.0 and g.ceiling is None for g in gates), 2, "both reset"
    )


# ------------------------------------------------------------------- the judge's lease


@pytest.fixture
def serve_processes(
    redis_server: RedisServer, upstream: SimUpstream
) -> Iterator[Callable[[int], list[tuple[subprocess.Popen[bytes], str]]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(count: int) -> list[tuple[subprocess.Popen[bytes], str]]:
        out = []
        for _ in range(count):
            port = free_port()
            env = dict(os.environ)
            env.update(
                ZAI_API_KEY=UPSTREAM_KEY,
                ZAI_TARGET_URL=upstream.url,
                LISTEN_ADDR=f"127.0.0.1:{port}",
                RATE_LIMIT_BACKEND=redis_server.url,
                RATE_LIMIT_WINDOW="3s",
                LOG_LEVEL="warning",
            )
            process = subprocess.Popen(
                [sys.executable, "-m", "zai_proxy", "serve"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            started.append(process)
            out.append((process, f"http://127.0.0.1:{port}"))
        return out

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def scrape(client: httpx.AsyncClient, origin: str) -> str | None:
    try:
        response = await client.get(origin + "/metrics")
    except httpx.TransportError:
        return None
    return response.text if response.status_code == 200 else None


async def test_the_judge_hands_over_within_its_lease_when_killed(
    serve_processes: Callable[[int], list[tuple[subprocess.Popen[bytes], str]]],
) -> None:
    replicas = serve_processes(2)
    async with httpx.AsyncClient(timeout=2) as client:
        judges: dict[str, float] = {}
        with trio.fail_after(20):
            while len(judges) < 2 or sum(judges.values()) != 1:
                await trio.sleep(0.1)
                for _, origin in replicas:
                    text = await scrape(client, origin)
                    value = None if text is None else metric(text, "zai_proxy_rate_limit_judge")
                    if value is not None:
                        judges[origin] = value
        [(judge, _)] = [(p, o) for p, o in replicas if judges[o] == 1.0]
        [survivor] = [o for _, o in replicas if judges[o] == 0.0]
        judge.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        with trio.fail_after(10):
            while True:
                text = await scrape(client, survivor)
                if text is not None and metric(text, "zai_proxy_rate_limit_judge") == 1.0:
                    break
                await trio.sleep(0.05)
        handover = time.monotonic() - killed
        # The lease is min(3 s, RATE_LIMIT_WINDOW=3s): handed over within it (and a beat).
        assert handover <= 3.0 + 0.5, handover
        # The dead replica stops counting once its heartbeat is older than 3 s.
        with trio.fail_after(6):
            while True:
                text = await scrape(client, survivor)
                if text is not None and metric(text, "zai_proxy_rate_limit_replicas") == 1.0:
                    break
                await trio.sleep(0.1)


# --------------------------------------------------------------- namespace and secrets


def test_the_default_namespace_is_shared_per_key_and_upstream_and_reveals_neither() -> None:
    url = "https://api.z.ai/api/anthropic"
    key = "sk-zai-" + "a1b2c3d4" * 4
    name = default_namespace(key, url)
    assert name == default_namespace(key, url + "/")  # same origin, same limiter
    assert name == default_namespace(key, "https://api.z.ai/api/paas/v4")
    assert name != default_namespace(key + "x", url)
    assert name != default_namespace(key, "https://open.bigmodel.cn/api/anthropic")
    assert len(name) == 20 and all(c in "0123456789abcdef" for c in name)
    assert not any(key[i : i + 6] in name for i in range(len(key) - 5))


async def test_an_explicit_namespace_separates_limiters_on_one_redis(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    a = new_gate(settings_for(redis_server, RATE_LIMIT_NAMESPACE="team-a"))
    b = new_gate(settings_for(redis_server, RATE_LIMIT_NAMESPACE="team-b"))
    c = new_gate(settings_for(redis_server, RATE_LIMIT_NAMESPACE="team-a"))
    for gate in (a, b, c):
        await nursery.start(gate.run)
    await wait_until(lambda: a.replicas == 2 and c.replicas == 2, 3, "team-a has two")
    assert b.replicas == 1 and b.judge and a.judge != c.judge


async def test_the_redis_password_is_used_and_never_shown(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.conftest import require_tool

    password = "redis-secret-" + os.urandom(6).hex()
    server = RedisServer.start(require_tool("redis-server"), password=password)
    try:
        caplog.set_level(logging.DEBUG)
        upstream = await start_upstream()
        plain = f"redis://127.0.0.1:{server.port}/0"
        right = await start_proxy(
            upstream,
            **shared(server, RATE_LIMIT_BACKEND_PASSWORD=password, RATE_LIMIT_BACKEND=plain),
        )
        in_url = await start_proxy(upstream, **shared(server))
        wrong = await start_proxy(
            upstream,
            **shared(
                server, RATE_LIMIT_BACKEND=plain.replace("//", "//:nope-" + password[:4] + "@")
            ),
        )
        await wait_until(lambda: gate_of(right).replicas == 2, 3, "both with the password")
        assert gate_of(in_url).up and not gate_of(wrong).up
        async with httpx.AsyncClient(timeout=5) as client:
            for proxy in (right, in_url, wrong):
                response = await client.post(proxy.url + "/v1/messages", json=MESSAGE)
                assert response.status_code == 200
                pages = [
                    response.text,
                    (await client.get(proxy.origin + "/metrics")).text,
                    (await client.get(proxy.origin + "/healthz")).text,
                ]
                assert not any(password in page for page in pages)
        assert (await client_json(wrong.origin + "/healthz"))["rate_limit_backend_up"] is False
        logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
        assert password not in logged
        assert "nope-" not in logged
        assert repr(gate_of(right)._settings).count(password) == 0
    finally:
        server.stop()


async def client_json(url: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
    data = response.json()
    assert isinstance(data, dict)
    return data


def test_backend_settings_stop_start_up_with_one_line_naming_the_variable() -> None:
    from zai_proxy.errors import SettingsError

    base = {"ZAI_API_KEY": "k"}
    good = ProxySettings.from_env({**base, "RATE_LIMIT_BACKEND": "rediss://u:p@redis:6380/2"})
    assert good.rate_limit_backend == "rediss://u:p@redis:6380/2"
    assert ProxySettings.from_env(base).rate_limit_backend == "memory"
    for name, value in [
        ("RATE_LIMIT_BACKEND", "redis://:hunter2@redis:99999/0"),
        ("RATE_LIMIT_BACKEND", "http://redis:6379"),
        ("RATE_LIMIT_BACKEND", "redis://redis:6379/zero"),
        ("RATE_LIMIT_BACKEND", "redis:///0"),
        ("RATE_LIMIT_NAMESPACE", "has space"),
        ("RATE_LIMIT_NAMESPACE", "x" * 101),
        ("RATE_LIMIT_BACKEND_TIMEOUT", "11s"),
        ("RATE_LIMIT_BACKEND_TIMEOUT", "0"),
    ]:
        with pytest.raises(SettingsError) as error:
            ProxySettings.from_env({**base, name: value})
        message = str(error.value)
        assert message.startswith(name + "=") and "\n" not in message
        assert "hunter2" not in message
    assert math.isclose(
        ProxySettings.from_env(
            {**base, "RATE_LIMIT_BACKEND_TIMEOUT": "50ms"}
        ).rate_limit_backend_timeout,
        0.05,
    )


async def test_garbage_in_redis_is_outlived_not_obeyed(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    # Whatever else writes into the namespace (a bug, an old version, a person with
    # redis-cli), the judge drops what it cannot read and publishes a sane state again.
    gate = new_gate(settings_for(redis_server, RATE_LIMIT_INITIAL="20"))
    await nursery.start(gate.run)
    prefix = f"zai-proxy:{{{gate.namespace}}}:"

    async def cli(*words: str) -> None:
        await trio.run_process(["redis-cli", "-p", str(redis_server.port), *words])

    await cli("RPUSH", prefix + "events", "not json", '{"s": [1], "a": [[1]]}', "[]")
    await cli("HSET", prefix + "state", "rate", "fast", "ceiling", "high")
    await wait_until(lambda: gate.judge and gate.up, 2, "judging")
    await trio.sleep(0.5)
    assert gate.up and gate.judge and gate.rate == 20.0
    assert await redis_field(redis_server, prefix + "state", "rate") == "20.0"
    began = trio.current_time()
    await gate.admit(5.0)
    await gate.admit(5.0)
    assert trio.current_time() - began == pytest.approx(0.05, abs=0.03)
