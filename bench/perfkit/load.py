"""Load generation: wrk or Python processes in a closed loop, and the order in which
the targets take their turns."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import trio

from .client import BlockingClient, Response, trio_connect, trio_request
from .plan import HOST, PATH, REQUEST
from .service import Service
from .stats import pct


@dataclass(frozen=True, slots=True)
class Throughput:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU time of the proxy's process tree per answered request (nan for direct).
    cpu_ms: float = math.nan

    @classmethod
    def combine(
        cls,
        runs: Sequence[Throughput],
        centre: Callable[[Iterable[float]], float],
        worst: Callable[[Iterable[float]], float],
    ) -> Throughput:
        """Rounds of one target as one: `centre` of each figure, `worst` of the p99s,
        errors summed."""
        return cls(
            rps=centre(r.rps for r in runs),
            p50_ms=centre(r.p50_ms for r in runs),
            p99_ms=worst(r.p99_ms for r in runs),
            errors=sum(r.errors for r in runs),
            cpu_ms=centre(r.cpu_ms for r in runs),
        )


def interleaved(
    targets: Sequence[Service], rounds: int, body: bytes
) -> Iterator[tuple[int, Service, Response, float]]:
    """One blocking keep-alive connection per target, one request to each per round, the
    first target of a round rotating: (round, target, response, elapsed ms)."""
    with ExitStack() as stack:
        clients = [stack.enter_context(BlockingClient(t.port)) for t in targets]
        for round_ in range(rounds):
            shift = round_ % len(targets)
            for i in range(len(targets)):
                index = (i + shift) % len(targets)
                started = time.perf_counter()
                response = clients[index].request(body)
                elapsed = (time.perf_counter() - started) * 1000
                yield round_, targets[index], response, elapsed


def alternating(targets: Sequence[Service], rounds: int) -> Iterator[Service]:
    """Each target once per round, the order reversed every other round."""
    for round_ in range(rounds):
        yield from (targets if round_ % 2 == 0 else reversed(targets))


_WRK_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client-not-used"
"""

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def has_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_version() -> str:
    words = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    return words[1] if words[1:] else "?"


def write_wrk_script(path: Path) -> Path:
    """A wrk script that POSTs the plan's non-streaming request."""
    path.write_text(_WRK_LUA.format(body=json.dumps(REQUEST.decode())))
    return path


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


def python_load_worker(port: int, connections: int, seconds: float, out: str) -> None:
    """One process of `run_python_load`: its latencies and error count as JSON in `out`."""

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
            "import sys; sys.path.insert(0, sys.argv[1]); from perfkit import load; "
            "load.python_load_worker(int(sys.argv[2]), int(sys.argv[3]), "
            "float(sys.argv[4]), sys.argv[5])"
        )
        bench = Path(__file__).resolve().parent.parent
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(bench), str(port)]
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
