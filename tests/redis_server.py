"""A real `redis-server` for tests: its own process on a free loopback port, nothing on disk.

    server = RedisServer.start()      # raises if redis-server is missing
    server.url                        # redis://127.0.0.1:PORT/0
    server.kill(); server.restart()   # the same port again, empty (no persistence)
    server.pause(); server.resume()   # SIGSTOP / SIGCONT: a Redis that hangs
    server.stop()

The `redis_server` fixture in conftest.py wraps this (skips without the program, fails
under CI=true).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

__all__ = ["RedisServer", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    program: str
    port: int
    password: str | None = None
    directory: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="zai-redis-"))
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, program: str = "redis-server", *, password: str | None = None) -> RedisServer:
        server = cls(program=program, port=free_port(), password=password)
        server.restart()
        return server

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self, timeout: float = 10.0) -> None:
        """Start (again) on the same port, with no data: no RDB, no AOF."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        command = [
            self.program,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def kill(self) -> None:
        """SIGKILL: the server vanishes with its data, mid-whatever."""
        if self.process is None:
            return
        if self.process.poll() is None:
            # A paused process must be woken to die promptly.
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, like a hung server."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.kill()
