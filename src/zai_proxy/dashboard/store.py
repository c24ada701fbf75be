"""The dashboard's history: SQLite in WAL mode, 5 s rows for a day, 1 min rows for a week.

```
metrics_5s  one row per snapshot          kept RETENTION_5S (24 h)
metrics_1m  one row per variant per minute kept RETENTION_1M (7 d), made by `downsample`
```
Each row holds the snapshot's JSON as sent to the page, so a week-long query is a string
join, not 20 000 JSON round trips.  A range up to an hour reads the 5 s table, a longer
one the 1 min table plus, for the minutes not yet downsampled, averages made on the fly,
so every range runs up to now.

Durability: every insert is its own transaction (autocommit), and WAL with
synchronous=NORMAL keeps each commit across a crash or kill of the process (only a
power cut can take the last few back).  At start-up a file that is not a database or
fails `quick_check` is moved aside (`<path>.corrupt-<unix time>`) with a warning, and a
fresh one is made; a path that cannot be written stops start-up with `StoreError`, a
`SettingsError` naming DB_PATH, so the CLI reports it like any other bad setting.

`Store` is synchronous with one connection; `AsyncStore` runs it in a worker thread,
one call at a time.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from ..errors import StoreError
from .snapshot import Snapshot, average

__all__ = [
    "LONG_RANGE",
    "AsyncStore",
    "Maintenance",
    "Store",
    "run_maintenance",
]

log = logging.getLogger("zai_proxy.dashboard.store")

# Ranges longer than this read the one-minute table.
LONG_RANGE = 3600.0
MAINTENANCE_EVERY = 600.0
_MINUTE = 60.0

_MMAP_BYTES = 256 * 1024 * 1024
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics_5s (
    ts REAL NOT NULL,
    variant TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS metrics_5s_variant_ts ON metrics_5s (variant, ts);
CREATE INDEX IF NOT EXISTS metrics_5s_ts ON metrics_5s (ts);
CREATE TABLE IF NOT EXISTS metrics_1m (
    ts REAL NOT NULL,
    variant TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS metrics_1m_variant_ts ON metrics_1m (variant, ts);
CREATE INDEX IF NOT EXISTS metrics_1m_ts ON metrics_1m (ts);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class _Corrupt(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What one downsample-and-purge pass did."""

    minutes: int
    purged_5s: int
    purged_1m: int


