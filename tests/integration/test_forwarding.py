"""Forwarding rules: paths, query, headers, body, own endpoints, limits, wire formats."""

from __future__ import annotations

import email.utils
import json
import logging
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio

from tests.conftest import UPSTREAM_KEY, ProxyHandle, StartProxy, StartUpstream
from zai_proxy.errors import RequestCreationError
from zai_proxy.logs import JsonFormatter
from zai_proxy.proxy import Downstream, Exchange, Outcome
from zai_proxy.sim.upstream import SimUpstream

MESSAGE = {
    "model": "glm-4.6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Say hello."}],
}


async def post(url: str, body: object, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, json=body, **kwargs)  # type: ignore[arg-type]


async def test_short_path_gets_the_target_base_path(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    response = await post(proxy.origin + "/v1/messages", MESSAGE)
    assert response.status_code == 200
    assert upstream.records[-1].target == "/api/anthropic/v1/messages"


async def test_full_path_keeps_the_base_path_once(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    response = await post(proxy.origin + "/api/anthropic/v1/messages", MESSAGE)
    assert response.status_code == 200
    assert upstream.records[-1].target == "/api/anthropic/v1/messages"


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/api%2Fanthropic/v1/models", "/api/anthropic/api%2Fanthropic/v1/models"),
        ("/api%2fanthropic/v1/models", "/api/anthropic/api%2fanthropic/v1/models"),
        ("/%61pi/anthropic/v1/models", "/api/anthropic/%61pi/anthropic/v1/models"),
    ],
)
async def test_a_path_that_only_decodes_to_the_base_path_gets_it_prepended(
    proxy: ProxyHandle, upstream: SimUpstream, path: str, target: str
) -> None:
    # What goes upstream must literally start with the base path: a router that does
    # not decode %2F would otherwise route it outside /api/anthropic/.
    async with httpx.AsyncClient(timeout=10) as client:
        await client.get(proxy.origin + path)
    assert upstream.records[-1].target == target


async def test_query_string_is_kept(proxy: ProxyHandle, upstream: SimUpstream) -> None:
    response = await post(proxy.url + "/v1/messages?beta=true&x=%2F1", MESSAGE)
    assert response.status_code == 200
    assert upstream.records[-1].target == "/api/anthropic/v1/messages?beta=true&x=%2F1"


async def test_any_method_is_forwarded(proxy: ProxyHandle, upstream: SimUpstream) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        got = await client.get(proxy.url + "/v1/models")
        deleted = await client.delete(proxy.url + "/v1/files/abc")
        put = await client.put(proxy.url + "/v1/things", content=b"x")
    assert got.status_code == 200 and got.json()["data"]
    # The simulator has no such routes: its own 404 must come back untouched.
    assert deleted.status_code == 404 and put.status_code == 404
    methods = [(r.method, r.target) for r in list(upstream.records)[-3:]]
    assert methods == [
        ("GET", "/api/anthropic/v1/models"),
        ("DELETE", "/api/anthropic/v1/files/abc"),
        ("PUT", "/api/anthropic/v1/things"),
    ]


