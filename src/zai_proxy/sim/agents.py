"""Simulated agents: a pool of clients that keep the demo's proxies busy.

Each agent loops forever, sending Anthropic Messages requests through one of the
targets (picked by weight, e.g. 70 % production / 30 % canary) with httpx:

- a mix of streaming and non-streaming requests, short and long prompts;
- some agents send a stable system prompt marked with `cache_control`, so the upstream
  reports cache writes and then cache reads;
- some agents are bursty: a handful of requests at once, then a pause;
- a 429 is honoured by sleeping its Retry-After (capped), a 503 by a short pause.

With `realtime=N`, N more agents hold Realtime API sessions (a WebSocket to
`/v1/realtime` through the proxy, trio-websocket): a few turns of
`conversation.item.create` + `response.create`, each read to its `response.done`, then a
clean close (1000) and a new session after a pause. A refused handshake is honoured as
an HTTP answer would be.

Concurrency is bounded by one `trio.CapacityLimiter` across the pool; the pool stops
through cancellation only (`AgentPool.run` never returns by itself).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

__all__ = [
    "PROFILES",
    "AgentPool",
    "AgentProfile",
    "AgentStats",
    "Target",
    "build_request",
    "realtime_url",
    "retry_after_seconds",
]

log = logging.getLogger("zai_proxy.sim.agents")

_WORDS = (
    "agent tool call file diff patch test build deploy review refactor module function "
    "class error trace log metric query index cache token stream window limit proxy"
).split()
_MODELS = ("glm-4.6", "glm-4.5", "glm-4.5-air")
RETRY_AFTER_CAP = 10.0
REALTIME_MODEL = "glm-realtime"


@dataclass(frozen=True, slots=True)
class Target:
    """Where an agent may send: a proxy base URL (ending before /v1/messages)."""

    name: str
    url: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class AgentProfile:
    name: str
    stream_share: float
    long_share: float
    cached_system: bool
    bursty: bool
    think: tuple[float, float]


PROFILES: tuple[AgentProfile, ...] = (
    AgentProfile("chat", 0.8, 0.1, False, False, (0.3, 1.5)),
    AgentProfile("coder", 0.6, 0.5, True, False, (0.2, 1.0)),
    AgentProfile("batch", 0.1, 0.3, True, True, (2.0, 5.0)),
    AgentProfile("reviewer", 0.3, 0.8, True, False, (0.5, 2.0)),
    AgentProfile("pinger", 0.0, 0.0, False, True, (1.0, 3.0)),
)


@dataclass
class AgentStats:
    """What the pool did, for tests and the demo's goodbye line."""

    sent: int = 0
    ok: int = 0
    rate_limited: int = 0
    overloaded: int = 0
    failed: int = 0
    by_target: Counter[str] = field(default_factory=Counter)
    realtime_sessions: int = 0
    """Realtime sessions attempted (each also counted in `by_target`)."""
    realtime_opened: int = 0
    realtime_responses: int = 0


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def _system_prompt(agent: int) -> str:
    # Stable per agent, long enough to be worth caching.
    rng = random.Random(agent)
    return f"You are agent {agent}. " + _words(rng, 400)


def build_request(rng: random.Random, profile: AgentProfile, agent: int = 0) -> dict[str, Any]:
    """One Messages API body for `profile` (pure apart from `rng`)."""
    long = rng.random() < profile.long_share
    prompt = _words(rng, rng.randint(600, 1500) if long else rng.randint(5, 40))
    body: dict[str, Any] = {
        "model": rng.choice(_MODELS),
        "max_tokens": rng.choice((64, 256, 1024)),
        "messages": [{"role": "user", "content": prompt}],
        "stream": rng.random() < profile.stream_share,
    }
    if profile.cached_system:
        body["system"] = [
            {
                "type": "text",
                "text": _system_prompt(agent),
                "cache_control": {"type": "ephemeral"},
            }
        ]
    return body


def realtime_url(base: str) -> str:
    """The Realtime endpoint under a proxy base URL, as a ws:// (or wss://) URL."""
    scheme, sep, rest = base.rstrip("/").partition("://")
    ws = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    return f"{ws}{sep}{rest}/v1/realtime?model={REALTIME_MODEL}"


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """Seconds to wait for a Retry-After header (delta-seconds only), capped."""
    if value is None:
        return default
    try:
        seconds = float(value.strip())
    except ValueError:
        return default
    if seconds != seconds or seconds < 0:  # NaN or negative
        return default
    return min(seconds, RETRY_AFTER_CAP)


