"""Keep-alive connections to the upstream: httpx's HTTP/1.1 transport, in small pools.

httpcore's connection pool walks every connection it holds each time a request arrives
and each time a response closes, asking each whether it has expired (a readability poll
of its socket) and, for every idle one, counting the idle ones again (quadratic). With
one pool of MAX_WORKERS connections that walk grows with the load: at 64 requests in
flight it took about a third of the proxy's CPU (bench/README.md, perf.py profile).

So the connections are split into shards of `SHARD_SIZE`, each an ordinary
`httpx.AsyncHTTPTransport` with its own pool, and a request goes to the first shard
with a free slot. Busy shards stay warm and keep their connections alive; shards past
the current load hold none after `keepalive_expiry`. The total is still MAX_WORKERS
connections, one per request in flight, as before.

Requests are sent through the transport, not `AsyncClient.send`: the client's cookie
jar would keep the upstream's cookies and send them with every agent's requests, and
its redirect, auth and hook machinery has nothing to do here.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import httpx

__all__ = ["SHARD_SIZE", "UpstreamTransport"]

SHARD_SIZE = 8


class UpstreamTransport(httpx.AsyncBaseTransport):
    """`max_connections` keep-alive connections in pools of at most SHARD_SIZE."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float,
        shard_size: int = SHARD_SIZE,
    ) -> None:
        if max_connections < 1 or shard_size < 1:
            raise ValueError("max_connections and shard_size must be >= 1")
        count = math.ceil(max_connections / shard_size)
        self._shard_size = min(shard_size, max_connections)
        limits = httpx.Limits(
            max_connections=self._shard_size,
            max_keepalive_connections=self._shard_size,
            keepalive_expiry=keepalive_expiry,
        )
        # One TLS context for all: each loads the CA bundle, some 40 ms and 60 KiB apiece.
        tls = httpx.create_ssl_context()
        self._shards = [httpx.AsyncHTTPTransport(verify=tls, limits=limits) for _ in range(count)]
        # Requests each shard is carrying: sent, and their response not yet closed.
        self._load = [0] * count

    @property
    def loads(self) -> list[int]:
        """Requests in flight per shard (for tests and debugging)."""
        return list(self._load)

    def _pick(self) -> int:
        for index, load in enumerate(self._load):
            if load < self._shard_size:
                return index
        # More in flight than max_connections: the least loaded shard queues it.
        return min(range(len(self._load)), key=self._load.__getitem__)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._pick()
        self._load[index] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._load[index] -= 1

        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        response.stream = _ReleasingStream(response.stream, release)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its shard's slot back when it is closed."""

    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, release: Callable[[], None]
    ) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._release = release

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The inner iterator itself: no extra generator frame per chunk.
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()
