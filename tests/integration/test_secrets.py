"""The upstream key never appears in anything the proxy produces."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio

from tests.conftest import UPSTREAM_KEY, StartProxy, StartUpstream
from zai_proxy.logs import JsonFormatter
from zai_proxy.settings import ProxySettings
from zai_proxy.sim.upstream import Fault

MESSAGE = {"model": "glm-4.6", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


async def test_key_appears_in_no_log_line_metric_header_or_body(
    start_upstream: StartUpstream, start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(upstream, MAX_BODY_BYTES="100000", LOG_LEVEL="debug")
    produced: list[str] = []
    upstream.script(
        Fault.status(422),
        *[Fault.status(429)] * 4,
        *[Fault.truncated_json()] * 4,
        Fault.die_mid_stream(after=2),
        Fault.error_mid_stream(after=2),
        Fault.reset(),
        Fault.status(500),
    )
    with caplog.at_level(logging.DEBUG):
        async with httpx.AsyncClient(timeout=10) as client:
            calls = [
                ("POST", "/v1/messages", MESSAGE),  # 422, logged with bodies
                ("POST", "/v1/messages", MESSAGE),  # 429 x4, passed on
                ("POST", "/v1/messages", MESSAGE),  # truncated x4: 502
                ("POST", "/v1/messages", {**MESSAGE, "stream": True}),  # dies mid-stream
                ("POST", "/v1/messages", {**MESSAGE, "stream": True}),  # error event
                ("POST", "/v1/messages", MESSAGE),  # reset, then fine
                ("POST", "/v1/messages", MESSAGE),  # 500 passed through
                (
                    "POST",
                    "/v1/chat/completions",
                    {"model": "m", "messages": [], "pad": "x" * 200000},
                ),
                ("POST", "/../escape", MESSAGE),
                ("GET", "/v1/models", None),
            ]
            for method, path, body in calls:
                response = await client.request(method, proxy.url + path, json=body)
                produced.append(repr(response.headers.raw))
                produced.append(response.text)
            for path in ("/metrics", "/health", "/healthz"):
                response = await client.get(proxy.origin + path)
                produced.append(repr(response.headers.raw) + response.text)
            response = await client.post(proxy.origin + "/admin/reset-rate-limit")
            produced.append(repr(response.headers.raw) + response.text)
        with trio.fail_after(5):
            await upstream.wait_for(lambda s: s.requests_in_flight == 0)
    # Formatted without the redacting safety net, so a leak can't be hidden by it.
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert any("422" in line for line in lines), "the 422 bodies should have been logged"
    assert len(lines) >= 10
    for text in lines + produced:
        assert UPSTREAM_KEY not in text
    # ... and the upstream did get it, on every request.
    assert all(r.header("authorization") == f"Bearer {UPSTREAM_KEY}" for r in upstream.records)


def test_key_is_not_in_the_settings_repr() -> None:
    settings = ProxySettings.from_env({"ZAI_API_KEY": UPSTREAM_KEY, "ADMIN_TOKEN": "adm1n"})
    assert UPSTREAM_KEY not in repr(settings) and "adm1n" not in repr(settings)


def test_redacting_formatter_scrubs_a_key_that_slipped_into_a_message() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "oops %s", (UPSTREAM_KEY,), None)
    line = JsonFormatter([UPSTREAM_KEY]).format(record)
    assert UPSTREAM_KEY not in line and "[REDACTED]" in line
