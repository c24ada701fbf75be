"""One target process: spawn it, wait until it answers, read its RSS, stop it."""

from __future__ import annotations

import math
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .client import BlockingClient
from .plan import HOST, REQUEST
from .procfs import rss_mb


class Unavailable(Exception):
    """A peer that could not be installed or started; the run reports it and goes on."""


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
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


def raise_fd_limit() -> None:
    """1,000 open streams per proxy need more descriptors than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 16384:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(16384, hard), hard))
