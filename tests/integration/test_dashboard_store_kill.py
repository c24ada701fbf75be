"""SIGKILL in the middle of writing: the database reopens clean, short of at most the
snapshot being written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from zai_proxy.dashboard import Snapshot, Store

DAY = 24 * 3600.0

WRITER = """
import sys
from zai_proxy.dashboard.snapshot import Snapshot
from zai_proxy.dashboard.store import Store

store = Store(sys.argv[1], retention_5s=86400.0, retention_1m=604800.0)
i = int(sys.argv[2])
while True:
    store.insert(Snapshot(ts=1e9 + 5 * i, variant="production", interval_s=5.0, req_rate=i))
    # Printed only once committed: every number we read is a promise.
    print(i, flush=True)
    i += 1
"""


async def write_until_killed(path: Path, first: int, at_least: int) -> int:
    """Run the writer, SIGKILL it once it has committed `at_least` rows; return the last
    row it reported committed."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WRITER, str(path), str(first)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    buffer = b""
    try:
        with trio.fail_after(20):
            while buffer.count(b"\n") < at_least:
                chunk = await process.stdout.receive_some()
                assert chunk, "the writer stopped early"
                buffer += chunk
            process.kill()
            await process.wait()
            # Whatever it printed before dying is in the pipe still.
            while chunk := await process.stdout.receive_some():
                buffer += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    complete = buffer.split(b"\n")[:-1]
    return int(complete[-1])


async def test_kill_during_writes_loses_at_most_the_last_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.db"
    first = 0
    for _ in range(3):
        last_reported = await write_until_killed(path, first, at_least=200)
        store = Store(str(path), retention_5s=DAY, retention_1m=7 * DAY)
        try:
            assert store.moved_aside is None
            rows = store._db.execute("SELECT data FROM metrics_5s ORDER BY ts").fetchall()
            values = [int(Snapshot.from_json(row[0]).req_rate or 0) for row in rows]
            # Every reported row is there, in order, with nothing missing in between;
            # the one being written when the kill came may or may not be.
            assert values == list(range(len(values)))
            assert last_reported + 1 <= len(values) <= last_reported + 2
            first = len(values)
        finally:
            store.close()
