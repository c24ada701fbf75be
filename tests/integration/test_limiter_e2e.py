"""The adaptive limiter inside the real proxy, against the simulator's hidden limit.

Everything runs on trio's MockClock (autojump): proxy, simulator and agents share
virtual time, so minutes of traffic take a second and every wait is exact.
"""

from __future__ import annotations

import math
from functools import partial

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import StartProxy, StartUpstream
from zai_proxy.sim.upstream import Fault, SimUpstream

MESSAGE = {"model": "glm-4.6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


async def agents(url: str, count: int, until: float, statuses: dict[int, int]) -> None:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def agent() -> None:
            while trio.current_time() < until:
                response = await client.post(url + "/v1/messages", json=MESSAGE)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 429:
                    await trio.sleep(float(response.headers.get("retry-after", "1")))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(agent)


async def test_limiter_learns_the_hidden_limit_and_reset_forgets_it(
    autojump_clock: trio.testing.MockClock,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
) -> None:
    upstream = await start_upstream(hidden_limit=20.0, hidden_limit_burst=20.0, latency=0.5)
    proxy = await start_proxy(
        upstream,
        RATE_LIMIT_INITIAL="40",
        RATE_LIMIT_MAX="100",
        RATE_LIMIT_WINDOW="10s",
        RATE_LIMIT_PROBE_INTERVAL="1",
        MAX_WORKERS="200",
        RETRY_BACKOFF_BASE="1s",
    )
    limiter = proxy.running.app.limiter
    statuses: dict[int, int] = {}
    start = trio.current_time()
    await agents(proxy.url, 60, start + 240, statuses)
    await proxy.settled()

    # It found the limit: the ceiling estimate sits near 20/s and the rate at or just
    # under it, after starting at 40.
    assert limiter.ceiling is not None and 17 <= limiter.ceiling <= 23, limiter.ceiling
    assert 15 <= limiter.rate <= 23, limiter.rate
    assert proxy.sample("zai_proxy_rate_limit_adjustments_total", direction="decrease")
    assert proxy.sample("zai_proxy_rate_limit_requests_per_second") == limiter.rate
    # Most answers reached the agents as successes; 429s to the upstream stayed few.
    answered = sum(upstream.status_counts.values())
    assert upstream.rate_limited / answered < 0.1, (upstream.rate_limited, answered)
    assert statuses.get(200, 0) > 0.9 * sum(statuses.values())

    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(proxy.origin + "/admin/reset-rate-limit")
    assert response.json() == {"status": "reset", "rate_limit_rps": 40.0, "ceiling": None}
    assert limiter.rate == 40.0 and limiter.ceiling is None


async def test_limiter_probes_up_to_a_hidden_limit_that_rises(
    autojump_clock: trio.testing.MockClock,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
) -> None:
    # The hidden limit is 5/s for 32 s, then 10/s. Only adjust(), at window ends, can
    # start a probe or let a clean probe raise the rate: mid-window decisions only lower
    # it. So the rate gets near the new limit only through the window loop. A probe at
    # 5.4/s passes once it has outlasted the upstream's burst (15 s: 5.4 x 15 / 16 > 5),
    # a search follows, then a throttled stretch measures the new limit.
    low, high, rise, end = 5.0, 10.0, 32.0, 75.0
    start = trio.current_time()
    upstream = await start_upstream(
        limit_schedule=((rise, low), (3600.0, high)),
        hidden_limit=low,
        hidden_limit_burst=low,
        latency=0.5,
    )
    proxy = await start_proxy(
        upstream,
        RATE_LIMIT_INITIAL="8",
        RATE_LIMIT_MAX="100",
        RATE_LIMIT_WINDOW="5s",
        RATE_LIMIT_PROBE_INTERVAL="1",
        MAX_WORKERS="200",
        RETRY_BACKOFF_BASE="1s",
        TOKEN_COUNTING_ENABLED="false",
    )
    limiter = proxy.running.app.limiter

    def adjustments() -> dict[str, float]:
        name = "zai_proxy_rate_limit_adjustments_total"
        return {d: proxy.sample(name, direction=d) or 0.0 for d in ("probe", "increase")}

    at_rise: dict[str, float] = {}
    ceiling_at_rise: list[float | None] = []

    async def note_the_rise() -> None:
        await trio.sleep_until(start + rise)
        at_rise.update(adjustments())
        ceiling_at_rise.append(limiter.ceiling)

    statuses: dict[int, int] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(note_the_rise)
        nursery.start_soon(agents, proxy.url, 30, start + end, statuses)
    await proxy.settled()

    # Before the rise it had learnt the old limit.
    assert ceiling_at_rise == [pytest.approx(low, rel=0.1)]
    # After it, a probe above that ceiling passed and the rate went up (counted, not just
    # the zeros the series start with), then probes went on.
    after = adjustments()
    assert after["probe"] > at_rise["probe"], (at_rise, after)
    assert after["increase"] > at_rise["increase"], (at_rise, after)
    # It ends at the new limit: the ceiling measured there, the rate at its hold point
    # (or in a probe just above the ceiling, if the run ends inside one).
    assert limiter.ceiling == pytest.approx(high, rel=0.05)
    assert 0.9 * high <= limiter.rate <= 1.1 * high, limiter.rate


async def test_wait_past_max_wait_gets_429_with_retry_after(
    autojump_clock: trio.testing.MockClock, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(
        RATE_LIMIT_INITIAL="1", RATE_LIMIT_MIN="1", RATE_LIMIT_MAX="1", RATE_LIMIT_MAX_WAIT="2s"
    )
    results: list[tuple[float, int, str | None, str | None]] = []
    start = trio.current_time()

    async def send(client: httpx.AsyncClient) -> None:
        response = await client.post(proxy.url + "/v1/messages", json=MESSAGE)
        error = (
            response.json().get("error", {}).get("type") if response.status_code != 200 else None
        )
        results.append(
            (
                trio.current_time() - start,
                response.status_code,
                response.headers.get("retry-after"),
                error,
            )
        )

    async with httpx.AsyncClient(timeout=60) as client, trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(partial(send, client))
    results.sort()
    # One token a second, waits of at most 2 s: three go (at 0, 1 and 2 s), two are
    # turned away at once with the wait they would have had (3 s), rounded up.
    assert [(t, s) for t, s, _, _ in results] == [
        (0.0, 200),
        (0.0, 429),
        (0.0, 429),
        (1.0, 200),
        (2.0, 200),
    ]
    rejected = [r for r in results if r[1] == 429]
    assert all(r[2] == "3" and r[3] == "rate_limit_error" for r in rejected)
    await proxy.settled()
    assert proxy.sample("zai_proxy_rate_limit_rejections_total", reason="rate_limit") == 2
    assert proxy.sample("zai_proxy_rate_limit_wait_seconds_count") == 3
    assert proxy.sample("zai_proxy_rate_limit_wait_seconds_sum") == math.fsum([0, 1, 2])


async def test_a_retry_waits_for_its_own_limiter_turn(
    autojump_clock: trio.testing.MockClock, start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(
        RATE_LIMIT_INITIAL="1",
        RATE_LIMIT_MIN="1",
        RATE_LIMIT_MAX="1",
        RETRY_BACKOFF_BASE="250ms",
    )
    upstream.script(Fault.status(429))
    start = trio.current_time()
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(proxy.url + "/v1/messages", json=MESSAGE)
    await proxy.settled()
    assert response.status_code == 200
    # The first attempt took the one token at 0 s. The retry, due after 0.25 s of
    # backoff, waited another 0.75 s for the next token, which came at 1 s.
    assert [r.received_at - start for r in upstream.records] == [0.0, 1.0]
    assert proxy.sample("zai_proxy_rate_limit_wait_seconds_count") == 2
    assert proxy.sample("zai_proxy_rate_limit_wait_seconds_sum") == 0.75
