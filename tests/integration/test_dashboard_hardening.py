"""No client, request or scrape target can take the dashboard down or hold it: clients
that stop reading, hostile query strings and methods, and targets that trickle, flood
or answer garbage.  Real sockets on 127.0.0.1 port 0 throughout."""

from __future__ import annotations

import json
import os
import socket
import tracemalloc
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from zai_proxy.dashboard import (
    AsyncStore,
    Collector,
    Hub,
    RunningDashboard,
    Snapshot,
    Store,
    create_app,
    fetch_metrics,
    serve_app,
    serve_dashboard,
)
from zai_proxy.errors import ScrapeError
from zai_proxy.settings import DashboardSettings

# --------------------------------------------------------------------------- helpers


@dataclass
class Served:
    port: int
    hub: Hub
    stop: trio.Event
    done: trio.Event

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def served_app(
    tmp_path: Path, *, buffer: int = 64, write_timeout: float = 10.0
) -> AsyncIterator[Served]:
    """The app alone (no scraping), its static files in tmp_path/static."""
    root = tmp_path / "static"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("<!doctype html><title>t</title>")
    (tmp_path / "secret.txt").write_text("do not serve")
    settings = DashboardSettings(
        scrape_targets=("http://zai-proxy:8080/metrics",), db_path=str(tmp_path / "d.db")
    )
    collector = Collector(settings.scrape_targets, interval=5.0, epoch_ts=0.0)
    hub = Hub(scrape_interval=5.0, variants=collector.variants(), buffer=buffer)
    store = Store(settings.db_path, retention_5s=3600.0, retention_1m=7200.0)
    app = create_app(
        settings=settings, collector=collector, hub=hub, store=AsyncStore(store), static_dir=root
    )
    stop, done = trio.Event(), trio.Event()

    async def run(*, task_status: trio.TaskStatus[int]) -> None:
        try:
            await serve_app(
                app,
                hub,
                "127.0.0.1",
                0,
                stop,
                client_write_timeout=write_timeout,
                task_status=task_status,
            )
        finally:
            done.set()

    try:
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(run)
            try:
                yield Served(port=port, hub=hub, stop=stop, done=done)
            finally:
                stop.set()
    finally:
        store.close()


async def exchange(port: int, request: bytes, *, deadline: float = 5.0) -> bytes:
    """Send `request` as written; everything the server sends until it closes (it may
    answer and close before the whole request is sent, or reset the connection)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answer = b""
    async with stream:
        with trio.fail_after(deadline):
            try:
                await stream.send_all(request)
            except trio.BrokenResourceError:
                pass
            try:
                while chunk := await stream.receive_some():
                    answer += chunk
            except trio.BrokenResourceError:
                pass
    return answer


def get(target: str, method: str = "GET", headers: str = "") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: dashboard\r\nConnection: close\r\n{headers}\r\n"
    ).encode("latin-1")


def head_of(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def padded(n: int, pad: int = 1500) -> Snapshot:
    """A snapshot of about 30 kB: a few fill a socket's buffers."""
    rates = {f"s{i:05d}": 1.0 for i in range(pad)}
    return Snapshot(ts=float(n), variant="production", interval_s=5.0, status_code_rates=rates)


async def wait_for_clients(hub: Hub, count: int) -> None:
    with trio.fail_after(10):
        while hub.clients != count:
            await hub.wait_changed()


# --------------------------------------------------------------------------- SSE clients


