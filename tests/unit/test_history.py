"""The SQLite execution history: queries, pagination, retention, restart, output bound."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import msgspec
import pytest

from tests.conftest import wait_for
from ws_sandbox import history as history_module
from ws_sandbox.exceptions import StoreUnavailable
from ws_sandbox.history import History
from ws_sandbox.records import ExecutionRecord


def record(n: int, *, status: str = "success", language: str = "python",
           finished_at: float | None = None, stdout: str = "out\n",
           client: str = "127.0.0.1", compile_time_ms: float | None = None) -> ExecutionRecord:
    now = time.time() if finished_at is None else finished_at
    return ExecutionRecord(
        execution_id=f"e{n}", session_id="s", cell_id=f"c{n}", origin="rest",
        client=client, address="192.0.2.9", language=language, started_at=now - 0.01,
        finished_at=now,
        code_bytes=8, code_sha256="ab" * 32, status=status,  # type: ignore[arg-type]
        exit_code=0 if status == "success" else 1, execution_time_ms=10.0,
        memory_used_mb=None, compile_time_ms=compile_time_ms, output_bytes=len(stdout),
        truncated=False, error=None,
        stdout=stdout, stderr="")


def history(path: Path, **kw: float) -> History:
    return History(path, retention_days=kw.get("days", 7.0),
                   max_rows=int(kw.get("rows", 1000)), output_bytes=int(kw.get("out", 100)))


async def test_filters_and_pages_newest_first(tmp_path: Path) -> None:
    async with history(tmp_path / "h.db") as h:
        for n in range(10):
            h.record(record(n, status="error" if n % 2 else "success",
                            language="shell" if n < 4 else "python"))
        page = await h.list(limit=3)
        assert [i["execution_id"] for i in page.items] == ["e9", "e8", "e7"]
        assert (page.total, page.next_offset) == (10, 3)
        assert "stdout" not in page.items[0]
        errors = await h.list(status="error", language="python", limit=50)
        assert [i["execution_id"] for i in errors.items] == ["e9", "e7", "e5"]
        assert errors.next_offset is None
        last = await h.list(limit=3, offset=9)
        assert [i["execution_id"] for i in last.items] == ["e0"]
        one = await h.get("e4")
        assert one is not None and one["stdout"] == "out\n" and one["truncated"] is False
        assert await h.get("nope") is None


async def test_one_clients_executions_alone(tmp_path: Path) -> None:
    """What ``GET /api/v1/executions`` gives an API key: its own rows, never another key's
    (their code's outputs are in them)."""
    async with history(tmp_path / "h.db") as h:
        for n in range(6):
            h.record(record(n, client="key:aaaa" if n % 2 else "key:bbbb"))
        mine = await h.list(client="key:aaaa")
        assert [i["execution_id"] for i in mine.items] == ["e5", "e3", "e1"]
        assert mine.total == 3
        assert (await h.get("e3", client="key:aaaa")) is not None
        assert await h.get("e2", client="key:aaaa") is None  # another's: as if absent
        assert (await h.get("e2")) is not None
        assert (await h.list()).total == 6


async def test_survives_a_restart(tmp_path: Path) -> None:
    async with history(tmp_path / "h.db") as h:
        h.record(record(1))
    async with history(tmp_path / "h.db") as h:
        assert (await h.get("e1")) is not None


async def test_outputs_are_cut_to_the_bound(tmp_path: Path) -> None:
    async with history(tmp_path / "h.db", out=10) as h:
        h.record(record(1, stdout="x" * 1000))
        item = await h.get("e1")
    assert item is not None
    assert item["stdout"].startswith("x" * 10 + "\n[history: cut at 10 bytes]")


async def test_retention_by_age_and_by_rows(tmp_path: Path) -> None:
    now = time.time()
    async with history(tmp_path / "h.db", days=1, rows=3) as h:
        h.record(record(0, finished_at=now - 3 * 86400))
        for n in range(1, 6):
            h.record(record(n, finished_at=now))
        deleted = await h.prune(now)
        page = await h.list()
    assert deleted == 3
    assert [i["execution_id"] for i in page.items] == ["e5", "e4", "e3"]


async def test_rows_wait_while_the_database_fails_and_none_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with history(path) as h:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("ALTER TABLE executions RENAME TO elsewhere")  # every insert fails
        for n in range(3):
            h.record(record(n))
        h._hand_over()
        await wait_for(lambda: h.error is not None)
        assert h.error is not None and "no such table" in h.error
        assert h.rows_waiting == 3 and h.write_errors == 1
        h.record(record(3))  # the next batch tries again, and waits behind the others
        h._hand_over()
        await wait_for(lambda: h.write_errors == 2)
        assert h.rows_waiting == 4
        other.execute("ALTER TABLE elsewhere RENAME TO executions")
        other.close()
        page = await h.list()  # a read writes what waits first
        assert [x["execution_id"] for x in page.items] == ["e3", "e2", "e1", "e0"]
        assert h.error is None and h.rows_waiting == 0 and h.rows_dropped == 0


async def test_rows_still_waiting_at_close_are_named_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "h.db"
    async with history(path) as h:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("DROP TABLE executions")
        other.close()
        h.record(record(7))
    assert any("could not be written" in r.getMessage() and "e7" in r.getMessage()
               for r in caplog.records)


async def test_a_row_the_database_cannot_take_is_dropped_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 2**70 does not fit SQLite's INTEGER: before, the whole batch failed in the thread,
    # unseen, and the rows of every other session in it were lost.
    bad = msgspec.structs.replace(record(1), exit_code=2**70)
    async with history(tmp_path / "h.db") as h:
        h.record(record(0))
        h.record(bad)
        h.record(record(2))
        page = await h.list()
    assert [x["execution_id"] for x in page.items] == ["e2", "e0"]
    assert h.rows_dropped == 1 and h.error is None
    assert any("execution e1 dropped" in r.getMessage() for r in caplog.records)


PRUNE_EVERY = 100  # docs/service.md: rows are deleted "at start and every 100 inserts"


async def test_rows_are_pruned_every_n_inserts_without_asking(tmp_path: Path) -> None:
    # HISTORY_MAX_ROWS of 5: after PRUNE_EVERY inserts the store prunes on its own.
    async with history(tmp_path / "h.db", rows=5) as h:
        for n in range(PRUNE_EVERY):
            h.record(record(n))
        page = await h.list(limit=PRUNE_EVERY)  # a read: every row handed over is written
        assert page.total == 5
        assert [i["execution_id"] for i in page.items] == \
            [f"e{n}" for n in range(PRUNE_EVERY - 1, PRUNE_EVERY - 6, -1)]
        # Whatever the batching, the table never holds more than the bound plus the rows
        # since the last prune.
        for n in range(PRUNE_EVERY, 3 * PRUNE_EVERY + 7):
            h.record(record(n))
            if n % 37 == 0:
                assert (await h.list(limit=1)).total < 5 + PRUNE_EVERY
        page = await h.list(limit=1)
        assert page.total <= 5 + 7
        assert page.items[0]["execution_id"] == f"e{3 * PRUNE_EVERY + 6}"


async def test_reopening_the_store_prunes_by_age_and_by_rows(tmp_path: Path) -> None:
    now = time.time()
    async with history(tmp_path / "h.db", days=7, rows=1000) as h:
        for n in range(4):  # two days old: kept under the first store's 7 days
            h.record(record(n, finished_at=now - 2 * 86400))
        for n in range(4, 10):
            h.record(record(n, finished_at=now))
        assert (await h.list()).total == 10
    # Reopened with 1 day and 3 rows, and nothing else done: the old rows and the oldest
    # of the recent ones are gone.
    async with history(tmp_path / "h.db", days=1, rows=3) as h:
        page = await h.list()
    assert page.total == 3
    assert [i["execution_id"] for i in page.items] == ["e9", "e8", "e7"]
    async with history(tmp_path / "h.db", days=1, rows=1000) as h:  # by age alone
        h.record(record(20, finished_at=now - 2 * 86400))
    async with history(tmp_path / "h.db", days=1, rows=1000) as h:
        assert [i["execution_id"] for i in (await h.list()).items] == ["e9", "e8", "e7"]


async def test_the_database_is_not_readable_by_everyone(tmp_path: Path) -> None:
    """SQLite made the file (and so its -wal and -shm files) 0644 where the audit log is
    0640, and the rows hold outputs (a review). Even under umask 0 they are 0640 now."""
    old = os.umask(0)
    try:
        async with history(tmp_path / "h.db") as h:
            h.record(record(1))
            assert await h.get("e1") is not None
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert set(modes) == {"h.db", "h.db-wal", "h.db-shm"}, modes
    assert set(modes.values()) == {0o640}, modes


async def test_a_database_an_earlier_version_made_loses_what_everyone_could_read(
        tmp_path: Path) -> None:
    """0640 applied only to a file it created: one made 0644 before stayed so (a review)."""
    path = tmp_path / "h.db"
    async with history(path) as h:
        h.record(record(1))
    for name in ("h.db", "h.db-wal", "h.db-shm"):
        if (tmp_path / name).exists():
            (tmp_path / name).chmod(0o644)
    async with history(path) as h:
        assert await h.get("e1") is not None
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o640}, modes


