"""The proxy's ASGI application.

Two parts: a small QuartTrio app answers the proxy's own endpoints (`/health`,
`/healthz`, `/metrics`, `/admin/reset-rate-limit`) and owns the lifespan; every other
request goes to `ProxyApp._proxy`, a plain ASGI handler, so nothing between the socket and
the upstream rewrites the path, buffers the response or adds latency.  A WebSocket
upgrade on any other path goes to the `WebSocketRelay` (websocket.py).
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

import httpx
import trio
from prometheus_client import exposition
from quart import Response, request
from quart_trio import QuartTrio

from ..errors import (
    ClientStalled,
    Overloaded,
    ProxyError,
    RequestTimeout,
    Unauthorized,
    UpstreamThrottled,
)
from ..settings import ProxySettings
from .accounting import Accountant
from .body import ClientGone, declared_length, drain, extract_model, read_body
from .exchange import Downstream, Exchange, Outcome, Receive, Scope, Send
from .forward import Forwarder
from .headers import http_date, token_input_headers
from .limiter import AdaptiveLimiter
from .limiter_loop import limiter_config
from .metrics import LiveState, ModelLabels, ProxyMetrics, method_label
from .paths import ApiStyle, Target, api_style, route_label, upstream_target
from .rate_gate import LocalGate, RateGate
from .shared_limiter import SharedGate, Timing
from .tokenizer import TokenCounter
from .upstream import UpstreamTransport
from .upstream_errors import Phase, upstream_errors
from .websocket import WebSocketRelay
from .wire import error_answer, error_body, throttled_answer

__all__ = ["ProxyApp", "create_app", "make_gate"]

log = logging.getLogger("zai_proxy.proxy")
access_log = logging.getLogger("zai_proxy.access")

_OWN_PATHS = frozenset({"/health", "/healthz", "/metrics", "/admin/reset-rate-limit"})


def make_gate(settings: ProxySettings, metrics: ProxyMetrics) -> RateGate:
    """The limiter RATE_LIMIT_BACKEND names: this process's own, or one shared on Redis."""
    config = limiter_config(settings)
    if settings.rate_limit_backend == "memory":
        return LocalGate(AdaptiveLimiter(config, now=_now_or_zero()), metrics)
    # A judge that dies hands over within a window (and within 3 s of long ones).
    timing = Timing(lease=max(0.5, min(3.0, config.window)))
    return SharedGate(settings, config, metrics, timing=timing, now=_now_or_zero())