async def test_a_client_that_stops_reading_is_dropped_and_its_connection_closed(
    tmp_path: Path,
) -> None:
    """It stops reading at the TCP level: its socket buffers fill, then its channel.  The
    hub drops it while a reading client gets every frame, and the write that can no longer
    finish is ended at the write deadline: before, nothing (not even stop) could end it."""
    received = 0
    progress = trio.Event()

    async def reader(url: str) -> None:
        nonlocal received, progress
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", url + "/api/events") as response:
                async for line in response.aiter_lines():
                    if line.startswith("event: snapshot"):
                        received += 1
                        progress.set()
                        progress = trio.Event()

    async with served_app(tmp_path, buffer=4, write_timeout=0.5) as served:
        hub = served.hub
        async with trio.open_nursery() as clients:
            clients.start_soon(reader, served.url)
            stuck = trio.socket.socket()
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await stuck.connect(("127.0.0.1", served.port))
            await stuck.send(get("/api/events"))
            await wait_for_clients(hub, 2)
            published = 0
            with trio.fail_after(20):
                while hub.dropped == 0:
                    published += 1
                    assert published < 2000, "the stuck client was never dropped"
                    hub.publish(padded(published))
                    while received < published:
                        await progress.wait()
            assert hub.clients == 1
            # The reader is still served, in step.
            hub.publish(padded(published + 1))
            with trio.fail_after(5):
                while received < published + 1:
                    await progress.wait()
            clients.cancel_scope.cancel()
        # The stuck client never read a byte and never went away.  hypercorn's write to it
        # is shielded from cancellation: only the socket's write deadline can end it, so
        # the server stopping promptly shows its connection was closed.
        stopped_at = trio.current_time()
        served.stop.set()
        try:
            with trio.fail_after(8):
                await served.done.wait()
        finally:
            stuck.close()  # lets a server that failed the test stop after all
        assert trio.current_time() - stopped_at < 6.0


async def test_many_connects_and_disconnects_leave_no_subscriber(tmp_path: Path) -> None:
    async with served_app(tmp_path) as served:

        async def hang_up_at_once() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", served.port)
            await stream.send_all(get("/api/events"))
            await stream.aclose()

        async def hang_up_mid_request() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", served.port)
            await stream.send_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n")
            await stream.aclose()

        async def hang_up_after_connected(client: httpx.AsyncClient) -> None:
            async with client.stream("GET", served.url + "/api/events") as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        return

        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            with trio.fail_after(20):
                # 75 at a time: more would overflow the listen backlog (SYN retried in 1 s).
                for _ in range(4):
                    async with trio.open_nursery() as nursery:
                        for _ in range(25):
                            nursery.start_soon(hang_up_at_once)
                            nursery.start_soon(hang_up_mid_request)
                            nursery.start_soon(hang_up_after_connected, client)
                    served.hub.publish(padded(1, pad=1))
        await wait_for_clients(served.hub, 0)
        assert served.hub.dropped == 0


async def test_head_and_options_on_the_stream_answer_at_once_and_subscribe_nobody(
    tmp_path: Path,
) -> None:
    async with served_app(tmp_path) as served:
        async with httpx.AsyncClient(timeout=5) as client:
            with trio.fail_after(5):
                head = await client.head(served.url + "/api/events")
                options = await client.options(served.url + "/api/events")
                post = await client.post(served.url + "/api/events")
            # The client keeps its connections open meanwhile: nothing may hang on them.
            assert served.hub.connected_total == 0 and served.hub.clients == 0
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert options.status_code == 200 and "GET" in options.headers["allow"]
    assert post.status_code == 405


# --------------------------------------------------------------------------- requests

ALLOWED_RANGES = ["5m", "15m", "1h", "6h", "24h", "7d"]
ALLOWED_VARIANTS = ["production", "canary", "all"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("range=" + "A" * 30_000, "range"),
        ("range=5m&range=7d", "range"),
        ("variant=production&variant=%3Cscript%3E", "variant"),
        ("range=%3Cscript%3Ealert(1)%3C/script%3E", "range"),
        ("range=%3Cimg%20src=x%20onerror=alert(1)%3E&variant=all", "range"),
        ("range=%ff%fe%80", "range"),
        ("range=1h%00", "range"),
        ("range=1h'%20OR%20'1'='1", "range"),
        ("variant=%E2%80%AEcanary", "variant"),
        ("variant=%F0%9F%92%A5", "variant"),
        ("range=%0d%0aSet-Cookie:%20x=1", "range"),
    ],
)
async def test_a_hostile_query_is_a_short_json_400_never_interpreted_as_html(
    tmp_path: Path, query: str, parameter: str
) -> None:
    async with served_app(tmp_path) as served:
        started = trio.current_time()
        status, headers, body = head_of(await exchange(served.port, get(f"/api/metrics?{query}")))
        took = trio.current_time() - started
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in headers
    answer = json.loads(body)
    assert answer["parameter"] == parameter
    assert answer["allowed"] == (ALLOWED_RANGES if parameter == "range" else ALLOWED_VARIANTS)
    # What is quoted back is short, and holds no markup even as raw bytes.
    assert len(body) < 400
    assert b"<" not in body and b">" not in body
    assert took < 1.0