async def test_a_quiet_service_forgets_on_time(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows were deleted at start and every 100 inserts only, so a quiet service kept them
    past HISTORY_RETENTION_DAYS for as long as it stayed quiet (a review). A timer prunes
    too: every hour, or every tenth of the retention when that is shorter."""
    monkeypatch.setattr(history_module, "PRUNE_INTERVAL", 0.05)
    async with history(tmp_path / "h.db", days=1) as h:
        h.record(record(1, finished_at=time.time() - 86400 - 1))
        h.record(record(2))
        async with asyncio.timeout(5):  # two inserts: far from PRUNE_EVERY
            while await h.get("e1") is not None:
                await asyncio.sleep(0.02)
        assert await h.get("e2") is not None


async def test_rows_keep_the_address_and_compile_time_and_an_older_database_gains_them(
        tmp_path: Path) -> None:
    """A keyed caller's row held its key's identity alone; the address is kept beside it,
    and a Rust cell's compile time. A database written before those gets the columns, its
    old rows an empty address and no compile time."""
    path = tmp_path / "h.db"
    old = sqlite3.connect(path)
    old.executescript(history_module._SCHEMA.replace("    address TEXT NOT NULL DEFAULT '',\n", "")
                      .replace("    compile_time_ms REAL,\n", ""))
    assert not {"address", "compile_time_ms"} & {
        row[1] for row in old.execute("PRAGMA table_info(executions)")}
    old.execute("INSERT INTO executions (execution_id, session_id, cell_id, origin, client,"
                " language, started_at, finished_at, code_bytes, code_sha256, status,"
                " execution_time_ms, output_bytes, truncated, stdout, stderr) VALUES"
                " ('old', 's', 'c', 'rest', 'key:k', 'python', 1e10, 1e10, 1, 'x',"
                " 'success', 1.0, 0, 0, '', '')")
    old.commit()
    old.close()
    async with history(path) as h:
        h.record(record(1, client="key:k", language="rust", compile_time_ms=190.5))
        new = await h.get("e1")
        assert new is not None and (new["client"], new["address"]) == ("key:k", "192.0.2.9")
        assert new["compile_time_ms"] == 190.5
        before = await h.get("old")
        assert before is not None and (before["address"], before["compile_time_ms"]) == ("", None)
        page = await h.list(client="key:k")
        assert [(i["execution_id"], i["address"], i["compile_time_ms"]) for i in page.items] == [
            ("e1", "192.0.2.9", 190.5), ("old", "", None)]


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), stat.S_IMODE(path.stat().st_mode)


async def test_the_database_keeps_its_layout_version_and_an_older_one_is_brought_up(
        tmp_path: Path) -> None:
    """A database written before the layout was kept (user_version 0) is brought up to it."""
    path = tmp_path / "h.db"
    sqlite3.connect(path).close()
    async with history(path) as h:
        h.record(record(1))
        assert await h.get("e1") is not None
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == history_module.SCHEMA_VERSION
    assert history_module.SCHEMA_VERSION >= 1


@pytest.mark.parametrize(("make", "why"), [
    (f"PRAGMA user_version={history_module.SCHEMA_VERSION + 1}",
     "a later version of ws_sandbox wrote it (layout 2; this version writes 1)"),
    ("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('alice')",
     "it holds tables that are not the history's (users)"),
    ("CREATE TABLE executions (id INTEGER PRIMARY KEY, note TEXT)",
     "its executions table is not the history's (no cell_id, client, code_bytes"),
])
async def test_a_database_it_cannot_write_is_refused_and_left_as_it_is(
        tmp_path: Path, make: str, why: str) -> None:
    """A database of a later version was opened, and then every insert failed (its rows were
    logged as errors) for as long as the service ran; another program's database got the
    history's table added to it, and its mode changed (a review). Both are refused now,
    untouched."""
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(make)
        db.commit()
    path.chmod(0o644)
    before = snapshot(path)
    with pytest.raises(sqlite3.DatabaseError) as refused:
        async with history(path):
            pass
    assert why in str(refused.value) and "it was left as it is" in str(refused.value)
    assert snapshot(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


async def test_a_read_behind_a_write_that_hangs_is_refused_and_nothing_is_lost(
        tmp_path: Path) -> None:
    """A write that never returns (a disk that hangs) made every read wait behind it,
    without end: ``GET /api/v1/executions`` never answered. A read is now refused with 503
    ``store_unavailable`` after the timeout, and at once while the write still hangs; once
    the disk answers, every row is there."""
    h = History(tmp_path / "h.db", retention_days=7.0, max_rows=1000, output_bytes=100,
                timeout=0.5)
    release = threading.Event()
    async with h:
        real = h._write_waiting

        def hang() -> None:
            release.wait(60)
            real()

        h._write_waiting = hang  # type: ignore[method-assign]
        try:
            h.record(record(1))
            h._hand_over()
            with pytest.raises(StoreUnavailable) as refused:
                async with asyncio.timeout(10):
                    await h.list()
            assert refused.value.http_status == 503
            assert refused.value.message.startswith("the history's database has not answered")
            await asyncio.sleep(0.1)
            start = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await h.get("e1")
            assert time.monotonic() - start < 0.5  # at once, not after the timeout again
        finally:
            release.set()
        h.record(record(2))
        async with asyncio.timeout(10):
            await wait_for(lambda: h._executor.busy_for() == 0.0)
            page = await h.list()
        assert [i["execution_id"] for i in page.items] == ["e2", "e1"]


async def test_the_close_gives_up_on_a_write_that_hangs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = History(tmp_path / "h.db", retention_days=7.0, max_rows=1000, output_bytes=100,
                timeout=0.5)
    release = threading.Event()
    try:
        async with h:
            h._write_waiting = lambda: release.wait(60)  # type: ignore[assignment,method-assign]
            for n in range(3):
                h.record(record(n))
            start = time.monotonic()
        assert time.monotonic() - start < 10
        assert any(r.getMessage().startswith(f"the history {tmp_path / 'h.db'} has not"
                                             " answered in 0.5 s") and
                   "about 3 executions were not written" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        release.set()
