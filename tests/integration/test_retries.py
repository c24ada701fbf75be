"""The retry table: what is retried, how long between attempts, what the client gets.

Timing tests run on trio's MockClock (autojump): the proxy, the simulated upstream and
the client all share virtual time, so the gaps between attempts are exact.
"""

from __future__ import annotations

import email.utils
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import trio

from tests.conftest import ProxyHandle, StartProxy, StartUpstream
from zai_proxy.sim.upstream import Fault, SimUpstream

MESSAGE = {"model": "glm-4.6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**MESSAGE, "stream": True}


async def post(proxy: ProxyHandle, body: object = MESSAGE) -> httpx.Response:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60)) as client:
        return await client.post(proxy.url + "/v1/messages", json=body)


def attempt_times(upstream: SimUpstream, count: int) -> list[float]:
    records = list(upstream.records)[-count:]
    pairs = zip(records, records[1:], strict=False)
    return [round(b.received_at - a.received_at, 6) for a, b in pairs]


def counter(proxy: ProxyHandle, name: str, **labels: str) -> float:
    return proxy.sample(name, **labels) or 0.0


@pytest.mark.parametrize(
    "fault, reason",
    [
        (Fault.status(429), "429"),
        (Fault.empty_body(), "truncated_response"),
        (Fault.truncated_json(), "truncated_response"),
        (Fault.reset(), "network_error"),
    ],
)
async def test_retryable_failure_is_retried_then_succeeds(
    proxy: ProxyHandle, upstream: SimUpstream, fault: Fault, reason: str
) -> None:
    upstream.script(fault)
    response = await post(proxy)
    await proxy.settled()
    assert response.status_code == 200
    assert response.json()["type"] == "message"
    assert upstream.total_requests == 2
    assert counter(proxy, "zai_proxy_retry_attempts_total", reason=reason) == 1
    assert counter(proxy, "zai_proxy_retry_attempts_total", reason="retry") == 1


async def test_stream_closing_before_its_first_byte_is_retried(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.empty_stream())
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", proxy.url + "/v1/messages", json=STREAM) as response:
            body = await response.aread()
    await proxy.settled()
    assert response.status_code == 200
    assert b"event: message_stop" in body
    assert upstream.total_requests == 2
    assert counter(proxy, "zai_proxy_retry_attempts_total", reason="empty_streaming") == 1