@pytest.mark.parametrize(
    "query",
    [
        "range=5m&utm_source=x&_=1700000000",
        "%ff%fe=1&range=1h",
        "&".join(f"k{i}=v" for i in range(3000)),
        "range=5m&" + "x" * 20_000 + "=1",
    ],
)
async def test_unknown_parameters_are_ignored(tmp_path: Path, query: str) -> None:
    async with served_app(tmp_path) as served:
        started = trio.current_time()
        status, headers, body = head_of(await exchange(served.port, get(f"/api/metrics?{query}")))
        took = trio.current_time() - started
    assert status == 200 and json.loads(body) == []
    assert headers["content-type"] == "application/json"
    assert took < 1.0


async def test_a_request_line_over_the_servers_limit_is_refused_not_a_500(
    tmp_path: Path,
) -> None:
    async with served_app(tmp_path) as served:
        status, _, _ = head_of(
            await exchange(served.port, get("/api/metrics?range=" + "A" * 200_000))
        )
    assert status in (400, 431)


async def test_a_hostile_query_on_the_stream_is_ignored(tmp_path: Path) -> None:
    async with served_app(tmp_path) as served:
        async with httpx.AsyncClient(timeout=5) as client:
            url = served.url + "/api/events?range=%ff%3Cscript%3E&" + "k=v&" * 2000
            async with client.stream("GET", url) as response:
                with trio.fail_after(5):
                    first = await anext(response.aiter_lines())
    assert response.status_code == 200 and first == "event: connected"


@pytest.mark.parametrize(
    "headers",
    ["X-Big: " + "a" * 1_000_000 + "\r\n", "".join(f"X-{i}: a\r\n" for i in range(20_000))],
    ids=["one-huge", "many"],
)
async def test_a_huge_header_is_refused_without_a_500(tmp_path: Path, headers: str) -> None:
    async with served_app(tmp_path) as served:
        answer = await exchange(served.port, get("/healthz", headers=headers))
        # Refused (or the connection reset before the answer could be read), and the
        # server still serves.
        assert answer == b"" or head_of(answer)[0] in (400, 431)
        assert head_of(await exchange(served.port, get("/healthz")))[0] == 200


@pytest.mark.parametrize(
    "target", ["/healthz", "/api/metrics?range=2h", "/static/missing.js", "/api/config"]
)
async def test_connection_close_is_honoured(tmp_path: Path, target: str) -> None:
    """The server closes its end after the answer: before, the close was cancelled and the
    connection stayed open for as long as the client kept it."""
    async with served_app(tmp_path) as served:
        answer = await exchange(served.port, get(target), deadline=2.0)
    assert answer.startswith(b"HTTP/1.1 ")


@pytest.mark.parametrize(
    "target",
    [
        "/static/%252e%252e/secret.txt",
        "/static/..%5csecret.txt",
        "/static/%2e%2e%2fsecret.txt",
        "/static/....//secret.txt",
        "/static/.%2e/secret.txt",
        "/%2e%2e/secret.txt",
        "/static/%00../secret.txt",
    ],
)
async def test_static_paths_cannot_leave_the_directory(tmp_path: Path, target: str) -> None:
    async with served_app(tmp_path) as served:
        status, headers, body = head_of(await exchange(served.port, get(target)))
    assert status in (400, 404) and b"do not serve" not in body
    assert headers["x-content-type-options"] == "nosniff"


# --------------------------------------------------------------------------- scrape targets

