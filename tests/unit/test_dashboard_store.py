"""The SQLite history: WAL, downsampling, retention, range selection, continuity, and
what happens with a broken or unwritable file."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from zai_proxy.dashboard import Maintenance, Snapshot, Store, run_maintenance
from zai_proxy.dashboard import store as store_module
from zai_proxy.errors import SettingsError, StoreError

DAY = 24 * 3600.0
WEEK = 7 * DAY
# A minute boundary, so minute arithmetic in the tests stays readable.
NOW = 1_800_000_000.0


def snap(ts: float, variant: str = "production", **values: object) -> Snapshot:
    base: dict[str, object] = {
        "ts": ts,
        "variant": variant,
        "interval_s": 5.0,
        "targets_up": 1,
        "targets_total": 1,
        "req_rate": 1.0,
        "tokens_in": 10.0,
    }
    base.update(values)
    return Snapshot(**base)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(str(tmp_path / "dashboard.db"), retention_5s=DAY, retention_1m=WEEK)
    yield opened
    opened.close()


def test_the_database_is_in_wal_mode(store: Store) -> None:
    assert store.journal_mode() == "wal"
    other = sqlite3.connect(store.path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


def test_snapshots_come_back_oldest_first_and_filtered_by_variant(store: Store) -> None:
    for i in range(3):
        store.insert(snap(NOW - 10 + 5 * i, req_rate=float(i)))
        store.insert(snap(NOW - 10 + 5 * i, "canary", req_rate=float(10 + i)))
    everything = store.query(300, "all", NOW)
    assert [(s.ts, s.variant) for s in everything][:2] == [
        (NOW - 10, "canary"),
        (NOW - 10, "production"),
    ]
    assert [s.req_rate for s in store.query(300, "canary", NOW)] == [10.0, 11.0, 12.0]
    assert store.query_json(300, "production", NOW).startswith(b'[{"ts":')
    assert store.latest()["canary"].req_rate == 12.0


def test_downsampling_averages_each_finished_minute(store: Store) -> None:
    minute = NOW - 120
    for i in range(12):
        store.insert(snap(minute + 5 * i, req_rate=float(i % 2) * 4.0, tokens_in=10.0))
    store.insert(snap(NOW + 10))  # the current minute: not finished, not downsampled
    assert store.downsample(NOW + 30) == 1
    rows = store._db.execute("SELECT ts, data FROM metrics_1m").fetchall()
    assert len(rows) == 1 and rows[0][0] == minute
    averaged = Snapshot.from_json(rows[0][1])
    assert averaged.req_rate == pytest.approx(2.0)
    assert averaged.tokens_in == 120.0
    assert averaged.interval_s == 60.0


def test_downsampling_twice_changes_nothing(store: Store) -> None:
    for i in range(24):
        store.insert(snap(NOW - 180 + 5 * i))
    store.downsample(NOW)
    first = store._db.execute("SELECT * FROM metrics_1m ORDER BY ts").fetchall()
    store.downsample(NOW)
    assert store._db.execute("SELECT * FROM metrics_1m ORDER BY ts").fetchall() == first


def test_purge_drops_rows_past_their_retention(store: Store) -> None:
    store.insert(snap(NOW - DAY - 60))
    store.insert(snap(NOW - DAY + 60))
    store.insert_many([snap(NOW - WEEK - 60), snap(NOW - WEEK + 60)], table="metrics_1m")
    assert store.purge(NOW) == (1, 1)
    assert store.count("metrics_5s") == 1 and store.count("metrics_1m") == 1


def test_maintenance_downsamples_before_it_purges(store: Store) -> None:
    # Rows about to fall out of the 5 s table still make it into the 1 min table.
    for i in range(12):
        store.insert(snap(NOW - DAY - 120 + 5 * i))
    result = store.maintain(NOW)
    assert result.minutes == 1 and result.purged_5s == 12
    assert store.count("metrics_1m") == 1


def test_an_hour_or_less_reads_the_5s_table_and_longer_the_1m_table(store: Store) -> None:
    store.insert(snap(NOW - 600, req_rate=5.0))
    store.insert_many([snap(NOW - 1200, req_rate=60.0)], table="metrics_1m")
    store.insert_many([snap(NOW - 540, req_rate=60.0)], table="metrics_1m")
    assert [s.req_rate for s in store.query(3600, "all", NOW)] == [5.0]
    long = [s.req_rate for s in store.query(6 * 3600, "all", NOW)]
    # The 1 min rows, then the minute made on the fly from the 5 s row after them.
    assert long[:2] == [60.0, 60.0]


def test_a_long_range_runs_up_to_now_before_downsampling_catches_up(store: Store) -> None:
    # 30 minutes of 5 s rows; downsampling last ran 10 minutes ago.
    start = NOW - 1800
    for i in range(360):
        store.insert(snap(start + 5 * i, req_rate=float(i // 12)))
    store.downsample(NOW - 600)
    rows = store.query(6 * 3600, "production", NOW)
    minutes = [s.ts for s in rows]
    assert minutes == [start + 60 * m for m in range(30)]  # no gap, up to now
    assert [s.req_rate for s in rows] == [float(m) for m in range(30)]
    # Right after a fresh start nothing is downsampled at all: still continuous.
    assert len(store.query(24 * 3600, "all", NOW)) == 30


def test_variant_all_merges_both_variants_in_time_order(store: Store) -> None:
    for i in range(36):
        store.insert(snap(NOW - 180 + 5 * i))
        store.insert(snap(NOW - 180 + 5 * i, "canary"))
    store.downsample(NOW - 60)
    rows = store.query(7 * DAY, "all", NOW)
    keys = [(s.ts, s.variant) for s in rows]
    assert keys == sorted(keys) and len(keys) == 6


def test_a_file_that_is_not_a_database_is_moved_aside_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dashboard.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level(logging.WARNING, logger="zai_proxy.dashboard.store"):
        store = Store(str(path), retention_5s=DAY, retention_1m=WEEK)
    try:
        assert store.moved_aside is not None
        assert Path(store.moved_aside).read_bytes() == b"this is not sqlite" * 100
        assert any("moved aside" in r.getMessage() for r in caplog.records)
        store.insert(snap(NOW))
        assert store.count() == 1
    finally:
        store.close()


def test_a_damaged_database_is_moved_aside_not_silently_reused(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.db"
    store = Store(str(path), retention_5s=DAY, retention_1m=WEEK)
    store.insert_many(snap(NOW - 5 * i) for i in range(2000))
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    # Scribble over the middle of the file, page headers and all.
    middle = (len(data) // page // 2) * page
    data[middle : middle + 3 * page] = b"\xff" * (3 * page)
    path.write_bytes(bytes(data))
    store = Store(str(path), retention_5s=DAY, retention_1m=WEEK)
    try:
        assert store.moved_aside is not None
        assert store.count() == 0
    finally:
        store.close()


def test_a_path_under_a_file_is_a_clear_start_up_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreError) as caught:
        Store(str(blocker / "dashboard.db"), retention_5s=DAY, retention_1m=WEEK)
    message = str(caught.value)
    assert message.startswith("DB_PATH=") and "dashboard.db" in message
    assert "part of its directory path is a file" in message
    assert "\n" not in message
    assert isinstance(caught.value, SettingsError)


def test_a_directory_as_the_path_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="DB_PATH=.*directory"):
        Store(str(tmp_path), retention_5s=DAY, retention_1m=WEEK)


def test_the_directory_is_created_when_missing(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "a" / "b" / "d.db"), retention_5s=DAY, retention_1m=WEEK)
    store.close()
    assert (tmp_path / "a" / "b" / "d.db").is_file()


class RecordingStore:
    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    async def maintain(self, now: float) -> None:
        self.calls.append((trio.current_time(), now))


async def test_maintenance_runs_at_start_then_every_ten_minutes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = RecordingStore()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda *, task_status: run_maintenance(
                store, now=lambda: NOW + trio.current_time(), task_status=task_status
            )
        )
        await trio.sleep(1900)
        nursery.cancel_scope.cancel()
    assert store.calls == [(t, NOW + t) for t in (0.0, 600.0, 1200.0, 1800.0)]


# ---------------------------------------------------------------------------- more pins


def store_error(path: str) -> str:
    with pytest.raises(StoreError) as caught:
        Store(path, retention_5s=DAY, retention_1m=WEEK)
    return str(caught.value)


def test_start_up_errors_name_the_path_and_why_in_full(tmp_path: Path) -> None:
    expected = "DB_PATH={!r} is not valid: expected a writable SQLite file path ({})"
    assert store_error(str(tmp_path)) == expected.format(str(tmp_path), "it is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("")
    under = str(blocker / "d.db")
    assert store_error(under) == expected.format(under, "part of its directory path is a file")
    assert store_error(":memory:") == expected.format(
        ":memory:", "cannot switch it to WAL mode (got 'memory')"
    )


def test_a_directory_that_cannot_be_made_is_a_start_up_error_with_the_os_reason() -> None:
    if not Path("/proc/self").exists():
        pytest.skip("needs /proc, where no directory can be made")
    assert store_error("/proc/zai-no-such-dir/d.db") == (
        "DB_PATH='/proc/zai-no-such-dir/d.db' is not valid: expected a writable SQLite file "
        "path (cannot create its directory: No such file or directory)"
    )


def test_a_good_database_is_not_moved_aside(store: Store) -> None:
    assert store.moved_aside is None


class FrozenTime:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_a_corrupt_file_goes_aside_stamped_with_the_time_and_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store_module, "time", FrozenTime(1_800_000_123.9))
    path = tmp_path / "dashboard.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level(logging.WARNING, logger="zai_proxy.dashboard.store"):
        store = Store(str(path), retention_5s=DAY, retention_1m=WEEK)
    store.close()
    aside = f"{path}.corrupt-1800000123"
    assert store.moved_aside == aside
    assert Path(aside).read_bytes() == b"this is not sqlite" * 100
    [record] = [r for r in caplog.records if r.name == "zai_proxy.dashboard.store"]
    assert record.getMessage() == "dashboard database was corrupt: moved aside, starting a new one"
    assert (record.db_path, record.moved_to, record.problem) == (  # type: ignore[attr-defined]
        str(path),
        aside,
        "file is not a database",
    )


def test_a_corrupt_file_that_cannot_be_moved_aside_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "time", FrozenTime(1_800_000_000.0))
    path = tmp_path / "dashboard.db"
    path.write_bytes(b"this is not sqlite" * 100)
    (tmp_path / "dashboard.db.corrupt-1800000000").mkdir()
    (tmp_path / "dashboard.db.corrupt-1800000000" / "occupied").write_text("")
    assert store_error(str(path)) == (
        f"DB_PATH={str(path)!r} is not valid: expected a writable SQLite file path (it is "
        "corrupt (file is not a database) and cannot be moved aside: Is a directory)"
    )


def test_the_warning_names_what_quick_check_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dashboard.db"
    store = Store(str(path), retention_5s=DAY, retention_1m=WEEK)
    store.insert_many(snap(NOW - 5 * i) for i in range(2000))
    store.close()
    # A header whose free-list fields point nowhere: readable, but quick_check objects.
    data = bytearray(path.read_bytes())
    data[32:40] = (9).to_bytes(4, "big") + (7).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    check = sqlite3.connect(str(path))
    problems = [str(row[0]) for row in check.execute("PRAGMA quick_check").fetchall()]
    check.close()
    assert problems != ["ok"]
    with caplog.at_level(logging.WARNING, logger="zai_proxy.dashboard.store"):
        Store(str(path), retention_5s=DAY, retention_1m=WEEK).close()
    [record] = [r for r in caplog.records if r.name == "zai_proxy.dashboard.store"]
    assert record.problem == "; ".join(problems[:3])  # type: ignore[attr-defined]


def test_a_damaged_database_is_logged_as_malformed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dashboard.db"
    store = Store(str(path), retention_5s=DAY, retention_1m=WEEK)
    store.insert_many(snap(NOW - 5 * i) for i in range(2000))
    store.close()
    data = bytearray(path.read_bytes())
    middle = (len(data) // 4096 // 2) * 4096
    data[middle : middle + 3 * 4096] = b"\xff" * (3 * 4096)
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="zai_proxy.dashboard.store"):
        Store(str(path), retention_5s=DAY, retention_1m=WEEK).close()
    [record] = [r for r in caplog.records if r.name == "zai_proxy.dashboard.store"]
    assert record.problem == "database disk image is malformed"  # type: ignore[attr-defined]


async def test_a_store_opened_in_one_thread_is_used_from_another(store: Store) -> None:
    await trio.to_thread.run_sync(store.insert, snap(NOW))
    assert store.count() == 1


def test_an_unknown_table_is_named_in_the_error(store: Store) -> None:
    with pytest.raises(ValueError, match=r"^no table 'nope'$"):
        store.count("nope")
    with pytest.raises(ValueError, match=r"^no table 'nope'$"):
        store.insert_many([], table="nope")


def test_a_failed_bulk_load_leaves_nothing_behind(store: Store) -> None:
    def rows() -> Iterator[Snapshot]:
        yield snap(NOW)
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        store.insert_many(rows())
    assert store.count() == 0


def test_query_json_is_a_json_array_of_the_snapshots(store: Store) -> None:
    assert store.query_json(300, "all", NOW) == b"[]"
    first, second = snap(NOW - 10), snap(NOW - 5, req_rate=2.0)
    store.insert(first)
    assert json.loads(store.query_json(300, "all", NOW)) == [first.to_dict()]
    store.insert(second)
    text = store.query_json(300, "all", NOW)
    assert json.loads(text) == [first.to_dict(), second.to_dict()]
    assert text == b"[" + first.to_json().encode() + b"," + second.to_json().encode() + b"]"


def test_downsampling_an_empty_store_writes_nothing(store: Store) -> None:
    assert store.downsample(NOW) == 0


def test_downsampling_redoes_the_last_minute_and_adds_the_new_ones(store: Store) -> None:
    for i in range(12 * 3):
        store.insert(snap(NOW - 180 + 5 * i))
    assert store.downsample(NOW - 60) == 2  # the two minutes before NOW - 60
    store.insert(snap(NOW - 65, req_rate=13.0))  # late, in the last minute done
    assert store.downsample(NOW) == 2  # that minute again, and the one after it
    assert store.count("metrics_1m") == 3
    late = store.query(7 * DAY, "production", NOW)[1]
    assert late.ts == NOW - 120 and late.req_rate == 2.0  # (11 x 1 + 13) / 12


def test_a_minute_with_a_single_row_is_downsampled(store: Store) -> None:
    store.insert(snap(NOW - 30))
    assert store.downsample(NOW) == 1
    assert [s.ts for s in store.query(7 * DAY, "all", NOW)] == [NOW - 60]


def test_maintenance_reports_what_it_did(store: Store) -> None:
    store.insert(snap(NOW - DAY - 60))
    store.insert_many([snap(NOW - WEEK - 60)], table="metrics_1m")
    assert store.maintain(NOW) == Maintenance(minutes=1, purged_5s=1, purged_1m=1)


def test_size_is_the_database_file_and_its_wal(store: Store) -> None:
    store.insert(snap(NOW))
    wal = Path(store.path + "-wal").stat().st_size
    assert wal > 0
    assert store.size_bytes() == Path(store.path).stat().st_size + wal
    store.checkpoint()
    assert store.size_bytes() == Path(store.path).stat().st_size
    assert Path(store.path + "-wal").stat().st_size == 0


def test_a_long_range_right_after_a_fresh_start_covers_every_variant(store: Store) -> None:
    # Nothing downsampled yet: every minute of both variants is made on the fly.
    for i in range(24):
        store.insert(snap(NOW - 120 + 5 * i, req_rate=float(i // 12)))
        store.insert(snap(NOW - 120 + 5 * i, "canary"))
    rows = store.query(6 * 3600, "all", NOW)
    assert [(s.ts, s.variant) for s in rows] == [
        (NOW - 120, "canary"),
        (NOW - 120, "production"),
        (NOW - 60, "canary"),
        (NOW - 60, "production"),
    ]
    assert rows[3].req_rate == 1.0
    assert json.loads(store.query_json(6 * 3600, "all", NOW)) == [s.to_dict() for s in rows]


def test_a_variant_that_lags_behind_in_downsampling_is_interleaved_in_time(store: Store) -> None:
    # Production has minute rows up to NOW - 120; canary has none: its minutes are made
    # on the fly from NOW - 240 on and must fall in between production's.
    for i in range(48):
        store.insert(snap(NOW - 240 + 5 * i))
        store.insert(snap(NOW - 240 + 5 * i, "canary"))
    store.insert_many(
        [snap(NOW - 240 + 60 * m, interval_s=60.0) for m in range(3)], table="metrics_1m"
    )
    expected = [
        (NOW - 240, "canary"),
        (NOW - 240, "production"),
        (NOW - 180, "canary"),
        (NOW - 180, "production"),
        (NOW - 120, "canary"),
        (NOW - 120, "production"),
        (NOW - 60, "canary"),
        (NOW - 60, "production"),
    ]
    assert [(s.ts, s.variant) for s in store.query(6 * 3600, "all", NOW)] == expected
    raw = json.loads(store.query_json(6 * 3600, "all", NOW))
    assert [(row["ts"], row["variant"]) for row in raw] == expected


def test_a_file_sqlite_cannot_open_or_write_is_a_start_up_error_with_sqlites_reason() -> None:
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("needs /proc, where SQLite can neither create nor write a file")
    expected = "DB_PATH={!r} is not valid: expected a writable SQLite file path ({})"
    assert store_error("/proc/zai.db") == expected.format(
        "/proc/zai.db", "cannot open it: unable to open database file"
    )
    assert store_error("/proc/self/cmdline") == expected.format(
        "/proc/self/cmdline", "cannot write it: unable to open database file"
    )


def test_a_minute_with_a_single_row_before_another_minute_is_downsampled(store: Store) -> None:
    store.insert(snap(NOW - 90))
    store.insert(snap(NOW - 30))
    assert store.downsample(NOW) == 2
    assert [s.ts for s in store.query(7 * DAY, "all", NOW)] == [NOW - 120, NOW - 60]


def test_a_minute_both_variants_share_across_the_two_tables_is_in_variant_order(
    store: Store,
) -> None:
    # Canary's minute rows end one minute before production's, so its made-on-the-fly
    # minute NOW - 120 must come before production's stored one.
    for i in range(48):
        store.insert(snap(NOW - 240 + 5 * i))
        store.insert(snap(NOW - 240 + 5 * i, "canary"))
    store.insert_many(
        [snap(NOW - 240 + 60 * m, interval_s=60.0) for m in range(3)]
        + [snap(NOW - 240 + 60 * m, "canary", interval_s=60.0) for m in range(2)],
        table="metrics_1m",
    )
    keys = [(s.ts, s.variant) for s in store.query(6 * 3600, "all", NOW)]
    assert keys == sorted(keys) and len(keys) == 8


def test_rows_from_before_the_shared_limiter_fields_read_and_downsample_with_new_ones(
    store: Store,
) -> None:
    minute = NOW - 120
    old = snap(minute, rate_limit_rps=4.0).to_dict()
    for name in (
        "rate_limit_backend",
        "rate_limit_backend_up",
        "rate_limit_replicas",
        "rate_limit_backend_error_rate",
    ):
        del old[name]
    raw = sqlite3.connect(store.path)
    raw.execute(
        "INSERT INTO metrics_5s (ts, variant, data) VALUES (?, ?, ?)",
        (minute, "production", json.dumps(old)),
    )
    raw.commit()
    raw.close()
    new = snap(
        minute + 5,
        rate_limit_rps=6.0,
        rate_limit_backend="redis",
        rate_limit_backend_up=2.0,
        rate_limit_replicas=2.0,
        rate_limit_backend_error_rate=0.5,
    )
    store.insert(new)
    assert store.query(300, "production", NOW) == [snap(minute, rate_limit_rps=4.0), new]
    assert store.downsample(NOW) == 1
    (row,) = store.query(6 * 3600, "production", NOW)
    assert (row.rate_limit_rps, row.rate_limit_backend) == (5.0, "redis")
    assert (row.rate_limit_backend_up, row.rate_limit_replicas) == (2.0, 2.0)
    # The old row knows nothing of backend errors: it is left out, not counted as 0.
    assert row.rate_limit_backend_error_rate == 0.5
