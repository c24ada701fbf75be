"""Start-up failures end every command with one line naming the setting, exit status 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from tests.conftest import UPSTREAM_KEY


@contextmanager
def port_in_use() -> Iterator[int]:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


async def run(*args: str, **env: str) -> tuple[int, list[str]]:
    result = await trio.run_process(
        [sys.executable, "-m", "zai_proxy", *args],
        env={**os.environ, "ZAI_API_KEY": UPSTREAM_KEY, **env},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    # Log lines (JSON, one per line) may come first; everything else is the error.
    lines = result.stderr.decode().strip().splitlines()
    return result.returncode, [line for line in lines if not line.startswith("{")]


@pytest.mark.parametrize("command", ["serve", "dashboard"])
async def test_a_listen_addr_in_use_is_one_line_and_exit_2(command: str, tmp_path: object) -> None:
    with port_in_use() as port, trio.fail_after(30):
        code, lines = await run(
            command,
            "--listen-addr",
            f"127.0.0.1:{port}",
            DB_PATH=f"{tmp_path}/dashboard.db",
            SCRAPE_TARGETS="http://127.0.0.1:9/metrics",
        )
    assert code == 2
    assert lines == [
        f"zai-proxy: LISTEN_ADDR='127.0.0.1:{port}' cannot be bound: address already in use"
    ]


async def test_a_listen_host_that_does_not_resolve_is_one_line_and_exit_2() -> None:
    with trio.fail_after(30):
        code, lines = await run("serve", "--listen-addr", "no-such-host.invalid:0")
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith("zai-proxy: LISTEN_ADDR='no-such-host.invalid:0' cannot be bound:")
    assert UPSTREAM_KEY not in lines[0]


async def test_the_demo_names_its_port_flags_when_a_port_is_taken() -> None:
    with port_in_use() as port, trio.fail_after(60):
        code, lines = await run(
            "demo",
            "--simulate",
            "--no-agents",
            "--dashboard-port",
            "0",
            "--proxy-port",
            str(port),
            "--canary-port",
            "0",
            "--duration",
            "5",
        )
    assert code == 2
    assert len(lines) == 1 and "cannot be bound: address already in use" in lines[0]
    assert "--proxy-port" in lines[0]
