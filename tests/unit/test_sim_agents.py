"""The simulated agents: request bodies, Retry-After, and a short run against the simulator."""

from __future__ import annotations

import random

import pytest
import trio

from zai_proxy.sim.agents import PROFILES, AgentPool, Target, build_request, retry_after_seconds
from zai_proxy.sim.upstream import SimUpstream, UpstreamConfig


def test_requests_mix_streaming_lengths_and_cache_control() -> None:
    rng = random.Random(1)
    bodies = [build_request(rng, profile, i) for i in range(40) for profile in PROFILES]
    assert {b["stream"] for b in bodies} == {True, False}
    lengths = [len(b["messages"][0]["content"].split()) for b in bodies]
    assert min(lengths) < 50 < 500 < max(lengths)
    cached = [b for b in bodies if "system" in b]
    assert cached and all(b["system"][0]["cache_control"] == {"type": "ephemeral"} for b in cached)
    # The cached system prompt is stable per agent, so the upstream can read it back.
    again = build_request(random.Random(2), PROFILES[1], 3)
    assert again["system"] == build_request(random.Random(3), PROFILES[1], 3)["system"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 1.0), ("2", 2.0), ("0.5", 0.5), ("999", 10.0), ("soon", 1.0), ("-1", 1.0)],
)
def test_retry_after_seconds(value: str | None, expected: float) -> None:
    assert retry_after_seconds(value) == expected


def test_pool_rejects_bad_targets() -> None:
    with pytest.raises(ValueError):
        AgentPool([])
    with pytest.raises(ValueError):
        AgentPool([Target("a", "http://x", 0.0)])


async def test_pool_sends_to_every_target_and_honours_429() -> None:
    upstream = SimUpstream(UpstreamConfig(hidden_limit=3.0, hidden_limit_burst=1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        pool = AgentPool(
            [Target("a", upstream.url, 0.7), Target("b", upstream.url, 0.3)],
            agents=len(PROFILES) * 2,
            concurrency=6,
        )
        await nursery.start(pool.run)
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    stats = pool.stats
    assert stats.ok > 0
    assert stats.rate_limited > 0
    assert set(stats.by_target) == {"a", "b"}
    assert stats.sent >= stats.ok + stats.rate_limited + stats.overloaded