class ProxyApp:
    """ASGI callable: own endpoints to Quart, everything else forwarded upstream."""

    def __init__(self, settings: ProxySettings, *, stopping: trio.Event | None = None) -> None:
        """`stopping`: set when the server begins its graceful stop (WebSocket sessions
        then close with 1001 rather than hold the drain up)."""
        self.settings = settings
        self.target = Target.parse(settings.target_url)
        self._origin = httpx.URL(self.target.origin)
        self.in_flight = 0
        # Requests not yet fully done, token accounting included (in_flight ends sooner).
        self.active = 0
        self.metrics = ProxyMetrics(
            variant=settings.variant,
            live=self._live_state,
            version=settings.build_version,
            commit=settings.build_commit,
            build_time=settings.build_time,
        )
        self.limiter = make_gate(settings, self.metrics)
        self.models = ModelLabels(settings.tokenizer_model)
        self.counter = TokenCounter() if settings.token_counting_enabled else None
        self.accountant = Accountant(
            metrics=self.metrics,
            counter=self.counter,
            models=self.models,
            sample=settings.token_accuracy_sample,
        )
        self.client: httpx.AsyncClient | None = None
        self.forwarder: Forwarder | None = None
        self.websockets = WebSocketRelay(
            settings=settings,
            target=self.target,
            gate=self.limiter,
            metrics=self.metrics,
            accountant=self.accountant,
            stopping=stopping if stopping is not None else trio.Event(),
        )
        self.control = self._control_app()

    # -- lifespan -------------------------------------------------------------------------

    def open_client(self) -> None:
        s = self.settings
        # One keep-alive connection per worker slot, in small pools (upstream.py).
        transport = UpstreamTransport(max_connections=s.max_workers, keepalive_expiry=30.0)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=s.upstream_connect_timeout,
                read=s.upstream_read_timeout,
                write=s.upstream_write_timeout,
                pool=s.upstream_pool_timeout,
            ),
            transport=transport,
            follow_redirects=False,
            # No proxy or .netrc from the environment: an injected Authorization from
            # .netrc would replace the key, and a proxy variable would route it elsewhere.
            trust_env=False,
        )
        self.forwarder = Forwarder(
            client=self.client,
            transport=transport,
            api_key=s.api_key,
            gate=self.limiter,
            metrics=self.metrics,
            max_retries=s.max_retries,
            backoff_base=s.retry_backoff_base,
            retry_after_cap=s.retry_after_cap,
            max_wait=s.rate_limit_max_wait,
            counter=self.counter,
        )

    async def close_client(self) -> None:
        if self.client is not None:
            with trio.move_on_after(5, shield=True):
                await self.client.aclose()

    def _live_state(self) -> LiveState:
        return dataclasses.replace(
            self.limiter.live(self.in_flight, self.settings.max_workers),
            websocket_sessions=self.websockets.open,
            max_websockets=self.settings.max_websockets,
        )

    # -- own endpoints --------------------------------------------------------------------

    def _control_app(self) -> QuartTrio:
        app = QuartTrio("zai_proxy.proxy")
        app.config["RESPONSE_TIMEOUT"] = None
        app.config["BODY_TIMEOUT"] = 30

        @app.before_serving
        async def _open() -> None:
            if self.client is None:
                self.open_client()

        @app.after_serving
        async def _close() -> None:
            await self.close_client()

        @app.after_request
        async def _dated(response: Response) -> Response:
            response.headers["Date"] = http_date().decode()
            return response

        @app.route("/health")
        @app.route("/healthz")
        async def health() -> Any:
            return {
                "status": "ok",
                "version": self.settings.build_version,
                "variant": self.settings.variant,
                "in_flight": self.in_flight,
                "max_workers": self.settings.max_workers,
                "rate_limit_rps": round(self.limiter.rate, 3),
                **self.limiter.describe(),
            }

        @app.route("/metrics")
        async def metrics() -> Response:
            encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
            return Response(encoder(self.metrics.registry), content_type=content_type)

        @app.route("/admin/reset-rate-limit", methods=["POST"])
        async def reset_rate_limit() -> Any:
            token = self.settings.admin_token
            if token is not None:
                # The auth scheme is case-insensitive (RFC 9110 11.1); the token is not.
                scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), token.encode()
                ):
                    error = Unauthorized("admin endpoints need Authorization: Bearer <ADMIN_TOKEN>")
                    body = error_body(error, "anthropic")
                    return Response(body, status=401, content_type="application/json")
            old = await self.limiter.reset()
            log.info(
                "rate limiter reset",
                extra={"old_rate": round(old, 3), "new_rate": self.limiter.rate},
            )
            return {"status": "reset", "rate_limit_rps": self.limiter.rate, "ceiling": None}

        return app

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in _OWN_PATHS:
            await self._proxy(scope, receive, send)
        elif scope["type"] == "websocket" and scope["path"] not in _OWN_PATHS:
            await self._websocket(scope, receive, send)
        else:
            await self.control(scope, receive, send)  # type: ignore[arg-type]

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.active += 1
        try:
            headers: list[tuple[bytes, bytes]] = [
                (name.lower(), value) for name, value in scope["headers"]
            ]
            await self.websockets.serve(scope, receive, send, _request_id(headers))
        finally:
            self.active -= 1

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.active += 1
        try:
            await self._proxy_request(scope, receive, send)
        finally:
            self.active -= 1

    async def _proxy_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = trio.current_time()
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw_path.split(b"?", 1)[0]
        style = api_style(raw_path)
        method: str = scope["method"]
        route = route_label(raw_path, self.target)
        headers: list[tuple[bytes, bytes]] = [
            (name.lower(), value) for name, value in scope["headers"]
        ]
        request_id = _request_id(headers)
        downstream = Downstream(send)
        outcome = Outcome()
        body = b""
        model: str | None = None
        client_gone = False
        error: ProxyError | None = None

        if self.in_flight >= self.settings.max_workers:
            self.metrics.rejection("capacity")
            error = Overloaded(
                f"zai-proxy is at capacity ({self.settings.max_workers} requests in flight); "
                "retry shortly",
                retry_after=1.0,
            )
            # Read the body first (bounded, as for a 413): answering while a large upload
            # is still coming in makes the kernel reset it, and the client would see a
            # broken pipe instead of the 503 it can act on.
            try:
                with trio.move_on_after(self.settings.client_body_timeout):
                    await drain(receive, declared_length(headers))
            except ClientGone:
                outcome.status = 499
            except ProxyError:
                pass  # a Content-Length that is not a number: nothing to drain
            if outcome.status != 499:
                await self._send_error(downstream, error, style, request_id, outcome)
            self._finish(method, route, 0, outcome, started, request_id, None, error)
            return

        self.in_flight += 1
        try:
            try:
                body = await self._read_body_in_time(headers, receive)
                request_target = upstream_target(
                    raw_path, scope.get("query_string", b""), self.target
                )
                with upstream_errors(Phase.BUILD):
                    url = self._origin.copy_with(raw_path=request_target)
            except ProxyError as exc:
                error = exc
                await self._send_error(downstream, exc, style, request_id, outcome)
                return
            except ClientGone:
                client_gone = True
                return
            model = extract_model(body) if body else None
            exchange = Exchange(
                method=method,
                url=url,
                headers=headers,
                body=body,
                style=style,
                request_id=request_id,
                route=route,
            )
            stalled = False
            async with trio.open_nursery() as nursery:
                gone = trio.Event()
                nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope, gone)
                try:
                    try:
                        assert self.forwarder is not None, "the lifespan opens the client first"
                        await self.forwarder.forward(exchange, downstream, outcome)
                    except UpstreamThrottled as exc:
                        error = exc
                        await self._send_throttled(downstream, exc, request_id, outcome)
                    except ProxyError as exc:
                        error = exc
                        await self._send_error(downstream, exc, style, request_id, outcome)
                except ClientStalled:
                    # The client stopped reading: its connection is closed (serving.py).
                    stalled = True
                nursery.cancel_scope.cancel()
            # A client that hangs up after the last byte went out was served in full.
            client_gone = stalled or (gone.is_set() and not downstream.ended)
            if client_gone and downstream.started:
                # The answer was being written when the client went: the seed's
                # write_error ("error writing response to client").
                self.metrics.upstream_error("write_error")
        finally:
            self.in_flight -= 1
            if client_gone:
                outcome.status = 499
            self._finish(method, route, len(body), outcome, started, request_id, model, error)
        if outcome.usage is not None or self.counter is not None:
            await self.accountant.account(
                route=route,
                body=body,
                style=style,
                model=model,
                outcome=outcome,
                duration=trio.current_time() - started,
                now=datetime.now(UTC),
            )

    async def _read_body_in_time(
        self, headers: list[tuple[bytes, bytes]], receive: Receive
    ) -> bytes:
        """The body, or RequestTimeout once CLIENT_BODY_TIMEOUT passes: a client that
        sends half a body and stalls must not keep its slot."""
        limit = self.settings.client_body_timeout
        with trio.move_on_after(limit):
            return await read_body(headers, receive, self.settings.max_body_bytes)
        raise RequestTimeout(
            f"the request body did not arrive within {limit:g}s (CLIENT_BODY_TIMEOUT)"
        )

    async def _send_error(
        self,
        downstream: Downstream,
        error: ProxyError,
        style: ApiStyle,
        request_id: str,
        outcome: Outcome,
    ) -> None:
        outcome.status = error.status
        if downstream.started:
            return
        headers, body = error_answer(error, style, request_id)
        headers += token_input_headers(outcome.token_input, outcome.token_input_source)
        outcome.response_bytes = len(body)
        await downstream.answer(error.status, headers, body)

    async def _send_throttled(
        self, downstream: Downstream, error: UpstreamThrottled, request_id: str, outcome: Outcome
    ) -> None:
        fallback = max(self.limiter.retry_after(), self.settings.retry_backoff_base)
        headers, body = throttled_answer(error, request_id, fallback)
        headers += token_input_headers(outcome.token_input, outcome.token_input_source)
        outcome.status = 429
        outcome.response_bytes = len(body)
        await downstream.answer(429, headers, body)

    def _finish(
        self,
        method: str,
        route: str,
        request_bytes: int,
        outcome: Outcome,
        started: float,
        request_id: str,
        model: str | None,
        error: ProxyError | None,
    ) -> None:
        duration = trio.current_time() - started
        status = str(outcome.status or 500)
        self.metrics.request_done(
            method_label(method),
            route,
            status,
            duration,
            request_bytes,
            outcome.response_bytes,
        )
        fields: dict[str, object] = {
            "request_id": request_id,
            "method": method,
            "path": route,
            "status": outcome.status,
            "attempts": outcome.attempts,
            "duration_ms": round(duration * 1000, 2),
            "model": model,
            "stream": outcome.streamed,
        }
        if outcome.retry_reasons:
            fields["retries"] = ",".join(outcome.retry_reasons)
        if outcome.error_type:
            fields["error_type"] = outcome.error_type
        if error is not None:
            fields["error"] = f"{type(error).__name__}: {error.message}"
        if outcome.token_input_source is not None:
            fields["token_input"] = outcome.token_input
            fields["token_input_source"] = outcome.token_input_source
        if outcome.usage is not None:
            u = outcome.usage
            fields["tokens_in"] = u.input
            fields["tokens_out"] = u.output
            fields["tokens_cache_read"] = u.cache_read
            fields["tokens_cache_write"] = u.cache_write
        access_log.info("request", extra=fields)


async def _watch_disconnect(receive: Receive, scope: trio.CancelScope, gone: trio.Event) -> None:
    """Cancel the request the moment the client goes away, so the upstream stops too."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            scope.cancel()
            return


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id" and 0 < len(value) <= 128 and value.isascii():
            text = value.decode("ascii")
            if text.replace("-", "").replace("_", "").isalnum():
                return text
    return "req_" + secrets.token_hex(12)


def _now_or_zero() -> float:
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


def create_app(settings: ProxySettings) -> ProxyApp:
    return ProxyApp(settings)