EXPOSITION = "# TYPE zai_proxy_requests_total counter\n" + "".join(
    f'zai_proxy_requests_total{{method="POST",path="/v1/messages",status_code="200",x="{i}"}} '
    f"{{count}}\n"
    for i in range(3)
)
HEAD_200 = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nConnection: close\r\n"


def answer(body: bytes, *, content_type: str = "text/plain; version=0.0.4") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


Behaviour = Callable[["FakeTargets", trio.SocketStream], Awaitable[None]]


@dataclass
class FakeTargets:
    """One server, a behaviour per path: /<variant>/<behaviour>/metrics."""

    port: int = 0
    hits: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    count: int = 0

    def url(self, variant: str, behaviour: str) -> str:
        return f"http://127.0.0.1:{self.port}/{variant}/{behaviour}/metrics"

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in request:
                    chunk = await stream.receive_some()
                    if not chunk:
                        return
                    request += chunk
            path = request.split(b" ", 2)[1].decode()
            self.hits[path].append(trio.current_time())
            behaviour = BEHAVIOURS[path.split("/")[-2]]
            try:
                await behaviour(self, stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the scraper gave up, as it should


async def good(targets: FakeTargets, stream: trio.SocketStream) -> None:
    targets.count += 10
    await stream.send_all(answer(EXPOSITION.replace("{count}", str(targets.count)).encode()))


async def trickle(targets: FakeTargets, stream: trio.SocketStream) -> None:
    await stream.send_all(HEAD_200 + b"\r\n")
    while True:
        await stream.send_all(b"#")
        await trio.sleep(0.02)


async def trickle_status_line(targets: FakeTargets, stream: trio.SocketStream) -> None:
    for byte in HEAD_200:
        await stream.send_all(bytes([byte]))
        await trio.sleep(0.02)


async def random_bytes(targets: FakeTargets, stream: trio.SocketStream) -> None:
    await stream.send_all(answer(os.urandom(32 * 1024)))


async def html(targets: FakeTargets, stream: trio.SocketStream) -> None:
    page = b"<!doctype html><html><body><h1>It works!</h1>\n<p>{x} 1</p></body></html>\n"
    await stream.send_all(answer(page, content_type="text/html"))


async def junk_after_valid(targets: FakeTargets, stream: trio.SocketStream) -> None:
    body = EXPOSITION.replace("{count}", "1").encode() + b'\x00\xff}{ "junk" =\nmore junk\n'
    await stream.send_all(answer(body))


async def declared_100_mb(targets: FakeTargets, stream: trio.SocketStream) -> None:
    await stream.send_all(HEAD_200 + b"Content-Length: 100000000\r\n\r\n")
    line = b"a_total 1\n" * 6553
    while True:
        await stream.send_all(line)


async def endless(targets: FakeTargets, stream: trio.SocketStream) -> None:
    await stream.send_all(HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n")
    lines = b"a_total 1\n" * 6553
    chunk = f"{len(lines):x}\r\n".encode() + lines + b"\r\n"
    while True:
        await stream.send_all(chunk)


async def lying_charset(targets: FakeTargets, stream: trio.SocketStream) -> None:
    # A real codec, but not a text encoding: bytes.decode() raises LookupError.
    body = EXPOSITION.replace("{count}", str(len(targets.hits))).encode()
    await stream.send_all(answer(body, content_type="text/plain; charset=zlib_codec"))


BIG_SERIES = 30_000
BIG_EXPOSITION = (
    "# TYPE zai_proxy_requests_total counter\n"
    + "".join(
        f'zai_proxy_requests_total{{method="POST",path="/v1/messages",status_code="200",'
        f'x="{i:06d}"}} {i}\n'
        for i in range(BIG_SERIES)
    )
).encode()


async def big_valid(targets: FakeTargets, stream: trio.SocketStream) -> None:
    # About 3 MB, well-formed: seconds of parsing.
    await stream.send_all(answer(BIG_EXPOSITION))


def _gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"0" * (1 << 20)
    parts = [compressor.compress(zeros) for _ in range(200)]
    return b"".join(parts) + compressor.flush()


GZIP_BOMB = _gzip_bomb()  # 200 MB of text in about 200 kB


async def gzip_bomb(targets: FakeTargets, stream: trio.SocketStream) -> None:
    await stream.send_all(
        HEAD_200 + f"Content-Encoding: gzip\r\nContent-Length: {len(GZIP_BOMB)}\r\n\r\n".encode()
    )
    await stream.send_all(GZIP_BOMB)


async def absurd_values(targets: FakeTargets, stream: trio.SocketStream) -> None:
    # Counters that swing across the float range: increases that overflow to infinity.
    swing = -1.7e308 if len(targets.hits["/production/absurd/metrics"]) % 2 else 1.7e308
    body = (
        "# TYPE zai_proxy_requests_total counter\n"
        f'zai_proxy_requests_total{{status_code="200"}} {swing!r}\n'
        f'zai_proxy_requests_total{{status_code="500"}} {swing!r}\n'
        "# TYPE zai_proxy_rate_limit_requests_per_second gauge\n"
        f'zai_proxy_rate_limit_requests_per_second{{a="1"}} {swing!r}\n'
        f'zai_proxy_rate_limit_requests_per_second{{a="2"}} {swing!r}\n'
    )
    await stream.send_all(answer(body.encode()))


BEHAVIOURS: dict[str, Behaviour] = {
    "good": good,
    "trickle": trickle,
    "trickle-status": trickle_status_line,
    "random": random_bytes,
    "html": html,
    "junk": junk_after_valid,
    "huge": declared_100_mb,
    "endless": endless,
    "charset": lying_charset,
    "big": big_valid,
    "gzip": gzip_bomb,
    "absurd": absurd_values,
}


@asynccontextmanager
async def scraping(
    tmp_path: Path, targets: list[str], *, interval: float, scrape_timeout: float
) -> AsyncIterator[RunningDashboard]:
    settings = DashboardSettings(
        scrape_targets=tuple(targets),
        scrape_interval=interval,
        scrape_timeout=scrape_timeout,
        listen_host="127.0.0.1",
        listen_port=0,
        db_path=str(tmp_path / "dashboard.db"),
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        running: RunningDashboard = await nursery.start(serve_dashboard, settings, stop)
        try:
            yield running
        finally:
            stop.set()


async def snapshots(url: str, variant: str, count: int) -> list[Snapshot]:
    """The next `count` snapshots of `variant` pushed over SSE."""
    out: list[Snapshot] = []
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url + "/api/events") as response:
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "snapshot":
                    snapshot = Snapshot.from_json(line[5:].strip())
                    if snapshot.variant == variant:
                        out.append(snapshot)
                        if len(out) == count:
                            return out
    raise AssertionError("the stream ended")


async def loop_lag(worst: list[float], *, step: float = 0.01) -> None:
    """Records how late the event loop wakes a sleeping task."""
    while True:
        before = trio.current_time()
        await trio.sleep(step)
        worst[0] = max(worst[0], trio.current_time() - before - step)


HOSTILE = {
    "trickle": "no answer within 0.3s (SCRAPE_TIMEOUT)",
    "trickle-status": "no answer within 0.3s (SCRAPE_TIMEOUT)",
    "random": "not a Prometheus text exposition",
    "html": "not a Prometheus text exposition",
    "junk": "not a Prometheus text exposition",
    "huge": "exposition larger than 16777216 bytes",
    "gzip": "Content-Encoding 'gzip': only identity is accepted",
}


async def test_hostile_targets_are_marked_down_while_a_good_one_keeps_its_schedule(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeTargets()
    await nursery.start(fake.serve)
    interval, timeout = 0.5, 0.3
    urls = [fake.url("production", "good"), fake.url("canary", "charset")]
    urls += [fake.url("canary", name) for name in (*HOSTILE, "endless", "big")]
    worst = [0.0]
    with trio.fail_after(15):
        async with scraping(tmp_path, urls, interval=interval, scrape_timeout=timeout) as dashboard:
            nursery.start_soon(loop_lag, worst)
            await snapshots(dashboard.url, "production", 4)
            async with httpx.AsyncClient(timeout=5) as client:
                status = (await client.get(dashboard.url + "/api/status")).json()
            restarts = dict(dashboard.stats.task_restarts)
    hits = fake.hits["/production/good/metrics"]
    # On schedule: the k-th scrape at first + k x interval, give or take one late wake-up
    # (a late tick followed by an on-time one makes a short gap, not a drift). Scrapes
    # held up by the hostile targets would fall further behind at every tick.
    offsets = [hit - k * interval for k, hit in enumerate(hits)]
    assert len(hits) >= 5 and max(offsets) - min(offsets) < 0.2, offsets
    assert worst[0] < 0.2, f"the event loop stalled for {worst[0]:.2f}s"
    assert restarts == {}
    targets = {t["url"].split("/")[-2]: t for t in status["targets"]}
    assert targets["good"]["up"] and targets["good"]["scrapes_failed"] == 0
    for name, error in HOSTILE.items():
        assert not targets[name]["up"], name
        assert targets[name]["last_error"].startswith(error), (name, targets[name]["last_error"])
        assert len(targets[name]["last_error"]) <= 201
    # Seconds of parsing: cut at the deadline (while it arrives, on a busy machine).
    assert targets["big"]["last_error"] in (
        "exposition not parsed within 0.3s (SCRAPE_TIMEOUT)",
        "no answer within 0.3s (SCRAPE_TIMEOUT)",
    )
    # Cut at MAX_EXPOSITION_BYTES, or at the deadline if 16 MB take longer to arrive.
    assert targets["endless"]["last_error"] in (
        "exposition larger than 16777216 bytes",
        "no answer within 0.3s (SCRAPE_TIMEOUT)",
    )
    # Whatever charset it claims, the text format is UTF-8.
    assert targets["charset"]["up"]


async def test_absurd_counter_values_give_nulls_not_a_crash(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeTargets()
    await nursery.start(fake.serve)
    with trio.fail_after(10):
        async with scraping(
            tmp_path, [fake.url("production", "absurd")], interval=0.2, scrape_timeout=0.15
        ) as dashboard:
            pushed = await snapshots(dashboard.url, "production", 3)
            async with httpx.AsyncClient(timeout=5) as client:
                status = await client.get(dashboard.url + "/api/status")
                history = await client.get(dashboard.url + "/api/metrics?range=5m")
            restarts = dict(dashboard.stats.task_restarts)
    for s in pushed:
        assert not s.stale and s.rate_limit_rps is None
        assert s.req_rate is None or abs(s.req_rate) < 1e300
        assert Snapshot.from_json(s.to_json()) == s
    assert status.status_code == 200 and history.status_code == 200
    assert restarts == {}


async def test_a_compressed_answer_is_refused_before_it_is_inflated(
    nursery: trio.Nursery,
) -> None:
    fake = FakeTargets()
    await nursery.start(fake.serve)
    peak = await peak_memory_of_a_failed_fetch(fake.url("production", "gzip"), "Content-Encoding")
    assert peak < 8 * 1024 * 1024


async def peak_memory_of_a_failed_fetch(url: str, match: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        tracemalloc.start()
        try:
            with trio.fail_after(10), pytest.raises(ScrapeError, match=match):
                await fetch_metrics(client, url)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


async def test_a_declared_oversize_body_is_refused_unread(nursery: trio.Nursery) -> None:
    fake = FakeTargets()
    await nursery.start(fake.serve)
    peak = await peak_memory_of_a_failed_fetch(fake.url("production", "huge"), "larger than")
    assert peak < 8 * 1024 * 1024


async def test_an_endless_body_is_read_no_further_than_the_limit(nursery: trio.Nursery) -> None:
    fake = FakeTargets()
    await nursery.start(fake.serve)
    peak = await peak_memory_of_a_failed_fetch(fake.url("production", "endless"), "larger than")
    assert peak < 24 * 1024 * 1024
