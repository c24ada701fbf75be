"""`zai-proxy demo --replicas N`, in-process: its proxies, the dashboard scraping them all,
and the shared limiter on the demo's own redis-server (or, without one, on memory)."""

from __future__ import annotations

import logging
import os
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_tool
from zai_proxy.cli import build_parser, main
from zai_proxy.demo import run_demo
from zai_proxy.redis_process import RedisUnavailable, serve_redis

PORTS = ["--dashboard-port", "0", "--proxy-port", "0", "--canary-port", "0"]


@dataclass
class Demo:
    out: str
    production: list[str]  # the replicas' base URLs, in order
    canary: str
    dashboard: str
    limiter: str | None  # the `limiter:` line, printed with more than one replica
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def proxies(self) -> list[str]:
        return [*self.production, self.canary]


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@asynccontextmanager
async def demo(
    capsys: pytest.CaptureFixture[str],
    *flags: str,
    duration: float,
    agents: int = 0,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Demo]:
    """The demo (simulator mode) from its machine-readable lines; leaving waits for it to
    return by itself after `duration`."""
    crowd = ["--agents", str(agents)] if agents else ["--no-agents"]
    args = build_parser().parse_args(["demo", *PORTS, *crowd, "--duration", str(duration), *flags])
    environ = {"PATH": os.environ.get("PATH", "")} if env is None else dict(env)
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def run() -> None:
            await run_demo(args, environ)
            done.set()

        nursery.start_soon(run)
        out = ""
        with trio.fail_after(15):
            while not re.search(r"^canary: ", out, re.M):
                await trio.sleep(0.05)
                out += capsys.readouterr().out
        dashboard = re.search(r"^dashboard: (\S+)$", out, re.M)
        canary = re.search(r"^canary: (\S+)$", out, re.M)
        limiter = re.search(r"^limiter: (\S+)$", out, re.M)
        assert dashboard is not None and canary is not None
        running = Demo(
            out=out,
            production=re.findall(r"^production: (\S+)$", out, re.M),
            canary=canary.group(1),
            dashboard=dashboard.group(1),
            limiter=limiter.group(1) if limiter else None,
            done=done,
        )
        yield running
        with trio.fail_after(duration + 15):
            await done.wait()