class Store:
    """One SQLite connection; every method is synchronous and must not run concurrently."""

    def __init__(self, path: str, *, retention_5s: float, retention_1m: float) -> None:
        self.path = path
        self.retention_5s = retention_5s
        self.retention_1m = retention_1m
        self.moved_aside: str | None = None
        self._db = self._open()

    # -- opening ----------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        target = Path(self.path)
        if target.is_dir():
            raise StoreError(self.path, "it is a directory")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StoreError(self.path, "part of its directory path is a file") from exc
        except OSError as exc:
            raise StoreError(self.path, f"cannot create its directory: {_reason(exc)}") from exc
        try:
            return self._connect()
        except _Corrupt as exc:
            self.moved_aside = self._move_aside(str(exc))
            try:
                return self._connect()
            except _Corrupt as again:
                raise StoreError(
                    self.path, f"still unreadable after a fresh start: {again}"
                ) from None

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot open it: {exc}") from exc
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(self.path, f"cannot switch it to WAL mode (got {mode!r})")
            db.execute("PRAGMA synchronous=NORMAL")
            # A week of minute rows is ~25 MB of JSON: reading it through a memory map
            # instead of read() calls halves the 7d query.
            db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            check = db.execute("PRAGMA quick_check").fetchall()
            if [row[0] for row in check] != ["ok"]:
                raise _Corrupt("; ".join(str(row[0]) for row in check[:3]))
            db.executescript(_SCHEMA)
            # A real write, so a read-only file or directory fails here and not at the
            # first snapshot.
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', ?)",
                (str(time.time()),),
            )
        except (StoreError, _Corrupt):
            db.close()
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise _Corrupt(str(exc)) from exc
            raise StoreError(self.path, f"cannot write it: {exc}") from exc
        return db

    def _move_aside(self, problem: str) -> str:
        aside = f"{self.path}.corrupt-{int(time.time())}"
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
        except OSError as exc:
            raise StoreError(
                self.path, f"it is corrupt ({problem}) and cannot be moved aside: {_reason(exc)}"
            ) from exc
        log.warning(
            "dashboard database was corrupt: moved aside, starting a new one",
            extra={"db_path": self.path, "moved_to": aside, "problem": problem},
        )
        return aside

    def close(self) -> None:
        self._db.close()

    # -- writing ----------------------------------------------------------------------

    def insert(self, snapshot: Snapshot) -> None:
        """Store one snapshot; committed when this returns."""
        self._db.execute(
            "INSERT OR REPLACE INTO metrics_5s (ts, variant, data) VALUES (?, ?, ?)",
            (snapshot.ts, snapshot.variant, snapshot.to_json()),
        )

    def insert_many(self, snapshots: Iterable[Snapshot], *, table: str = "metrics_5s") -> None:
        """Bulk load in one transaction (benchmarks and tests)."""
        if table not in ("metrics_5s", "metrics_1m"):
            raise ValueError(f"no table {table!r}")
        with self._transaction():
            self._db.executemany(
                f"INSERT OR REPLACE INTO {table} (ts, variant, data) VALUES (?, ?, ?)",
                ((s.ts, s.variant, s.to_json()) for s in snapshots),
            )

    def maintain(self, now: float) -> Maintenance:
        """Downsample finished minutes, then drop rows past their retention."""
        minutes = self.downsample(now)
        purged_5s, purged_1m = self.purge(now)
        self.checkpoint()
        return Maintenance(minutes=minutes, purged_5s=purged_5s, purged_1m=purged_1m)

    def downsample(self, now: float) -> int:
        """Average every finished minute not yet in metrics_1m; returns minutes written.

        The last minute already written is done again, in case a row for it came late.
        """
        end = _minute(now)  # minutes starting before this have ended
        last = self._db.execute("SELECT max(ts) FROM metrics_1m").fetchone()[0]
        if last is None:
            first = self._db.execute("SELECT min(ts) FROM metrics_5s").fetchone()[0]
            if first is None:
                return 0
            start = _minute(first)
        else:
            start = float(last)
        rows = self._db.execute(
            "SELECT data FROM metrics_5s WHERE ts >= ? AND ts < ? ORDER BY variant, ts",
            (start, end),
        ).fetchall()
        minutes = _by_minute(Snapshot.from_json(row[0]) for row in rows)
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO metrics_1m (ts, variant, data) VALUES (?, ?, ?)",
                ((s.ts, s.variant, s.to_json()) for s in minutes),
            )
        return len(minutes)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it.

        SQLite checkpoints on its own as the WAL grows, but never shrinks the file; after a
        purge or a bulk load this keeps reads on the memory-mapped main file.
        """
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def purge(self, now: float) -> tuple[int, int]:
        with self._transaction():
            old_5s = self._db.execute(
                "DELETE FROM metrics_5s WHERE ts < ?", (now - self.retention_5s,)
            ).rowcount
            old_1m = self._db.execute(
                "DELETE FROM metrics_1m WHERE ts < ?", (now - self.retention_1m,)
            ).rowcount
        return old_5s, old_1m

    # -- reading ----------------------------------------------------------------------

    def query_json(self, range_s: float, variant: str, now: float) -> bytes:
        """The snapshots of the last `range_s` seconds as a JSON array (UTF-8), oldest first.

        `variant` is "production", "canary" or "all".  Bytes, straight from SQLite: a week
        is ~25 MB, and every copy of it (decode, concatenate, encode) costs milliseconds.
        """
        parts = [row[2] for row in self._rows(range_s, variant, now, raw=True)]
        if not parts:
            return b"[]"
        parts[0] = b"[" + parts[0]
        parts[-1] = parts[-1] + b"]"
        return b",".join(parts)

    def query(self, range_s: float, variant: str, now: float) -> list[Snapshot]:
        return [Snapshot.from_json(row[2]) for row in self._rows(range_s, variant, now)]

    def _rows(
        self, range_s: float, variant: str, now: float, *, raw: bool = False
    ) -> list[tuple[float, str, Any]]:
        """(ts, variant, JSON) rows, sorted by ts then variant; the JSON as bytes if `raw`."""
        since = now - range_s
        args: list[object]
        if variant == "all":
            where, args = "ts >= ?", [since]
        else:
            where, args = "variant = ? AND ts >= ?", [variant, since]
        if range_s <= LONG_RANGE:
            return self._select("metrics_5s", where, args, raw)
        rows = self._select("metrics_1m", where, args, raw)
        tail = [
            (ts, name, data.encode() if raw else data)
            for ts, name, data in self._recent_minutes(since, variant)
        ]
        if tail and rows and tail[0][:2] < rows[-1][:2]:
            # One variant's downsampling lags the other's: interleave.
            return list(heapq.merge(rows, tail, key=lambda row: (row[0], row[1])))
        return rows + tail

    def _select(
        self, table: str, where: str, args: Sequence[object], raw: bool
    ) -> list[tuple[float, str, Any]]:
        data = "CAST(data AS BLOB)" if raw else "data"
        sql = f"SELECT ts, variant, {data} FROM {table} WHERE {where} ORDER BY ts, variant"
        rows: list[tuple[float, str, Any]] = self._db.execute(sql, args).fetchall()
        return rows

    def _recent_minutes(self, since: float, variant: str) -> list[tuple[float, str, str]]:
        """Minute rows made now from the 5 s rows newer than each variant's last 1 min row."""
        last = dict(
            self._db.execute("SELECT variant, max(ts) FROM metrics_1m GROUP BY variant").fetchall()
        )
        if variant == "all":
            earliest = min((float(ts) + _MINUTE for ts in last.values()), default=since)
            names = set(last) | {
                row[0]
                for row in self._db.execute(
                    "SELECT DISTINCT variant FROM metrics_5s WHERE ts >= ?",
                    (max(since, earliest),),
                )
            }
        else:
            names = {variant}
        out: list[tuple[float, str, str]] = []
        for name in sorted(names):
            start = max(since, float(last[name]) + _MINUTE) if name in last else since
            rows = self._db.execute(
                "SELECT data FROM metrics_5s WHERE variant = ? AND ts >= ? ORDER BY ts",
                (name, start),
            ).fetchall()
            for snapshot in _by_minute(Snapshot.from_json(row[0]) for row in rows):
                out.append((snapshot.ts, snapshot.variant, snapshot.to_json()))
        out.sort(key=lambda row: (row[0], row[1]))
        return out

    def latest(self) -> dict[str, Snapshot]:
        """The newest 5 s snapshot of each variant."""
        rows = self._db.execute(
            "SELECT data FROM metrics_5s AS m WHERE ts = "
            "(SELECT max(ts) FROM metrics_5s WHERE variant = m.variant)"
        ).fetchall()
        return {s.variant: s for s in (Snapshot.from_json(row[0]) for row in rows)}

    def count(self, table: str = "metrics_5s") -> int:
        if table not in ("metrics_5s", "metrics_1m"):
            raise ValueError(f"no table {table!r}")
        return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def size_bytes(self) -> int:
        """Bytes on disk, WAL included.  Reads file sizes only, so any thread may call it."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(self.path + suffix).st_size
            except OSError:
                pass
        return total

    # -- helpers ----------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def _minute(ts: float) -> float:
    return math.floor(ts / _MINUTE) * _MINUTE


def _by_minute(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    """Average snapshots per (variant, minute); the input is sorted by variant, then ts."""
    out: list[Snapshot] = []
    group: list[Snapshot] = []
    for snapshot in snapshots:
        if group and (snapshot.variant, _minute(snapshot.ts)) != (
            group[0].variant,
            _minute(group[0].ts),
        ):
            out.append(average(group, _minute(group[0].ts)))
            group = []
        group.append(snapshot)
    if group:
        out.append(average(group, _minute(group[0].ts)))
    return out


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class AsyncStore:
    """`Store` for trio code: each call runs in a worker thread, one at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: str, *, retention_5s: float, retention_1m: float) -> AsyncStore:
        store = await trio.to_thread.run_sync(
            lambda: Store(path, retention_5s=retention_5s, retention_1m=retention_1m)
        )
        return cls(store)

    async def insert(self, snapshot: Snapshot) -> None:
        await trio.to_thread.run_sync(self.store.insert, snapshot, limiter=self._limiter)

    async def maintain(self, now: float) -> Maintenance:
        return await trio.to_thread.run_sync(self.store.maintain, now, limiter=self._limiter)

    async def query_json(self, range_s: float, variant: str, now: float) -> bytes:
        return await trio.to_thread.run_sync(
            self.store.query_json, range_s, variant, now, limiter=self._limiter
        )

    async def latest(self) -> dict[str, Snapshot]:
        return await trio.to_thread.run_sync(self.store.latest, limiter=self._limiter)

    def size_bytes(self) -> int:
        return self.store.size_bytes()

    async def aclose(self) -> None:
        with trio.move_on_after(5, shield=True):
            await trio.to_thread.run_sync(self.store.close, limiter=self._limiter)


class _Maintainable(Protocol):
    async def maintain(self, now: float) -> object: ...


async def run_maintenance(
    store: _Maintainable,
    *,
    now: Callable[[], float] = time.time,
    every: float = MAINTENANCE_EVERY,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Downsample and purge at start, then every `every` seconds on a fixed schedule."""
    next_run = trio.current_time()
    task_status.started()
    while True:
        await trio.sleep_until(next_run)
        done = await store.maintain(now())
        log.debug("store maintenance", extra={"result": repr(done)})
        next_run += every
