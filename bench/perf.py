"""zai-proxy against direct, nginx and LiteLLM: latency, throughput, streaming and memory.

One run starts a fast fixed-answer upstream (`perf_upstream.py`) and, in front of it,
zai-proxy (`zai-proxy serve`, limiter set high so it never throttles), nginx as a plain
reverse proxy, and LiteLLM's proxy (installed by this script into bench/.venv-litellm),
then measures all of them side by side with the same load generator and the same
~300-byte OpenAI chat request (POST /v1/chat/completions):

- added latency p50/p99 at concurrency 1 (non-streaming, targets interleaved);
- throughput and p99 at concurrency 64 (wrk when installed, else Python processes);
- streaming: added time to first event, added per-event delay and inter-event gap,
  events received against events sent;
- RSS with 1,000 open streams, and RSS over a steady soak (start, end, slope).

Each figure is also shown as a ratio to direct (x d) and to nginx (x n).  The machine is
shared: compare rows of one run, not runs.  Everything listens on 127.0.0.1.

    python bench/perf.py                 # full run: 600 s soak
    python bench/perf.py --soak 120      # shorter soak
    python bench/perf.py --quick         # smoke check, about two minutes
    python bench/perf.py --profile /tmp/zai-prof   # py-spy on zai-proxy at c=1 and c=64
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import h11
import trio

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
LITELLM_VENV = BENCH / ".venv-litellm"
NGINX = "/usr/sbin/nginx"
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
KEY = "sk-bench-upstream"

_MESSAGES = [
    {"role": "system", "content": "You are a terse assistant used by a benchmark."},
    {
        "role": "user",
        "content": "Summarise in one sentence why a reverse proxy in front of an LLM API "
        "should add almost no latency, and say nothing else.",
    },
]
REQUEST = json.dumps(
    {"model": "bench", "max_tokens": 64, "temperature": 0.2, "messages": _MESSAGES}
).encode()
STREAM_REQUEST = json.dumps(
    {"model": "bench", "max_tokens": 64, "stream": True, "messages": _MESSAGES}
).encode()
SLOW_REQUEST = json.dumps(
    {"model": "bench-slow", "max_tokens": 64, "stream": True, "messages": _MESSAGES}
).encode()

_MARK = re.compile(rb"t=(\d+) ")


@dataclass(frozen=True, slots=True)
class Plan:
    c1_requests: int
    c1_warmup: int
    streams: int
    stream_events: int
    stream_interval_ms: float
    c64_seconds: float
    c64_rounds: int
    open_streams: int
    soak_seconds: float
    soak_rate: float
    sample_every: float
    c1_wrk_seconds: float
    c1_wrk_rounds: int

    @classmethod
    def full(cls, soak: float) -> Plan:
        return cls(2000, 100, 40, 20, 5.0, 10.0, 2, 1000, soak, 50.0, 5.0, 5.0, 3)

    @classmethod
    def quick(cls) -> Plan:
        return cls(200, 20, 8, 20, 5.0, 3.0, 1, 200, 20.0, 50.0, 2.0, 2.0, 1)


class Unavailable(Exception):
    """A peer that could not be installed or started; the run reports it and goes on."""


# -- statistics ---------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return math.nan
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return math.nan
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """User plus system CPU time of a process and all its descendants."""
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(root: int) -> float:
    """VmRSS of a process and all its descendants, in MB (10^6 bytes)."""
    total_kib = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib * 1024 / 1e6


@dataclass
class Service:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None
    log: Path | None = None
    version: str = ""

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def rss(self) -> float:
        return math.nan if self.pid is None else rss_mb(self.pid)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(service: Service, timeout: float) -> None:
    """Until one POST through the service gets a 200, or Unavailable with the log's tail."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            break
        try:
            with BlockingClient(service.port) as client:
                response = client.request(REQUEST)
            if response.status == 200:
                return
            last = f"HTTP {response.status}: {response.body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    tail = ""
    if service.log is not None and service.log.exists():
        tail = " | ".join(service.log.read_text(errors="replace").strip().splitlines()[-5:])
    service.stop()
    raise Unavailable(f"did not answer within {timeout:g}s ({last}) {tail}".strip())


def start_upstream(tmp: Path, plan: Plan) -> Service:
    port = free_port()
    log = tmp / "upstream.log"
    argv = [sys.executable, str(BENCH / "perf_upstream.py"), "--port", str(port)]
    argv += ["--events", str(plan.stream_events), "--interval-ms", str(plan.stream_interval_ms)]
    service = Service("upstream", port, _spawn(argv, dict(os.environ), log), log)
    wait_ready(service, 15)
    return service


