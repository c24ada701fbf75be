"""`zai-proxy demo`'s realtime agent: a WebSocket session through the proxies, counted."""

from __future__ import annotations

import pytest

from tests.integration.test_demo_replicas import client, demo, sample, until


async def test_the_demos_realtime_agent_holds_sessions_whose_usage_is_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = ("--fault-rate", "0")
    async with demo(capsys, *flags, agents=2, duration=5) as running, client() as http:

        async def total(name: str, **labels: str) -> float:
            values = [await sample(http, url, name, **labels) for url in running.proxies]
            return sum(v or 0.0 for v in values)

        async def answered() -> bool:
            output = await total("zai_proxy_tokens_total", direction="output", model="glm-realtime")
            return output > 0

        await until(answered, 4, "a realtime response's tokens on a proxy")
        assert await total("zai_proxy_websocket_messages_total", direction="upstream") >= 2
        assert await total("zai_proxy_requests_total", status_code="101") >= 1
