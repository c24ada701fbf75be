"""Shared fixtures: a simulated upstream and proxies on 127.0.0.1 port 0, in-process."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
import trio

from tests.redis_server import RedisServer
from zai_proxy.proxy import RunningProxy, serve_proxy
from zai_proxy.settings import ProxySettings
from zai_proxy.sim.upstream import SimUpstream, UpstreamConfig

# A key unique to this test run, so a scan for it can't match anything by accident.
UPSTREAM_KEY = "sk-zai-test-" + secrets.token_hex(16)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of an external program; skip without it, but fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: missing tools fail instead of skipping)")
        pytest.skip(message)
    return path


@dataclass
class ProxyHandle:
    running: RunningProxy
    stop: trio.Event

    @property
    def url(self) -> str:
        return self.running.url

    async def settled(self) -> None:
        """Wait until every request is done, its metrics and token accounting included."""
        with trio.fail_after(5):
            while self.running.app.active:  # noqa: ASYNC110 - polls a plain counter
                await trio.sleep(0.001)

    def sample(self, name: str, **labels: str) -> float | None:
        labels.setdefault("variant", self.running.app.settings.variant)
        return self.running.app.metrics.registry.get_sample_value(name, labels)

    @property
    def origin(self) -> str:
        return self.running.origin


StartProxy = Callable[..., Awaitable[ProxyHandle]]
StartUpstream = Callable[..., Awaitable[SimUpstream]]


@pytest.fixture
def start_upstream(nursery: trio.Nursery) -> StartUpstream:
    async def start(**config: object) -> SimUpstream:
        options: dict[str, object] = {"api_key": UPSTREAM_KEY, "latency": 0.0, "stream_gap": 0.0}
        options.update(config)
        upstream = SimUpstream(UpstreamConfig(**options))  # type: ignore[arg-type]
        await nursery.start(upstream.serve)
        return upstream

    return start


@pytest.fixture
async def upstream(start_upstream: StartUpstream) -> SimUpstream:
    return await start_upstream()


def proxy_env(upstream: SimUpstream, **overrides: str) -> dict[str, str]:
    env = {
        "ZAI_API_KEY": UPSTREAM_KEY,
        "ZAI_TARGET_URL": upstream.url,
        "LISTEN_ADDR": "127.0.0.1:0",
        "RATE_LIMIT_MAX": "100000",
        "RATE_LIMIT_INITIAL": "10000",
        "RETRY_BACKOFF_BASE": "10ms",
        "SHUTDOWN_TIMEOUT": "5s",
    }
    env.update(overrides)
    return env


@pytest.fixture
def start_proxy(nursery: trio.Nursery, upstream: SimUpstream) -> StartProxy:
    async def start(target: SimUpstream | None = None, **overrides: str) -> ProxyHandle:
        settings = ProxySettings.from_env(proxy_env(target or upstream, **overrides))
        stop = trio.Event()
        running: RunningProxy = await nursery.start(serve_proxy, settings, stop)
        return ProxyHandle(running=running, stop=stop)

    return start


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> ProxyHandle:
    return await start_proxy()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of this test's own, on a free port, with no persistence."""
    server = RedisServer.start(require_tool("redis-server"))
    try:
        yield server
    finally:
        server.stop()