def start_zai(tmp: Path, upstream: Service) -> Service:
    port = free_port()
    env = dict(os.environ)
    env.update(
        ZAI_API_KEY=KEY,
        ZAI_TARGET_URL=f"http://{HOST}:{upstream.port}",
        LISTEN_ADDR=f"{HOST}:{port}",
        RATE_LIMIT_INITIAL="100000",
        RATE_LIMIT_MAX="100000",
        MAX_WORKERS="2000",
        LOG_LEVEL="warning",
    )
    log = tmp / "zai-proxy.log"
    service = Service("zai-proxy", port, _spawn([str(BIN / "zai-proxy"), "serve"], env, log), log)
    service.version = importlib.metadata.version("zai-proxy") + _git_describe()
    wait_ready(service, 30)
    return service


def _git_describe() -> str:
    """` (git abc1234)`, with `+changes` when src/ differs from it: the editable install
    runs whatever src/ holds."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" (git {head}{'+changes' if dirty else ''})"


_NGINX_CONF = """\
worker_processes auto;
worker_rlimit_nofile 16384;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
user root;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream bench {{
        server {host}:{upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {key}";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(tmp: Path, upstream: Service) -> Service:
    if not Path(NGINX).exists():
        raise Unavailable(f"{NGINX} is not installed")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(tmp=tmp, host=HOST, upstream=upstream.port, port=port, key=KEY)
    )
    version = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    argv = [NGINX, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
    log = tmp / "nginx.log"
    service = Service("nginx", port, _spawn(argv, dict(os.environ), log), log)
    service.version = version.rpartition("/")[2]
    wait_ready(service, 15)
    return service


def ensure_litellm() -> Path:
    """bench/.venv-litellm/bin/litellm, installed with pip on first use."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    if litellm.exists():
        return litellm
    print("installing litellm[proxy] into bench/.venv-litellm ...", flush=True)
    try:
        if not (LITELLM_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            + ["litellm[proxy]"],
            check=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise Unavailable(f"pip install litellm[proxy] failed: {exc}") from exc
    if not litellm.exists():
        raise Unavailable("pip install litellm[proxy] left no litellm command")
    return litellm


_LITELLM_CONF = """\
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://{host}:{upstream}/v1
      api_key: {key}
  - model_name: bench-slow
    litellm_params:
      model: openai/bench-slow
      api_base: http://{host}:{upstream}/v1
      api_key: {key}
litellm_settings:
  telemetry: false
  set_verbose: false
"""


def start_litellm(tmp: Path, upstream: Service) -> Service:
    litellm = ensure_litellm()
    port = free_port()
    conf = tmp / "litellm.yaml"
    conf.write_text(_LITELLM_CONF.format(host=HOST, upstream=upstream.port, key=KEY))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LITELLM_MASTER_KEY")}
    env.update(
        LITELLM_TELEMETRY="False",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        # No client keys, like zai-proxy and nginx: a master key would add a key check.
        LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
        # Its upstream pool holds 500 connections per host by default; zai-proxy gets
        # MAX_WORKERS=2000 here, so LiteLLM gets as many for the 1,000 open streams.
        AIOHTTP_CONNECTOR_LIMIT="2000",
        AIOHTTP_CONNECTOR_LIMIT_PER_HOST="2000",
        DISABLE_ADMIN_UI="True",
        NO_DOCS="True",
    )
    argv = [str(litellm), "--config", str(conf), "--host", HOST, "--port", str(port)]
    argv += ["--num_workers", "1"]
    log = tmp / "litellm.log"
    service = Service("litellm", port, _spawn(argv, env, log), log)
    python = LITELLM_VENV / "bin" / "python"
    service.version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    wait_ready(service, 180)
    return service


# -- HTTP client (h11; one blocking shell, one trio shell) ---------------------------------


@dataclass
class Response:
    status: int = 0
    body: bytes = b""
    sent_ns: int = 0
    # (stamp written by the upstream, time the client received it) per content event.
    marks: list[tuple[int, int]] = field(default_factory=list)
    done: bool = False
    # False when the server ends the connection after this response (hypercorn does after
    # keep_alive_max_requests, 1000 by default): the caller connects again.
    reusable: bool = False


class _Exchange:
    """Sans-IO: one request on an h11 connection, fed bytes with their arrival time."""

    def __init__(self, conn: h11.Connection, port: int, body: bytes) -> None:
        self.conn = conn
        self.response = Response()
        self._pending = b""
        self._keep_body = b'"stream"' not in body
        request = h11.Request(
            method="POST",
            target=PATH,
            headers=[
                ("Host", f"{HOST}:{port}"),
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer sk-client-not-used"),
                ("Content-Length", str(len(body))),
            ],
        )
        self.outgoing = (
            conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )

    def feed(self, data: bytes, now_ns: int) -> None:
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Response):
                self.response.status = event.status_code
            elif isinstance(event, h11.Data):
                self._data(bytes(event.data), now_ns)
            elif isinstance(event, h11.EndOfMessage):
                self.response.done = True
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                    self.response.reusable = True
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("server closed the connection mid-response")

    def _data(self, data: bytes, now_ns: int) -> None:
        if self._keep_body:
            self.response.body += data
            return
        # Marks may straddle reads: scan only up to the last complete SSE event.
        buffer = self._pending + data
        cut = buffer.rfind(b"\n\n") + 2
        for match in _MARK.finditer(buffer, 0, cut if cut >= 2 else 0):
            self.response.marks.append((int(match.group(1)), now_ns))
        self._pending = buffer[cut:] if cut >= 2 else buffer


class BlockingClient:
    """One keep-alive connection on a plain socket: the least overhead for c=1."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h11.Connection(h11.CLIENT)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, body: bytes) -> Response:
        if self.conn.our_state is not h11.IDLE:
            self.sock.close()
            self._connect()
            self.reconnects += 1
        exchange = _Exchange(self.conn, self.port, body)
        exchange.response.sent_ns = time.monotonic_ns()
        self.sock.sendall(exchange.outgoing)
        while not exchange.response.done:
            data = self.sock.recv(65536)
            now = time.monotonic_ns()
            exchange.feed(data, now)
            if not data and not exchange.response.done:
                raise ConnectionError("connection closed mid-response")
        return exchange.response


async def trio_request(
    stream: trio.SocketStream,
    conn: h11.Connection,
    port: int,
    body: bytes,
    on_data: Callable[[Response], None] | None = None,
) -> Response:
    exchange = _Exchange(conn, port, body)
    exchange.response.sent_ns = time.monotonic_ns()
    await stream.send_all(exchange.outgoing)
    while not exchange.response.done:
        data = await stream.receive_some(65536)
        exchange.feed(data, time.monotonic_ns())
        if on_data is not None:
            on_data(exchange.response)
        if not data and not exchange.response.done:
            raise ConnectionError("connection closed mid-response")
    return exchange.response


async def trio_connect(port: int) -> tuple[trio.SocketStream, h11.Connection]:
    stream = await trio.open_tcp_stream(HOST, port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return stream, h11.Connection(h11.CLIENT)


# -- measurements -------------------------------------------------------------------------


def measure_c1(targets: Sequence[Service], plan: Plan) -> dict[str, list[float]]:
    """Non-streaming latency in ms at concurrency 1, targets interleaved round by round."""
    clients = [BlockingClient(t.port) for t in targets]
    latencies: dict[str, list[float]] = {t.name: [] for t in targets}
    try:
        for round_ in range(plan.c1_warmup + plan.c1_requests):
            shift = round_ % len(targets)
            for i in range(len(targets)):
                index = (i + shift) % len(targets)
                started = time.perf_counter()
                response = clients[index].request(REQUEST)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status != 200:
                    raise RuntimeError(f"{targets[index].name}: HTTP {response.status}")
                if round_ >= plan.c1_warmup:
                    latencies[targets[index].name].append(elapsed)
    finally:
        for client in clients:
            client.sock.close()
    return latencies


@dataclass
class StreamStats:
    ttft_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)
    gap_ms: list[float] = field(default_factory=list)
    received: int = 0
    sent: int = 0


def measure_streams_c1(targets: Sequence[Service], plan: Plan) -> dict[str, StreamStats]:
    """Streams one at a time, interleaved: time to first event, per-event delay, gaps."""
    clients = [BlockingClient(t.port) for t in targets]
    stats = {t.name: StreamStats() for t in targets}
    try:
        for round_ in range(plan.streams + 2):
            shift = round_ % len(targets)
            for i in range(len(targets)):
                index = (i + shift) % len(targets)
                response = clients[index].request(STREAM_REQUEST)
                if round_ < 2:
                    continue
                s = stats[targets[index].name]
                s.sent += plan.stream_events
                s.received += len(response.marks)
                if not response.marks:
                    continue
                s.ttft_ms.append((response.marks[0][1] - response.sent_ns) / 1e6)
                s.delay_ms.extend((got - stamp) / 1e6 for stamp, got in response.marks)
                arrivals = [got for _, got in response.marks]
                s.gap_ms.extend((b - a) / 1e6 for a, b in itertools.pairwise(arrivals))
    finally:
        for client in clients:
            client.sock.close()
    return stats


@dataclass(frozen=True, slots=True)
class Throughput:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU time of the proxy's process tree per answered request (nan for direct).
    cpu_ms: float = math.nan


_WRK_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client-not-used"
"""

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return math.nan
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def run_wrk(port: int, seconds: float, script: Path, connections: int = 64) -> Throughput:
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
        + ["--timeout", "10s"]
        + ["-s", str(script), f"http://{HOST}:{port}{PATH}"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return Throughput(
        rps=float(rps.group(1)) if rps else math.nan,
        p50_ms=_wrk_ms(p50.group(1)) if p50 else math.nan,
        p99_ms=_wrk_ms(p99.group(1)) if p99 else math.nan,
        errors=errors,
    )


def _python_load_worker(port: int, connections: int, seconds: float, out: str) -> None:
    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                stream, conn = await trio_connect(port)
                async with stream:
                    while time.perf_counter() < deadline:
                        started = time.perf_counter()
                        response = await trio_request(stream, conn, port, REQUEST)
                        latencies.append((time.perf_counter() - started) * 1000)
                        errors += response.status != 200
                        if not response.reusable:
                            break

        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one)
        return latencies, errors

    latencies, errors = trio.run(run)
    Path(out).write_text(json.dumps({"latencies": latencies, "errors": errors}))


def run_python_load(port: int, seconds: float, connections: int = 64) -> Throughput:
    """Two processes of 32 trio connections each, closed loop: the fallback without wrk."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [f"{tmp}/{i}.json" for i in range(2)]
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import perf; "
            "perf._python_load_worker(int(sys.argv[2]), int(sys.argv[3]), "
            "float(sys.argv[4]), sys.argv[5])"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(BENCH), str(port)]
                + [str(connections // 2), str(seconds), out]
            )
            for out in outs
        ]
        for proc in procs:
            proc.wait(seconds + 60)
        latencies: list[float] = []
        errors = 0
        for out in outs:
            data = json.loads(Path(out).read_text())
            latencies += data["latencies"]
            errors += data["errors"]
    return Throughput(len(latencies) / seconds, pct(latencies, 50), pct(latencies, 99), errors)


def measure_c64(
    targets: Sequence[Service], plan: Plan, tmp: Path
) -> tuple[str, dict[str, Throughput]]:
    """Closed loop, 64 connections, `c64_seconds` per target per round; rounds alternate
    the order and the figures are the mean of rounds (p99: the worst round)."""
    script = tmp / "post.lua"
    script.write_text(_WRK_LUA.format(body=json.dumps(REQUEST.decode())))
    if shutil.which("wrk"):
        version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
        tool = f"wrk ({version.split()[1] if version.split()[1:] else '?'}, 2 threads)"

        def load(port: int) -> Throughput:
            return run_wrk(port, plan.c64_seconds, script)
    else:
        tool = "python (2 processes x 32 trio connections; wrk not installed)"

        def load(port: int) -> Throughput:
            return run_python_load(port, plan.c64_seconds)

    runs: dict[str, list[Throughput]] = {t.name: [] for t in targets}
    for round_ in range(plan.c64_rounds):
        order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
        for target in order:
            cpu_before = math.nan if target.pid is None else cpu_seconds(target.pid)
            result = load(target.port)
            if target.pid is not None:
                served = result.rps * plan.c64_seconds
                cpu = cpu_seconds(target.pid) - cpu_before
                result = replace(result, cpu_ms=1000 * cpu / served if served else math.nan)
            runs[target.name].append(result)
            time.sleep(1)
    return tool, {
        name: Throughput(
            rps=statistics.fmean(r.rps for r in rs),
            p50_ms=statistics.fmean(r.p50_ms for r in rs),
            p99_ms=max(r.p99_ms for r in rs),
            errors=sum(r.errors for r in rs),
            cpu_ms=statistics.fmean(r.cpu_ms for r in rs),
        )
        for name, rs in runs.items()
    }


def measure_c1_wrk(
    targets: Sequence[Service], plan: Plan, tmp: Path
) -> dict[str, Throughput] | None:
    """Concurrency 1 again, with wrk as the client: a Python client shares the two cores
    with the proxy and the upstream, and its own scheduling lands in the figures.  Rounds
    of `c1_wrk_seconds` per target, the order alternating; medians of the rounds.  None
    without wrk."""
    if not shutil.which("wrk"):
        return None
    script = tmp / "post-c1.lua"
    script.write_text(_WRK_LUA.format(body=json.dumps(REQUEST.decode())))
    runs: dict[str, list[Throughput]] = {t.name: [] for t in targets}
    for round_ in range(plan.c1_wrk_rounds):
        order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
        for target in order:
            runs[target.name].append(run_wrk(target.port, plan.c1_wrk_seconds, script, 1))
    return {
        name: Throughput(
            rps=statistics.median(r.rps for r in rs),
            p50_ms=statistics.median(r.p50_ms for r in rs),
            p99_ms=statistics.median(r.p99_ms for r in rs),
            errors=sum(r.errors for r in rs),
        )
        for name, rs in runs.items()
    }


@dataclass(frozen=True, slots=True)
class OpenStreams:
    wanted: int
    opened: int
    flowing: int
    idle_mb: float
    open_mb: float
    seconds_to_open: float
    note: str = ""


async def measure_open_streams(target: Service, count: int) -> OpenStreams:
    """Open `count` slow streams, wait until each has its first event, then read RSS."""
    idle = target.rss()
    first = 0
    marks_seen: dict[int, int] = {}
    failures: list[str] = []
    gate = trio.Semaphore(64)
    all_open = trio.Event()
    started = trio.current_time()

    async def one(i: int) -> None:
        nonlocal first
        counted = False

        def on_data(response: Response) -> None:
            nonlocal first, counted
            marks_seen[i] = len(response.marks)
            if response.marks and not counted:
                counted = True
                first += 1
                gate.release()
                if first == count:
                    all_open.set()

        await gate.acquire()
        try:
            stream, conn = await trio_connect(target.port)
            async with stream:
                response = await trio_request(stream, conn, target.port, SLOW_REQUEST, on_data)
                if response.status != 200:
                    failures.append(f"HTTP {response.status}")
        except (OSError, ConnectionError, h11.ProtocolError) as exc:
            failures.append(type(exc).__name__)
        finally:
            if not counted:
                gate.release()

    note = ""
    open_mb = math.nan
    flowing = 0
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
        with trio.move_on_after(60 + count / 10):
            await all_open.wait()
        opened = first
        seconds = trio.current_time() - started
        if opened < count:
            note = f"{count - opened} never got a first event"
            if failures:
                note += f" ({failures[0]} and {len(failures) - 1} more failures)"
        # Streams that keep receiving over 3 s are flowing, not just open.
        before = dict(marks_seen)
        samples = []
        for _ in range(3):
            await trio.sleep(1)
            samples.append(target.rss())
        open_mb = max(samples)
        flowing = sum(1 for i, n in marks_seen.items() if n > before.get(i, 0))
        nursery.cancel_scope.cancel()
    return OpenStreams(count, opened, flowing, idle, open_mb, seconds, note)


@dataclass
class Soak:
    samples: list[tuple[float, float]] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    skipped: int = 0


async def soak(targets: Sequence[Service], plan: Plan) -> dict[str, Soak]:
    """All proxies at `soak_rate` req/s each at once (one in ten a short stream), RSS
    sampled every `sample_every` s.  Paced open-ish loop: 32 workers per target, each
    keeps its own schedule and skips ahead rather than bursting when late."""
    results = {t.name: Soak() for t in targets}
    workers = 32
    start = trio.current_time()
    end = start + plan.soak_seconds

    async def worker(target: Service, j: int) -> None:
        result = results[target.name]
        period = workers / plan.soak_rate
        due = start + j / plan.soak_rate
        k = j
        while due < end:
            try:
                stream, conn = await trio_connect(target.port)
                async with stream:
                    while due < end:
                        await trio.sleep_until(due)
                        body = STREAM_REQUEST if k % 10 == 0 else REQUEST
                        response = await trio_request(stream, conn, target.port, body)
                        if response.status == 200:
                            result.ok += 1
                        else:
                            result.errors += 1
                        k += workers
                        due += period
                        now = trio.current_time()
                        if due < now - 1:
                            behind = math.ceil((now - due) / period)
                            result.skipped += behind
                            due += behind * period
                        if not response.reusable:
                            break
            except (OSError, ConnectionError, h11.ProtocolError):
                result.errors += 1
                due += period

    async def sampler() -> None:
        tick = start
        while tick <= end:
            await trio.sleep_until(tick)
            for target in targets:
                results[target.name].samples.append((tick - start, target.rss()))
            tick += plan.sample_every

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        for target in targets:
            for j in range(workers):
                nursery.start_soon(worker, target, j)
    return results


# -- report -------------------------------------------------------------------------------


def fmt(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def ratio(value: float, base: float | None) -> str:
    # Ratios of differences to a zero or negative difference (noise) mean nothing.
    if base is None or math.isnan(value) or math.isnan(base) or base <= 0:
        return "-"
    return f"{value / base:.2f}"


class Table:
    """Rows of figures, one per target, each figure followed by its ratio columns."""

    def __init__(self, title: str, columns: Sequence[tuple[str, bool, bool]]) -> None:
        # columns: (name, show x direct, show x nginx)
        self.title = title
        self.columns = columns
        self.rows: list[tuple[str, list[str]]] = []

    def add(
        self,
        name: str,
        values: Sequence[float],
        direct: Sequence[float] | None,
        nginx: Sequence[float] | None,
        digits: int | Sequence[int] = 2,
    ) -> None:
        places = [digits] * len(values) if isinstance(digits, int) else list(digits)
        cells = []
        for i, (_, show_d, show_n) in enumerate(self.columns):
            cells.append(fmt(values[i], places[i]))
            if show_d:
                cells.append(ratio(values[i], direct[i] if direct else None))
            if show_n:
                cells.append(ratio(values[i], nginx[i] if nginx else None))
        self.rows.append((name, cells))

    def note(self, name: str, text: str) -> None:
        self.rows.append((name, [text]))

    def render(self) -> str:
        header = []
        for column, show_d, show_n in self.columns:
            header.append(column)
            if show_d:
                header.append("x d")
            if show_n:
                header.append("x n")
        widths = [max(len(h), 6) for h in header]
        for _, cells in self.rows:
            if len(cells) == len(header):
                widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
        lines = [
            self.title,
            "  "
            + "target".ljust(11)
            + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)),
        ]
        for name, cells in self.rows:
            if len(cells) == len(header):
                body = "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
            else:
                body = cells[0]
            lines.append("  " + name.ljust(11) + body)
        return "\n".join(lines)


def versions(services: Sequence[Service]) -> str:
    names = ["trio", "hypercorn", "httpx", "h11", "quart-trio"]
    parts = [f"python {platform.python_version()}"]
    parts += [f"{n} {importlib.metadata.version(n)}" for n in names]
    parts += [f"{s.name} {s.version}" for s in services if s.version]
    return ", ".join(parts)


def machine() -> str:
    cores = os.cpu_count()
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return f"{cores} cores, {mem_kib / 1024 / 1024:.0f} GiB"


@contextlib.contextmanager
def services(
    plan: Plan, tmp: Path, with_litellm: bool
) -> Iterator[tuple[Service, list[Service], dict[str, str]]]:
    upstream = start_upstream(tmp, plan)
    started: list[Service] = [upstream]
    missing: dict[str, str] = {}
    try:
        peers: list[Service] = []
        starters: list[tuple[str, Callable[[Path, Service], Service]]] = [
            ("zai-proxy", start_zai),
            ("nginx", start_nginx),
        ]
        if with_litellm:
            starters.append(("litellm", start_litellm))
        else:
            missing["litellm"] = "skipped (--no-litellm)"
        for name, start in starters:
            try:
                service = start(tmp, upstream)
            except Unavailable as exc:
                missing[name] = str(exc)
                continue
            started.append(service)
            peers.append(service)
        yield upstream, peers, missing
    finally:
        for service in reversed(started):
            service.stop()


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 16384:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(16384, hard), hard))