async def healthz(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(origin(url) + "/healthz")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def sample(client: httpx.AsyncClient, url: str, name: str, **labels: str) -> float | None:
    """One sample of the proxy at `url`'s /metrics (None when absent)."""
    text = (await client.get(origin(url) + "/metrics")).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll `check` until it returns True, failing after `seconds`."""
    with trio.move_on_after(seconds):
        while not await check():  # noqa: ASYNC110 - polls servers over HTTP
            await trio.sleep(0.1)
        return
    pytest.fail(f"{what}: not within {seconds:g}s")


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=5)


async def test_every_production_replica_answers_healthz(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with demo(capsys, "--replicas", "2", duration=3) as running, client() as http:
        assert len(running.production) == 2
        assert len(set(running.proxies)) == 3
        for url in running.production:
            assert (await healthz(http, url))["variant"] == "production"
        assert (await healthz(http, running.canary))["variant"] == "canary"


async def test_the_dashboard_scrapes_both_replicas_and_the_canary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with demo(capsys, "--replicas", "2", duration=5) as running, client() as http:
        expected = {origin(url) + "/metrics": variant for url, variant in zip(
            running.proxies, ["production", "production", "canary"], strict=True
        )}  # fmt: skip

        async def all_up() -> bool:
            targets = (await http.get(running.dashboard + "/api/status")).json()["targets"]
            up = {t["url"]: t["variant"] for t in targets if t["up"]}
            return len(targets) == 3 and up == expected

        await until(all_up, 4, "3 targets up on the dashboard")


async def test_agents_reach_every_production_replica(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with demo(capsys, "--replicas", "2", agents=6, duration=8) as running, client() as http:
        for url in running.production:

            async def served(url: str = url) -> bool:
                text = (await http.get(origin(url) + "/metrics")).text
                return any(
                    s.value > 0
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                    if s.name == "zai_proxy_requests_total"
                )

            await until(served, 6, f"a request through {url}")


async def test_with_redis_every_proxy_is_on_the_shared_limiter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_tool("redis-server")
    async with demo(capsys, "--replicas", "2", duration=4) as running, client() as http:
        assert running.limiter is not None and running.limiter.startswith("redis://127.0.0.1:")
        for url in running.proxies:
            assert (await healthz(http, url)).get("rate_limit_backend") == "redis", url
            up = await sample(http, url, "zai_proxy_rate_limit_backend_up", backend="redis")
            assert up == 1.0, url


async def test_with_redis_each_proxy_counts_all_three_on_the_limiter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_tool("redis-server")
    async with demo(capsys, "--replicas", "2", duration=5) as running, client() as http:
        for url in running.proxies:

            async def three(url: str = url) -> bool:
                return await sample(http, url, "zai_proxy_rate_limit_replicas") == 3.0

            await until(three, 3, f"zai_proxy_rate_limit_replicas 3 on {url}")


async def _pong(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    async with stream:
        await stream.send_all(b"PING\r\n")
        return (await stream.receive_some(64)).startswith(b"+PONG")


async def test_the_demos_redis_server_is_gone_after_the_demo_returns(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    require_tool("redis-server")
    caplog.set_level(logging.INFO, logger="zai_proxy.demo")
    async with demo(capsys, "--replicas", "2", duration=2) as running:
        assert running.limiter is not None
        port = urlsplit(running.limiter).port
        assert port is not None
        assert await _pong(port)
        [started] = [r for r in caplog.records if r.getMessage().startswith("shared limiter")]
        pid: int = started.pid  # type: ignore[attr-defined]
    assert not await _pong(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_without_redis_server_each_proxy_runs_its_own_limiter_and_says_so(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="zai_proxy")
    env = {"PATH": str(tmp_path)}  # a directory with no redis-server in it
    async with demo(capsys, "--replicas", "2", duration=3, env=env) as running, client() as http:
        assert running.limiter == "memory"
        assert "each proxy its own (redis-server is not installed)" in running.out
        for url in running.proxies:
            up = await sample(http, url, "zai_proxy_rate_limit_backend_up", backend="memory")
            assert up == 1.0, url
    said = [r for r in caplog.records if "redis-server is not installed" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.WARNING
    assert "its own limiter (memory)" in said[0].getMessage()
    assert not [r for r in caplog.records if r.getMessage().startswith("shared limiter")]


async def test_one_replica_is_the_demo_as_before_with_no_redis_server(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    require_tool("redis-server")  # present, and still not started
    caplog.set_level(logging.INFO, logger="zai_proxy")
    async with demo(capsys, duration=2) as running, client() as http:
        assert len(running.production) == 1
        assert running.limiter is None
        assert "production proxy: " in running.out
        assert "limiter" not in running.out
        for url in running.proxies:
            up = await sample(http, url, "zai_proxy_rate_limit_backend_up", backend="memory")
            assert up == 1.0, url
    assert not [r for r in caplog.records if "redis" in r.getMessage()]


def _below_ephemeral() -> int:
    """The first port the OS hands out for port 0: fixed ports below it stay free of
    the sockets this test and the demo open on port 0 meanwhile."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _held_port_run() -> tuple[int, socket.socket]:
    """A port P with P..P+3 free now, and a socket listening on P+2 (the caller's)."""
    rng = random.Random()
    for _ in range(100):
        first = rng.randrange(10_000, _below_ephemeral() - 4)
        holder = socket.socket()
        try:
            for offset in (0, 1, 3):
                with socket.socket() as check:
                    check.bind(("127.0.0.1", first + offset))
            holder.bind(("127.0.0.1", first + 2))
            holder.listen()
        except OSError:
            holder.close()
            continue
        return first, holder
    pytest.skip("no run of four free ports found")


async def test_replicas_take_the_next_free_ports_above_the_proxy_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, holder = _held_port_run()
    with holder:  # P+1 goes to the canary, P+2 is busy: the second replica gets P+3
        flags = ("--proxy-port", str(first), "--canary-port", str(first + 1))
        async with demo(capsys, "--replicas", "2", *flags, duration=2) as running:
            ports = [urlsplit(url).port for url in running.proxies]
    assert ports == [first, first + 3, first + 1]


@pytest.mark.parametrize("replicas", ["0", "-2", "17"])
def test_a_bad_replica_count_stops_with_one_line(
    replicas: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --duration: were the count let through, the demo would still end.
    assert main(["demo", *PORTS, "--no-agents", "--duration", "1", "--replicas", replicas]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"zai-proxy: --replicas={replicas!r} is not valid: expected an integer from 1 to 16\n"
    )


def _fake_redis_server(directory: Path, script: str) -> Path:
    """A `redis-server` on PATH that is not one: a shell script."""
    program = directory / "redis-server"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(0o755)
    return program


async def test_a_redis_server_that_fails_to_start_leaves_each_proxy_its_own_limiter(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="zai_proxy")
    _fake_redis_server(tmp_path, "exit 1\n")
    env = {"PATH": str(tmp_path)}
    async with demo(capsys, "--replicas", "2", duration=2, env=env) as running, client() as http:
        assert running.limiter == "memory"
        assert "each proxy its own (redis-server did not start)" in running.out
        for url in running.proxies:
            assert (await healthz(http, url))["variant"] in ("production", "canary")
    [said] = [r for r in caplog.records if "its own limiter (memory)" in r.getMessage()]
    assert said.getMessage().startswith("redis-server exited with code 1")


async def test_a_redis_server_that_never_answers_is_killed_at_the_deadline(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    program = _fake_redis_server(tmp_path, f"echo $$ > {pid_file}\nexec sleep 60\n")
    with trio.fail_after(5):
        with pytest.raises(
            RedisUnavailable, match=r"did not answer on 127\.0\.0\.1:\d+ within 0\.5s"
        ):
            await serve_redis(str(program), start_timeout=0.5)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