async def test_a_head_answer_carries_the_upstreams_content_length(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        got = await client.get(proxy.url + "/v1/models")
        head = await client.head(proxy.url + "/v1/models")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert upstream.records[-1].method == "HEAD"


async def test_callers_credentials_are_replaced_by_the_key(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    response = await post(
        proxy.url + "/v1/messages",
        MESSAGE,
        headers={"Authorization": "Bearer agent-token", "x-api-key": "agent-key"},
    )
    assert response.status_code == 200
    record = upstream.records[-1]
    assert record.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert record.header("x-api-key") is None
    assert [name for name, _ in record.headers].count("authorization") == 1


async def test_end_to_end_headers_pass_and_hop_by_hop_headers_do_not(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    response = await post(
        proxy.url + "/v1/messages",
        MESSAGE,
        headers={
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "prompt-caching-2024-07-31",
            "user-agent": "claude-cli/2.0 (agent)",
            "x-custom": "kept",
            "connection": "keep-alive, x-drop-me",
            "x-drop-me": "named by Connection",
            "keep-alive": "timeout=5",
            "proxy-authorization": "Basic secret",
            "te": "trailers",
        },
    )
    assert response.status_code == 200
    record = upstream.records[-1]
    assert record.header("anthropic-version") == "2023-06-01"
    assert record.header("anthropic-beta") == "prompt-caching-2024-07-31"
    assert record.header("user-agent") == "claude-cli/2.0 (agent)"
    assert record.header("x-custom") == "kept"
    assert record.header("content-type") == "application/json"
    for dropped in ("x-drop-me", "keep-alive", "proxy-authorization", "te"):
        assert record.header(dropped) is None, dropped
    assert record.header("host") == f"127.0.0.1:{upstream.port}"


async def test_the_upstream_is_asked_only_for_codings_the_proxy_can_decode(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    response = await post(
        proxy.url + "/v1/messages", MESSAGE, headers={"accept-encoding": "br, zstd"}
    )
    assert response.status_code == 200 and response.json()["type"] == "message"
    assert upstream.records[-1].header("accept-encoding") == "gzip, deflate"


async def test_every_answer_carries_exactly_one_date(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    dated = await start_proxy(await start_upstream())
    undated = await start_proxy(await start_upstream(date_header=False))
    async with httpx.AsyncClient(timeout=10) as client:
        answers = {
            "upstream's date passed on": await client.post(
                dated.url + "/v1/messages", json=MESSAGE
            ),
            "date added when the upstream sent none": await client.post(
                undated.url + "/v1/messages", json=MESSAGE
            ),
            "the proxy's own error": await client.get(dated.url + "/v1/%2e%2e/%2e%2e/secret"),
            "the proxy's own endpoint": await client.get(dated.origin + "/healthz"),
        }
    assert answers["the proxy's own error"].status_code == 400
    for what, response in answers.items():
        dates = response.headers.get_list("date")
        assert len(dates) == 1, (what, dates)
        assert email.utils.parsedate_to_datetime(dates[0]).tzinfo is not None, what


async def test_upstream_cookies_are_never_sent_on_with_other_requests(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # One agent's upstream session must not ride along on every other agent's requests.
    upstream = await start_upstream(set_cookie="affinity=node-7; Path=/")
    proxy = await start_proxy(upstream)
    async with httpx.AsyncClient(timeout=10) as first, httpx.AsyncClient(timeout=10) as second:
        answered = await first.post(proxy.url + "/v1/messages", json=MESSAGE)
        await second.post(proxy.url + "/v1/messages", json=MESSAGE)
    # The caller still sees the upstream's answer as it was.
    assert answered.headers["set-cookie"] == "affinity=node-7; Path=/"
    assert [record.header("cookie") for record in list(upstream.records)[-2:]] == [None, None]


async def test_body_is_forwarded_byte_for_byte(proxy: ProxyHandle, upstream: SimUpstream) -> None:
    # Odd spacing, key order, unicode escapes and fields the proxy knows nothing about
    # (thinking, cache_control, system arrays) must arrive exactly as sent.
    body = (
        b'{"model":"glm-4.6",  "max_tokens":32,"thinking":{"type":"enabled","budget_tokens":1024},'
        b'"system":[{"type":"text","text":"Be \\u00e9l\\u00e9gant.",'
        b'"cache_control":{"type":"ephemeral"}}],'
        b'"messages":[{"role":"user","content":"hi"}]}'
    )
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            proxy.url + "/v1/messages", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 200
    assert upstream.records[-1].body == body


async def test_a_chunked_request_reaches_the_upstream_with_content_length_only(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    body = json.dumps(MESSAGE).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body[:10]
        yield body[10:]

    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            proxy.url + "/v1/messages",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 200
    record = upstream.records[-1]
    assert record.body == body
    assert record.header("content-length") == str(len(body))
    assert record.header("transfer-encoding") is None


@pytest.mark.parametrize(
    "path",
    ["/v1/files/a%2Fb%20c", "/v1/files/%C3%A9t%C3%A9", "/v1/files/a%3Fb%23c", "/v1/files/a+b"],
)
async def test_a_percent_encoded_path_reaches_the_upstream_unchanged(
    proxy: ProxyHandle, upstream: SimUpstream, path: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(proxy.url + path)
    # The simulator has no /v1/files: its own 404 is passed on.
    assert response.status_code == 404
    assert upstream.records[-1].target == "/api/anthropic" + path


async def test_response_carries_request_id_and_input_tokens(proxy: ProxyHandle) -> None:
    response = await post(proxy.url + "/v1/messages", MESSAGE)
    assert response.status_code == 200
    usage = response.json()["usage"]
    assert response.headers["x-token-input"] == str(usage["input_tokens"])
    assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    "path",
    [
        "/../secret",
        "/api/anthropic/../../etc/passwd",
        "/v1/%2e%2e/%2e%2e/admin",
        "/v1/%252e%252e/admin",
        "/v1/..%2fadmin",
        "/v1/.%2E/admin",
        "/v1/%5c..%5cadmin",
        "//evil.example/v1/messages",
        "/v1//messages",
        "/v1/./messages",
    ],
)
async def test_path_that_could_escape_the_base_is_refused(
    proxy: ProxyHandle, upstream: SimUpstream, path: str
) -> None:
    before = upstream.total_requests
    async with trio.open_nursery():
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.running.port)
        request = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ).encode()
        await stream.send_all(request)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
        await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert upstream.total_requests == before


@pytest.mark.parametrize("target", ["/v1/models#fragment", "/v1/models?a=1#b"])
async def test_a_hash_in_the_request_target_is_400_not_500(
    proxy: ProxyHandle, upstream: SimUpstream, caplog: pytest.LogCaptureFixture, target: str
) -> None:
    before = upstream.total_requests
    with caplog.at_level(logging.INFO):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.running.port)
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
        await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    answer = json.loads(body)
    assert answer["error"]["type"] == "invalid_request_error"
    assert "'#'" in answer["error"]["message"]
    assert upstream.total_requests == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_absolute_uri_request_target_is_refused(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    before = upstream.total_requests
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.running.port)
    await stream.send_all(
        b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: evil.example\r\n"
        b"Connection: close\r\n\r\n"
    )
    data = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            data += chunk
    await stream.aclose()
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert upstream.total_requests == before


async def test_oversized_body_gets_413_without_contacting_upstream(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(MAX_BODY_BYTES="1000")
    before = upstream.total_requests
    big = {"model": "glm-4.6", "messages": [{"role": "user", "content": "x" * 2000}]}
    declared = await post(proxy.url + "/v1/messages", big)

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(5):
            yield b"x" * 400

    async with httpx.AsyncClient(timeout=10) as client:
        chunked = await client.post(proxy.url + "/v1/messages", content=chunks())
    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "request_too_large"
    assert upstream.total_requests == before


async def test_openai_style_paths_get_openai_shaped_errors(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(MAX_BODY_BYTES="10")
    response = await post(proxy.url + "/v1/chat/completions", {"model": "m", "messages": []})
    assert response.status_code == 413
    error = response.json()["error"]
    assert set(error) >= {"message", "type"} and "type" not in response.json()


async def test_health_endpoints_answer_from_the_proxy(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    before = upstream.total_requests
    async with httpx.AsyncClient(timeout=10) as client:
        for path in ("/health", "/healthz"):
            response = await client.get(proxy.origin + path)
            assert response.status_code == 200
            body = response.json()
            assert body["status"] == "ok" and body["variant"] == "production"
            assert body["version"]
    assert upstream.total_requests == before


async def test_admin_reset_needs_the_token_when_one_is_set(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(ADMIN_TOKEN="let-me-in")
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(proxy.origin + "/admin/reset-rate-limit")
        wrong = await client.post(
            proxy.origin + "/admin/reset-rate-limit", headers={"Authorization": "Bearer nope"}
        )
        wrong_scheme = await client.post(
            proxy.origin + "/admin/reset-rate-limit", headers={"Authorization": "Basic let-me-in"}
        )
        allowed = [
            await client.post(
                proxy.origin + "/admin/reset-rate-limit", headers={"Authorization": value}
            )
            for value in ("Bearer let-me-in", "bearer let-me-in", "BEARER  let-me-in")
        ]
    assert [r.status_code for r in (refused, wrong, wrong_scheme)] == [401, 401, 401]
    assert refused.json()["error"]["type"] == "authentication_error"
    assert [(r.status_code, r.json()["status"]) for r in allowed] == [(200, "reset")] * 3


async def test_admin_reset_is_open_without_a_token(proxy: ProxyHandle) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(proxy.origin + "/admin/reset-rate-limit")
    assert response.status_code == 200


async def test_full_proxy_answers_503_at_once(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    proxy = await start_proxy(MAX_WORKERS="2")
    upstream.script("hang", "hang")
    async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(partial(client.post, proxy.url + "/v1/messages", json=MESSAGE))
        with trio.fail_after(5):
            await upstream.wait_for(lambda s: s.requests_in_flight >= 2)
        started = trio.current_time()
        response = await client.post(proxy.url + "/v1/messages", json=MESSAGE)
        elapsed = trio.current_time() - started
        # The gauges are read at scrape time: both slots busy, right now.
        assert proxy.sample("zai_proxy_concurrent_requests") == 2
        assert proxy.sample("zai_proxy_worker_utilization_ratio") == 1.0
        nursery.cancel_scope.cancel()
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "overloaded_error"
    assert response.headers["retry-after"] == "1"
    assert elapsed < 1.0
    assert proxy.sample("zai_proxy_rate_limit_rejections_total", reason="capacity") == 1
    assert proxy.sample("zai_proxy_rate_limit_rejections_total", reason="rate_limit") == 0
    await proxy.settled()
    assert proxy.sample("zai_proxy_concurrent_requests") == 0
    assert proxy.sample("zai_proxy_worker_utilization_ratio") == 0.0


async def test_a_large_upload_at_capacity_gets_the_503_not_a_broken_pipe(
    start_proxy: StartProxy, upstream: SimUpstream
) -> None:
    # An upload that takes a while (4 MB in 256 KiB pieces, as over a slower link):
    # answering and closing before it is all in makes the kernel reset the connection,
    # and the client sees a broken pipe instead of a 503 it can act on.
    proxy = await start_proxy(MAX_WORKERS="1")
    upstream.script("hang")
    body = json.dumps({**MESSAGE, "system": "x" * (4 * 1024 * 1024)}).encode()
    async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, proxy.url + "/v1/messages", json=MESSAGE))
        with trio.fail_after(5):
            await upstream.wait_for(lambda s: s.requests_in_flight >= 1)
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.running.port)
        with trio.fail_after(10):
            await stream.send_all(
                b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            piece = 256 * 1024
            for start in range(0, len(body), piece):
                await stream.send_all(body[start : start + piece])
                await trio.sleep(0.01)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some()
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:80]


async def test_a_request_that_cannot_be_built_is_400_request_creation(
    proxy: ProxyHandle, upstream: SimUpstream
) -> None:
    # h11 keeps such a header out on the way in, so the forwarder is given one directly:
    # the real client refuses to send it, and nothing reaches the upstream.
    forwarder = proxy.running.app.forwarder
    assert forwarder is not None
    before = len(upstream.records)
    exchange = Exchange(
        method="POST",
        url=httpx.URL(upstream.url + "/v1/messages"),
        headers=[(b"content-type", b"application/json"), (b"x-bad", b"line\r\nbreak")],
        body=json.dumps(MESSAGE).encode(),
        style="anthropic",
        request_id="req_bad",
    )
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    with pytest.raises(RequestCreationError) as raised:
        await forwarder.forward(exchange, Downstream(send), Outcome())
    assert raised.value.status == 400
    assert UPSTREAM_KEY not in str(raised.value)
    assert sent == [] and len(upstream.records) == before
    assert proxy.sample("zai_proxy_upstream_errors_total", error_type="request_creation") == 1
    assert proxy.sample("zai_proxy_retry_attempts_total", reason="retry") == 0


async def test_one_structured_log_line_per_request(
    proxy: ProxyHandle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="zai_proxy.access"):
        response = await post(
            proxy.url + "/v1/messages", MESSAGE, headers={"x-request-id": "trace-123"}
        )
        await proxy.settled()
    assert response.headers["x-request-id"] == "trace-123"
    (record,) = [r for r in caplog.records if r.name == "zai_proxy.access"]
    fields = record.__dict__
    assert fields["request_id"] == "trace-123"
    assert (fields["method"], fields["path"], fields["status"]) == ("POST", "/v1/messages", 200)
    assert fields["attempts"] == 1 and fields["model"] == "glm-4.6"
    assert fields["duration_ms"] > 0
    assert fields["tokens_in"] == response.json()["usage"]["input_tokens"]
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "request" and line["request_id"] == "trace-123"
