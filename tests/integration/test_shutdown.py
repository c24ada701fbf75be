"""`zai-proxy serve` as a real process: SIGTERM drains an in-flight stream, then exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import trio

from tests.conftest import UPSTREAM_KEY, StartUpstream

MESSAGE = {"model": "glm-4.6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
STREAM = {
    "model": "glm-4.6",
    "max_tokens": 256,
    "stream": True,
    "messages": [{"role": "user", "content": "A long answer, please."}],
}


async def start_serve(
    upstream_url: str, **env: str
) -> tuple[trio.Process, str, trio.abc.ReceiveStream]:
    environment = {
        **os.environ,
        "ZAI_API_KEY": UPSTREAM_KEY,
        "ZAI_TARGET_URL": upstream_url,
        "LISTEN_ADDR": "127.0.0.1:0",
        "SHUTDOWN_TIMEOUT": "20s",
        **env,
    }
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "zai_proxy", "serve"],
        env=environment,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    buffer = b""
    with trio.fail_after(20):
        while b"proxy listening" not in buffer:
            chunk = await process.stderr.receive_some()
            assert chunk, buffer.decode()
            buffer += chunk
    line = next(x for x in buffer.splitlines() if b"proxy listening" in x)
    return process, json.loads(line)["url"], process.stderr


async def test_sigterm_lets_an_in_flight_stream_finish_then_exits_0(
    start_upstream: StartUpstream,
) -> None:
    upstream = await start_upstream(stream_gap=0.25, events_per_stream=8)
    process, origin, stderr = await start_serve(upstream.url)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream(
                "POST", origin + "/api/anthropic/v1/messages", json=STREAM
            ) as response:
                chunks = response.aiter_raw()
                first = await anext(chunks)
                process.send_signal(signal.SIGTERM)
                rest = b"".join([chunk async for chunk in chunks])
        body = first + rest
        assert response.status_code == 200
        assert b"event: message_stop" in body and b"event: error" not in body
        with trio.fail_after(15):
            code = await process.wait()
        assert code == 0
        # After the drain nothing listens any more.
        port = int(origin.rsplit(":", 1)[1])
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            pass
        else:
            await stream.aclose()
            raise AssertionError("the proxy still accepts connections after SIGTERM")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_closes_idle_keep_alive_connections_and_exits_at_once(
    start_upstream: StartUpstream,
) -> None:
    # Agents hold keep-alive connections between requests; with SHUTDOWN_TIMEOUT=20s
    # the process must still exit as soon as nothing is in flight.
    upstream = await start_upstream()
    process, origin, _ = await start_serve(upstream.url)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            answered = await client.post(origin + "/api/anthropic/v1/messages", json=MESSAGE)
            health = await client.get(origin + "/healthz")
            assert answered.status_code == 200 and health.status_code == 200
            started = trio.current_time()
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                code = await process.wait()
            elapsed = trio.current_time() - started
        assert code == 0
        assert elapsed < 3.0, elapsed
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_bad_setting_stops_start_up_with_one_line() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "zai_proxy", "serve"],
        env={**os.environ, "ZAI_API_KEY": UPSTREAM_KEY, "MAX_WORKERS": "lots"},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert lines == [
        "zai-proxy: MAX_WORKERS='lots' is not valid: expected an integer >= 1 and <= 100000"
    ]


async def test_missing_key_stops_start_up_naming_it() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ZAI_API_KEY"}
    result = await trio.run_process(
        [sys.executable, "-m", "zai_proxy", "serve"],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.decode().strip().splitlines()
    assert line.startswith("zai-proxy: ZAI_API_KEY=(empty) is not valid")


async def test_flag_overrides_the_environment() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "zai_proxy", "serve", "--max-workers", "zero"],
        env={**os.environ, "ZAI_API_KEY": UPSTREAM_KEY, "MAX_WORKERS": "5"},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert "MAX_WORKERS='zero'" in result.stderr.decode()


async def test_dashboard_with_an_unusable_db_path_stops_with_one_line(tmp_path: object) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "zai_proxy", "dashboard", "--listen-addr", "127.0.0.1:0"],
        env={**os.environ, "DB_PATH": "/proc/no-such-dir/dashboard.db"},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.decode().strip().splitlines()
    assert line.startswith("zai-proxy: DB_PATH='/proc/no-such-dir/dashboard.db' is not valid")