def run(plan: Plan, with_litellm: bool) -> None:
    raise_fd_limit()
    with (
        tempfile.TemporaryDirectory(prefix="zai-perf-") as tmp_name,
        services(plan, Path(tmp_name), with_litellm) as (upstream, peers, missing),
    ):
        tmp = Path(tmp_name)
        direct = Service("direct", upstream.port, None)
        targets = [direct, *peers]
        by_name = {t.name: t for t in targets}
        print(f"# perf.py  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {machine()}")
        print(f"# {versions(peers)}")
        print(
            f"# request: {len(REQUEST)}-byte OpenAI chat request, POST {PATH}; "
            f"streams {plan.stream_events} events {plan.stream_interval_ms:g} ms apart"
        )
        for name, reason in missing.items():
            print(f"# {name}: not available: {reason}")
        print("# x d = ratio to direct, x n = ratio to nginx", flush=True)

        def ref(get: Callable[[str], list[float]]) -> tuple[list[float] | None, ...]:
            return tuple(get(n) if n in by_name else None for n in ("direct", "nginx"))

        def latency_table(title: str, p50s: dict[str, float], p99s: dict[str, float]) -> None:
            """p50 and p99 per target, and what each adds to direct's."""

            def row(name: str) -> list[float]:
                p50, p99 = p50s[name], p99s[name]
                return [p50, p99, p50 - p50s["direct"], p99 - p99s["direct"]]

            table = Table(
                title,
                [
                    ("p50", True, True),
                    ("p99", True, True),
                    ("added p50", False, True),
                    ("added p99", False, True),
                ],
            )
            d_ref, n_ref = ref(row)
            for t in targets:
                table.add(t.name, row(t.name), d_ref, n_ref)
            print(table.render(), flush=True)

        # c=1 latency, a Python client, targets interleaved request by request
        lat = measure_c1(targets, plan)
        latency_table(
            f"\nconcurrency 1, non-streaming: {plan.c1_requests} requests per target, "
            "interleaved (ms)",
            {name: pct(values, 50) for name, values in lat.items()},
            {name: pct(values, 99) for name, values in lat.items()},
        )

        # c=1 latency again, wrk as the client
        by_wrk = measure_c1_wrk(targets, plan, tmp)
        if by_wrk is None:
            print("\nconcurrency 1 by wrk: wrk is not installed (apt install wrk)")
        else:
            latency_table(
                f"\nconcurrency 1, non-streaming, wrk as the client: median of "
                f"{plan.c1_wrk_rounds} rounds of {plan.c1_wrk_seconds:g} s per target (ms)",
                {name: r.p50_ms for name, r in by_wrk.items()},
                {name: r.p99_ms for name, r in by_wrk.items()},
            )

        # streaming latency at c=1
        st = measure_streams_c1(targets, plan)
        sd = st["direct"]
        base = [
            pct(sd.ttft_ms, 50),
            pct(sd.ttft_ms, 99),
            pct(sd.delay_ms, 50),
            pct(sd.delay_ms, 99),
            pct(sd.gap_ms, 50),
            pct(sd.gap_ms, 99),
        ]

        def stream_row(name: str) -> list[float]:
            s = st[name]
            raw = [
                pct(s.ttft_ms, 50),
                pct(s.ttft_ms, 99),
                pct(s.delay_ms, 50),
                pct(s.delay_ms, 99),
                pct(s.gap_ms, 50),
                pct(s.gap_ms, 99),
            ]
            added = [r - b for r, b in zip(raw, base, strict=True)]
            return [raw[0], *added, max(s.gap_ms, default=math.nan)]

        table = Table(
            f"\nstreaming, one at a time: {plan.streams} streams per target (ms; added = "
            "minus direct; delay = upstream write to client read, per event)",
            [
                ("ttft p50", True, False),
                ("+ttft p50", False, True),
                ("+ttft p99", False, True),
                ("+delay p50", False, True),
                ("+delay p99", False, True),
                ("+gap p50", False, False),
                ("+gap p99", False, False),
                ("max gap", False, False),
            ],
        )
        d_ref, n_ref = ref(stream_row)
        for t in targets:
            table.add(t.name, stream_row(t.name), d_ref, n_ref)
        print(table.render())
        for t in targets:
            s = st[t.name]
            held = "none held back" if s.received == s.sent else "EVENTS MISSING"
            print(f"  {t.name:<11}events received {s.received} of {s.sent}: {held}")
        sys.stdout.flush()

        # c=64 throughput
        tool, tput = measure_c64(targets, plan, tmp)

        def tput_row(name: str) -> list[float]:
            r = tput[name]
            return [r.rps, r.p50_ms, r.p99_ms, r.cpu_ms, float(r.errors)]

        table = Table(
            f"\nconcurrency 64, non-streaming: {plan.c64_rounds} x {plan.c64_seconds:g} s per "
            f"target, load by {tool}",
            [
                ("req/s", True, True),
                ("p50 ms", True, True),
                ("p99 ms", True, True),
                ("cpu ms/req", False, True),
                ("errors", False, False),
            ],
        )
        d_ref, n_ref = ref(tput_row)
        for t in targets:
            table.add(t.name, tput_row(t.name), d_ref, n_ref, digits=(0, 2, 2, 3, 0))
        print(table.render(), flush=True)

        # soak
        soaked = trio.run(soak, peers, plan)
        skip = max(1, len(next(iter(soaked.values())).samples) // 10) if soaked else 0

        def soak_row(name: str) -> list[float]:
            samples = soaked[name].samples[skip:]
            if not samples:
                return [math.nan] * 4
            first, last = samples[0][1], samples[-1][1]
            return [first, last, 100 * (last - first) / first, slope_per_minute(samples)]

        table = Table(
            f"\nsoak: {plan.soak_seconds:g} s, {plan.soak_rate:g} req/s to each proxy at once "
            f"(1 in 10 streamed); RSS MB every {plan.sample_every:g} s, start after "
            f"{skip * plan.sample_every:g} s",
            [
                ("start MB", False, True),
                ("end MB", False, True),
                ("change %", False, False),
                ("MB/min", False, False),
            ],
        )
        n_ref2 = soak_row("nginx") if "nginx" in by_name else None
        for t in peers:
            table.add(t.name, soak_row(t.name), None, n_ref2)
        print(table.render())
        for t in peers:
            r = soaked[t.name]
            print(
                f"  {t.name:<11}{r.ok} ok, {r.errors} errors, {r.skipped} skipped (late); RSS: "
                + " ".join(f"{mb:.0f}" for _, mb in r.samples)
            )
        sys.stdout.flush()

        # open streams
        opened = {t.name: trio.run(measure_open_streams, t, plan.open_streams) for t in peers}

        def open_row(name: str) -> list[float]:
            o = opened[name]
            return [o.idle_mb, o.open_mb, float(o.opened), float(o.flowing), o.seconds_to_open]

        table = Table(
            f"\n{plan.open_streams} concurrent open streams (1 event/s each): RSS MB of the "
            "proxy's process tree",
            [
                ("before MB", False, True),
                ("open MB", False, True),
                ("opened", False, False),
                ("flowing", False, False),
                ("open s", False, False),
            ],
        )
        n_ref3 = open_row("nginx") if "nginx" in by_name else None
        for t in peers:
            table.add(t.name, open_row(t.name), None, n_ref3, digits=(1, 1, 0, 0, 1))
            if opened[t.name].note:
                print(f"  {t.name}: {opened[t.name].note}")
        print(table.render())
        for name, reason in missing.items():
            print(f"{name}: not available: {reason}")


# -- profile ------------------------------------------------------------------------------


_LINE = re.compile(r":\d+\)$")
_ROOT_FRAMES = ("<module> ", "main (zai_proxy/cli.py", "run (trio/", "unrolled_run (trio/")


def _package(frame: str) -> str:
    """`f (trio/_core/_run.py:12)` -> `trio`; the standard library's `json/decoder.py` -> json."""
    where = frame.rpartition("(")[2]
    return where.split("/")[0].split(".")[0].split(":")[0] or "?"


def summarise_profile(raw: Path, top: int = 15) -> str:
    """Self and cumulative share per function (lines merged) and self share per package,
    from py-spy's collapsed stacks."""
    self_count: dict[str, int] = {}
    cumulative: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", f.strip()) for f in stack.split(";")]
        # py-spy may lead with the thread or process: not a function.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_count[frames[-1]] = self_count.get(frames[-1], 0) + count
        leaf = _package(frames[-1])
        packages[leaf] = packages.get(leaf, 0) + count
        for f in set(frames):
            if not f.startswith(_ROOT_FRAMES):
                cumulative[f] = cumulative.get(f, 0) + count
    if not total:
        return "  no samples"

    def ranked(counts: dict[str, int], n: int) -> list[str]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        return [f"  {100 * c / total:6.1f}  {name}" for name, c in best]

    return "\n".join(
        [f"  {total} samples (idle waits excluded)", "  self %  package"]
        + ranked(packages, 10)
        + ["  self %  function (file)"]
        + ranked(self_count, top)
        + ["  cumulative %  function (file), trio's run loop left out"]
        + ranked(cumulative, top + 10)
    )


def profile(out_dir: Path, seconds: float) -> None:
    """py-spy on zai-proxy under the c=1 and c=64 non-streaming loads."""
    py_spy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/python -m pip install py-spy")
    raise_fd_limit()
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan.quick()
    with (
        tempfile.TemporaryDirectory(prefix="zai-prof-") as tmp_name,
        services(plan, Path(tmp_name), with_litellm=False) as (_, peers, missing),
    ):
        zai = next((p for p in peers if p.name == "zai-proxy"), None)
        if zai is None:
            raise SystemExit(f"zai-proxy did not start: {missing.get('zai-proxy')}")
        for label in ("c1", "c64"):
            raw = out_dir / f"{label}.txt"
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(zai.pid), "--format", "raw", "--rate", "250"]
                + ["--duration", str(math.ceil(seconds) + 1), "--output", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            cpu_before = cpu_seconds(zai.pid or 0)
            deadline = time.monotonic() + seconds
            if label == "c1":
                count = 0
                with BlockingClient(zai.port) as client:
                    while time.monotonic() < deadline:
                        client.request(REQUEST)
                        count += 1
                rps = count / seconds
                load = f"{rps:.0f} req/s, one connection"
            else:
                script = Path(tmp_name) / "post.lua"
                script.write_text(_WRK_LUA.format(body=json.dumps(REQUEST.decode())))
                result = run_wrk(zai.port, seconds, script)
                rps = result.rps
                load = f"{rps:.0f} req/s, wrk 64 connections"
            cpu_ms = 1000 * (cpu_seconds(zai.pid or 0) - cpu_before) / (rps * seconds)
            load += f", {cpu_ms:.2f} CPU ms per request (under py-spy)"
            spy.wait(seconds + 30)
            print(f"\n{label}: {load}; raw stacks in {raw}")
            print(summarise_profile(raw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="everything short: a smoke check")
    parser.add_argument("--soak", type=float, default=None, help="soak seconds (default 600)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (reported)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="instead of the comparison, py-spy zai-proxy into DIR",
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    args = parser.parse_args()
    if args.profile is not None:
        profile(args.profile, args.profile_seconds)
        return
    plan = Plan.quick() if args.quick else Plan.full(600.0)
    if args.soak is not None:
        plan = replace(plan, soak_seconds=args.soak)
    run(plan, with_litellm=not args.no_litellm)


if __name__ == "__main__":
    main()
