"""A redis-server of the demo's own: a child process on a free loopback port, nothing on disk.

```
serve_redis  (nursery.start: started(RunningRedis) once it answers PING)
└─ redis-server --bind 127.0.0.1 --port P --save "" --appendonly no --dir <its temp dir>
```
- The port is found free (bind to port 0, close) just before the start: redis-server cannot
  report a port it chose (its `--port 0` means "no TCP").  If another program takes the
  port in between, redis-server exits and the next attempt takes another one.
- Every wait has a deadline: the start (PING answered) `start_timeout`, the kill
  KILL_TIMEOUT.  What fails to start raises `RedisUnavailable`, with one line saying why.
- It runs in a session of its own, so a terminal's Ctrl-C reaches only the demo, which
  stops it last, after the proxies have drained.
- Cancellation kills it (SIGKILL: it holds nothing worth saving) and waits for it,
  shielded; its temp dir (log file only) goes with it.  If it dies on its own, that is
  logged and the task returns: the proxies carry on without it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from .errors import RedisUnavailable

__all__ = ["RedisUnavailable", "RunningRedis", "find_redis_server", "serve_redis"]

log = logging.getLogger("zai_proxy.redis")

PROGRAM = "redis-server"
HOST = "127.0.0.1"
START_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0
# Tries with a fresh port when redis-server exits at start (its port was taken meanwhile).
START_ATTEMPTS = 3
_POLL = 0.02


@dataclass(frozen=True, slots=True)
class RunningRedis:
    port: int
    pid: int
    host: str = HOST

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def find_redis_server(path: str | None = None) -> str | None:
    """The redis-server program on `path` (a PATH-style string; None: this process's PATH)."""
    return shutil.which(PROGRAM, path=path)


async def serve_redis(
    program: str,
    *,
    start_timeout: float = START_TIMEOUT,
    task_status: trio.TaskStatus[RunningRedis] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run redis-server until cancelled; `started()` once it answers PING."""
    with tempfile.TemporaryDirectory(prefix="zai-proxy-redis-") as directory:
        process, running = await _start(program, Path(directory), start_timeout)
        try:
            task_status.started(running)
            code = await process.wait()
            log.error(
                "redis-server exited on its own; the proxies carry on without it",
                extra={"code": code, "pid": running.pid, "port": running.port},
            )
        finally:
            await _kill(process)


def _command(program: str, port: int, directory: Path) -> list[str]:
    return [
        program,
        "--bind", HOST,
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--daemonize", "no",
        "--logfile", str(directory / "redis.log"),
        "--loglevel", "warning",
    ]  # fmt: skip


async def _start(
    program: str, directory: Path, start_timeout: float
) -> tuple[trio.Process, RunningRedis]:
    last = "no attempt"
    for _ in range(START_ATTEMPTS):
        port = await _free_port()
        try:
            process = await trio.lowlevel.open_process(
                _command(program, port, directory),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            raise RedisUnavailable(
                f"{program} could not be run: {error.strerror or error}"
            ) from error
        ready = False
        try:
            with trio.move_on_after(start_timeout) as waited:
                ready = await _ready(process, port)
        finally:
            if not ready:
                await _kill(process)
        if ready:
            return process, RunningRedis(port=port, pid=process.pid)
        if waited.cancelled_caught:
            raise RedisUnavailable(
                f"redis-server did not answer on {HOST}:{port} within {start_timeout:g}s"
            )
        last = f"exited with code {process.returncode}: {await _last_log_line(directory)}"
    raise RedisUnavailable(f"redis-server {last}")


async def _ready(process: trio.Process, port: int) -> bool:
    """True once redis-server answers PING; False if it exits first."""
    while process.returncode is None:
        if await _pong(port):
            return True
        await trio.sleep(_POLL)
    return False


async def _pong(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(HOST, port)
    except OSError:
        return False
    async with stream:
        try:
            await stream.send_all(b"PING\r\n")
            reply = await stream.receive_some(64)
        except (OSError, trio.BrokenResourceError):
            return False
    return reply.startswith(b"+PONG")


async def _free_port() -> int:
    with trio.socket.socket() as sock:
        await sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


async def _last_log_line(directory: Path) -> str:
    try:
        text = await trio.Path(directory / "redis.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(empty log)"


async def _kill(process: trio.Process) -> None:
    if process.returncode is None:
        process.kill()
    with trio.move_on_after(KILL_TIMEOUT, shield=True):
        await process.wait()
    if process.returncode is None:
        log.warning("redis-server did not die after SIGKILL", extra={"pid": process.pid})