async def test_backoff_doubles_from_the_base(
    autojump_clock: trio.testing.MockClock, start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(RETRY_BACKOFF_BASE="1s")
    upstream.script(Fault.status(429), Fault.status(429), Fault.status(429))
    response = await post(proxy)
    assert response.status_code == 200
    assert attempt_times(upstream, 4) == [1.0, 2.0, 4.0]


async def test_retry_after_is_honoured_on_every_attempt(
    autojump_clock: trio.testing.MockClock, start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    # LiteLLM #20722: Retry-After ignored from the second retry on.
    proxy = await start_proxy(RETRY_BACKOFF_BASE="1s")
    upstream.script(
        Fault.status(429, retry_after=7),
        Fault.status(429, retry_after=3),
        Fault.status(429, retry_after=5),
    )
    response = await post(proxy)
    assert response.status_code == 200
    assert attempt_times(upstream, 4) == [7.0, 3.0, 5.0]


async def test_retry_after_as_http_date_is_honoured(
    autojump_clock: trio.testing.MockClock, start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(RETRY_BACKOFF_BASE="1s")
    # The date's whole seconds are honoured from the moment the answer arrived; allow the
    # sub-second part of the wall clock.
    when = datetime.now(UTC) + timedelta(seconds=10)
    upstream.script(Fault.status(429, retry_after=email.utils.format_datetime(when, usegmt=True)))
    response = await post(proxy)
    assert response.status_code == 200
    (gap,) = attempt_times(upstream, 2)
    assert 8.9 <= gap <= 10.0


async def test_retry_after_is_capped(
    autojump_clock: trio.testing.MockClock, start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(RETRY_AFTER_CAP="20s")
    upstream.script(Fault.status(429, retry_after=3600))
    response = await post(proxy)
    assert response.status_code == 200
    assert attempt_times(upstream, 2) == [20.0]


async def test_final_429_reaches_the_client_with_retry_after(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    # LiteLLM #27823: a 429 without Retry-After leaves clients guessing.
    upstream.script(*[Fault.status(429)] * 4)
    response = await post(proxy)
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert int(response.headers["retry-after"]) >= 1
    assert upstream.total_requests == 4


async def test_final_429_keeps_the_upstreams_retry_after(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(*[Fault.status(429, retry_after=0)] * 3, Fault.status(429, retry_after=42))
    response = await post(proxy)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "42"


async def test_persistently_truncated_answers_end_in_502(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(*[Fault.truncated_json()] * 4)
    response = await post(proxy)
    await proxy.settled()
    assert response.status_code == 502
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "api_error"
    assert upstream.total_requests == 4
    assert counter(proxy, "zai_proxy_upstream_errors_total", error_type="truncated_response") == 4


async def test_unreachable_upstream_ends_in_502(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # A port nothing listens on: take one, then close it.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    upstream = await start_upstream()
    proxy = await start_proxy(upstream, ZAI_TARGET_URL=f"http://127.0.0.1:{port}/api/anthropic")
    response = await post(proxy)
    await proxy.settled()
    assert response.status_code == 502
    assert counter(proxy, "zai_proxy_upstream_errors_total", error_type="upstream_connection") == 4


async def test_upstream_timeout_gives_504_without_retry(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(UPSTREAM_READ_TIMEOUT="200ms")
    upstream.script(Fault.hang())
    response = await post(proxy)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"
    assert upstream.total_requests == 1


async def test_422_is_passed_through_once_and_both_bodies_logged(
    proxy: ProxyHandle, upstream: SimUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.script(Fault.status(422))
    with caplog.at_level(logging.WARNING, logger="zai_proxy.proxy"):
        response = await post(proxy)
        await proxy.settled()
    assert response.status_code == 422
    assert upstream.total_requests == 1
    (record,) = [r for r in caplog.records if "422" in r.getMessage()]
    assert '"Say' not in record.__dict__["request_body"]  # the request we sent, verbatim:
    assert '"content":"hi"' in record.__dict__["request_body"].replace(" ", "")
    assert "error" in record.__dict__["response_body"]
    assert counter(proxy, "zai_proxy_upstream_errors_total", error_type="422") == 1


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503, 529])
async def test_other_statuses_pass_through_without_retry(
    proxy: ProxyHandle, upstream: SimUpstream, status: int
) -> None:
    upstream.script(Fault.status(status))
    response = await post(proxy)
    assert response.status_code == status
    assert response.json()["type"] == "error"
    assert upstream.total_requests == 1


BATCH = {"requests": [{"custom_id": "a", "params": MESSAGE}]}


@pytest.mark.parametrize("fault", [Fault.reset(), Fault.truncated_json(), Fault.empty_body()])
async def test_a_request_that_is_not_safe_to_repeat_is_sent_once(
    proxy: ProxyHandle, upstream: SimUpstream, fault: Fault
) -> None:
    # The upstream read the whole batch before failing: it may have created it, so a
    # second attempt could create it twice.  The client gets a 502 that says so.
    upstream.script(fault)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(proxy.url + "/v1/messages/batches", json=BATCH)
    await proxy.settled()
    assert response.status_code == 502
    assert upstream.total_requests == 1
    assert counter(proxy, "zai_proxy_retry_attempts_total", reason="retry") == 0
    message = response.json()["error"]["message"]
    assert "could not reach" not in message


async def test_a_reset_after_the_request_went_out_says_the_upstream_closed_it(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.reset())
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(proxy.url + "/v1/messages/batches", json=BATCH)
    assert response.status_code == 502
    assert response.json()["error"]["message"].startswith("the upstream closed the connection")


async def test_a_request_that_is_not_safe_to_repeat_is_still_retried_after_a_429(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    # A 429 means the upstream refused it: nothing was done, so a retry is safe.
    upstream.script(Fault.status(429))
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(proxy.url + "/v1/messages/batches", json=BATCH)
    assert response.status_code == 200 and response.json()["type"] == "message_batch"
    assert upstream.total_requests == 2 and upstream.batches_created == 1


@pytest.mark.parametrize("code", [200, 202])
async def test_an_empty_answer_where_no_json_is_due_passes_through(
    proxy: ProxyHandle, upstream: SimUpstream, code: int
) -> None:
    upstream.script(Fault.no_body(code))
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(proxy.url + "/v1/messages/batches", json=BATCH)
    await proxy.settled()
    assert (response.status_code, response.content) == (code, b"")
    assert upstream.total_requests == 1


async def test_an_empty_answer_where_json_is_due_is_still_retried(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    upstream.script(Fault.no_body(200))
    response = await post(proxy)
    assert response.status_code == 200 and response.json()["type"] == "message"
    assert upstream.total_requests == 2


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "1e999"])
async def test_an_upstream_retry_after_that_is_not_a_delay_is_replaced_by_ours(
    proxy: ProxyHandle, upstream: SimUpstream, value: str
) -> None:
    upstream.script(*[Fault.status(429, retry_after=value)] * 4)
    response = await post(proxy)
    assert response.status_code == 429
    assert response.headers.get_list("retry-after") == [response.headers["retry-after"]]
    assert int(response.headers["retry-after"]) >= 1