class AgentPool:
    """`agents` agents over `targets`; at most `concurrency` requests in flight."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        agents: int = 12,
        concurrency: int | None = None,
        seed: int = 0,
        api_key: str = "sk-demo-agent",
        timeout: float = 60.0,
        realtime: int = 0,
    ) -> None:
        if not targets or any(t.weight < 0 for t in targets) or sum(t.weight for t in targets) <= 0:
            raise ValueError("targets need a positive total weight")
        if agents < 0 or realtime < 0:
            raise ValueError("agents and realtime must be >= 0")
        self.targets = tuple(targets)
        self.agents = agents
        self.concurrency = concurrency or max(1, agents)
        self.seed = seed
        self.api_key = api_key
        self.timeout = timeout
        self.realtime = realtime
        self.stats = AgentStats()
        self._limit = trio.CapacityLimiter(self.concurrency)

    def pick(self, rng: random.Random) -> Target:
        return rng.choices(self.targets, weights=[t.weight for t in self.targets])[0]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every agent until cancelled."""
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout, connect=5.0),
            limits=httpx.Limits(
                max_connections=self.concurrency * 2,
                max_keepalive_connections=self.concurrency,
            ),
            trust_env=False,
        ) as client:
            async with trio.open_nursery() as nursery:
                for index in range(self.agents):
                    profile = PROFILES[index % len(PROFILES)]
                    nursery.start_soon(self._agent, client, index, profile)
                for index in range(self.realtime):
                    nursery.start_soon(self._realtime_agent, index)
                task_status.started()

    async def _agent(self, client: httpx.AsyncClient, index: int, profile: AgentProfile) -> None:
        rng = random.Random(self.seed * 1000 + index)
        # Spread the start so the first second is not one big burst.
        await trio.sleep(rng.uniform(0, 1.0))
        while True:
            if profile.bursty:
                async with trio.open_nursery() as burst:
                    for _ in range(rng.randint(3, 8)):
                        burst.start_soon(self._one, client, rng, index, profile)
                pause = rng.uniform(*profile.think)
            else:
                pause = await self._one(client, rng, index, profile)
                pause = max(pause, rng.uniform(*profile.think))
            await trio.sleep(pause)

    async def _one(
        self,
        client: httpx.AsyncClient,
        rng: random.Random,
        index: int,
        profile: AgentProfile,
    ) -> float:
        """Send one request; return how long to back off before the next (0: none)."""
        target = self.pick(rng)
        body = build_request(rng, profile, index)
        headers = {
            "x-api-key": self.api_key,
            "anthropic-version": "2023-06-01",
            "user-agent": f"zai-proxy-demo-agent/{profile.name}-{index}",
        }
        url = target.url.rstrip("/") + "/v1/messages"
        async with self._limit:
            self.stats.sent += 1
            self.stats.by_target[target.name] += 1
            try:
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    async for _ in response.aiter_bytes():
                        pass
                    status = response.status_code
                    retry_after = response.headers.get("retry-after")
            except httpx.HTTPError as exc:
                self.stats.failed += 1
                log.debug("agent request failed", extra={"agent": index, "error": repr(exc)})
                return 0.5
        if status == 429:
            self.stats.rate_limited += 1
            return retry_after_seconds(retry_after)
        if status == 503:
            self.stats.overloaded += 1
            return rng.uniform(0.3, 1.0)
        if status >= 400:
            self.stats.failed += 1
            return 0.5
        self.stats.ok += 1
        return 0.0

    async def _realtime_agent(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + 500 + index)
        await trio.sleep(rng.uniform(0, 1.0))
        while True:
            pause = await self._realtime_session(rng, index)
            await trio.sleep(pause)

    async def _realtime_session(self, rng: random.Random, index: int) -> float:
        """One session of a few turns; return how long to wait before the next."""
        target = self.pick(rng)
        self.stats.realtime_sessions += 1
        self.stats.by_target[target.name] += 1
        headers = [
            (b"authorization", f"Bearer {self.api_key}".encode()),
            (b"user-agent", f"zai-proxy-demo-agent/realtime-{index}".encode()),
        ]
        try:
            async with open_websocket_url(
                realtime_url(target.url),
                subprotocols=["realtime"],
                extra_headers=headers,
                connect_timeout=self.timeout,
                disconnect_timeout=5.0,
            ) as ws:
                self.stats.realtime_opened += 1
                for _ in range(rng.randint(3, 8)):
                    with trio.fail_after(self.timeout):
                        await self._realtime_turn(ws, rng)
                    self.stats.realtime_responses += 1
                    await trio.sleep(rng.uniform(0.5, 2.0))
        except ConnectionRejected as refused:
            retry_after = next(
                (v.decode("latin-1") for k, v in refused.headers if k.lower() == b"retry-after"),
                None,
            )
            if refused.status_code == 429:
                self.stats.rate_limited += 1
                return retry_after_seconds(retry_after)
            if refused.status_code == 503:
                self.stats.overloaded += 1
                return rng.uniform(0.3, 1.0)
            self.stats.failed += 1
            return 1.0
        except (HandshakeError, ConnectionClosed, trio.TooSlowError, OSError) as exc:
            self.stats.failed += 1
            log.debug("realtime session failed", extra={"agent": index, "error": repr(exc)})
            return 1.0
        return rng.uniform(0.5, 2.0)

    async def _realtime_turn(self, ws: WebSocketConnection, rng: random.Random) -> None:
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": _words(rng, rng.randint(5, 60))}],
        }
        await ws.send_message(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send_message(json.dumps({"type": "response.create"}))
        while True:
            message = await ws.get_message()
            if isinstance(message, str) and '"response.done"' in message:
                return
