"""Execution history in an embedded SQLite database (``HISTORY_DB_PATH``).

All database work runs on one dedicated thread that owns the connection, so the event loop
never blocks on the disk and writes and reads keep their order (a call can read its own
execution as soon as it has its result). Outputs are stored cut to
``HISTORY_OUTPUT_BYTES``. Rows older than ``HISTORY_RETENTION_DAYS`` or beyond
``HISTORY_MAX_ROWS`` are deleted as new ones arrive.

A write that hangs (a disk that stops answering) holds neither reads nor the exit: the
database's thread is a daemon (:class:`~ws_sandbox.store_thread.StoreThread`), a read that
waits ``timeout`` seconds is refused with :class:`~ws_sandbox.exceptions.StoreUnavailable`
(at once while the hung call goes on), and :meth:`History.close` gives up after as long,
logging how many executions were not written.

A write that fails (a full disk, a locked or broken database) keeps its rows: they wait, in
order, and are written with the next batch, before the next read and at close;
:attr:`History.error` says why meanwhile (the health check reports it). Beyond
``MAX_WAITING_ROWS`` the oldest waiting rows are dropped and counted; so are the newest,
past as many handed to a database thread that takes none (a write that hangs). A row the database
refuses for its own content (not a failure of the database) is dropped alone, with its id in
the log, so that it cannot take the rows beside it down.

The database keeps its layout's version (:data:`SCHEMA_VERSION`); one of a later version, or
another program's database, is refused before anything in it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ws_sandbox.batching import Batcher
from ws_sandbox.exceptions import StoreUnavailable
from ws_sandbox.records import RECORD_FILE_MODE, ExecutionRecord
from ws_sandbox.store_thread import StoreThread, answer

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    cell_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    client TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT '',
    language TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    code_bytes INTEGER NOT NULL,
    code_sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    execution_time_ms REAL NOT NULL,
    memory_used_mb REAL,
    compile_time_ms REAL,
    output_bytes INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    error TEXT,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_finished ON executions (finished_at);
CREATE INDEX IF NOT EXISTS executions_status ON executions (status, seq);
CREATE INDEX IF NOT EXISTS executions_language ON executions (language, seq);
CREATE INDEX IF NOT EXISTS executions_client ON executions (client, seq);
"""
log = logging.getLogger(__name__)

_COLUMNS = tuple(ExecutionRecord.__struct_fields__)
#: Columns of a list entry: everything but the outputs.
SUMMARY_COLUMNS = tuple(c for c in _COLUMNS if c not in ("stdout", "stderr"))
PRUNE_EVERY = 100
PRUNE_INTERVAL = 3600.0
"""Seconds between prunes on a timer (a tenth of the retention when that is shorter), so
that a quiet service, which seldom reaches :data:`PRUNE_EVERY` inserts, forgets on time."""
FLUSH_INTERVAL = 0.1
"""Seconds rows wait in the event loop before the database thread takes them as a batch."""
MAX_WAITING_ROWS = 10_000
"""Rows held in memory while the database cannot be written; beyond this the oldest go."""
SCHEMA_VERSION = 1
"""The layout of the history's database, kept as SQLite's ``user_version``. 0 is a database
written before it was kept (brought up to date on open); one above this, written by a later
version, is refused: its inserts would fail, one by one, for as long as the service ran."""
ADDED_COLUMNS = {"address": "TEXT NOT NULL DEFAULT ''", "compile_time_ms": "REAL"}
"""Columns added since layout 1 began, as ``ALTER TABLE`` defines them: a database without
one gets it on open, its rows keeping the default. They need no new layout version: a
version before them writes and reads such a database as it wrote its own."""
T = TypeVar("T")


class ExecutionPage(msgspec.Struct, kw_only=True):
    """One page of ``GET /api/v1/executions``, newest first."""

    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int
    next_offset: int | None


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, with a marker when it was cut."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore") + f"\n[history: cut at {limit} bytes]\n"


class History:
    """The history database. Use as ``async with History(path, ...) as history:``.

    Args:
        path: SQLite file (created with its directory).
        retention_days: rows older than this are deleted.
        max_rows: at most this many rows are kept.
        output_bytes: stdout and stderr are each cut to this many bytes.
        timeout: seconds a read, and the close, wait for the database (None: no limit).
    """

    def __init__(self, path: str | Path, *, retention_days: float, max_rows: int,
                 output_bytes: int, timeout: float | None = None) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.output_bytes = output_bytes
        self.timeout = timeout
        self._executor = StoreThread("history")
        self._db: sqlite3.Connection | None = None
        self._inserted = 0
        self.write_errors = 0
        """Failed attempts to write rows."""
        self._rows_dropped = 0  # by the database thread
        self.error: str | None = None
        """Why rows are waiting (the last failure), or ``None`` while the database is written."""
        self._waiting: list[ExecutionRecord] = []  # the database thread's
        self._batcher: Batcher[ExecutionRecord] = Batcher(
            lambda batch: self._executor.submit(self._insert_many, batch), FLUSH_INTERVAL,
            bound=MAX_WAITING_ROWS, what="history rows")
        self._closed = False
        self._pruner: asyncio.Task[None] | None = None

    @property
    def rows_waiting(self) -> int:
        """Rows the database thread took and has not yet written."""
        return len(self._waiting)

    @property
    def rows_dropped(self) -> int:
        """Rows dropped: too many waited, for a database that could not be written or for a
        database thread that took none (a write that hangs), or the database refused their
        content."""
        return self._rows_dropped + self._batcher.dropped

    def stalled_for(self) -> float:
        """Seconds the oldest row handed to the database thread has waited for it to take
        it (0.0: it took them all): a write that hangs."""
        return self._batcher.stalled_for()

    @property
    def rows_behind(self) -> int:
        """Rows handed to the database thread and not yet taken by it."""
        return self._batcher.behind

    async def __aenter__(self) -> History:
        try:
            # No timeout: opening prunes, which may take a while on a large database
            # (a slow start, not a failed one).
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._pruner = asyncio.create_task(self._prune_on_a_timer(), name="history-prune")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Finish every queued write, then close the database; give up after ``timeout``
        seconds (a write that hangs), saying how many executions were not written."""
        if self._closed:
            return
        self._closed = True
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        self._hand_over()
        self._executor.submit(self._close)
        self._executor.shutdown(wait=False)
        if not await self._executor.finished(self.timeout):
            log.error("the history %s has not answered in %g s (a disk that hangs?); about"
                      " %d executions were not written to it (the audit log has them)",
                      self.path, self.timeout, self.rows_behind + self.rows_waiting)

    # --- writes (queued, never awaited by the caller) -------------------------------------

    def record(self, record: ExecutionRecord) -> None:
        """Queue one finished execution for insertion."""
        if self._closed:
            return
        row = msgspec.structs.replace(record, stdout=cut(record.stdout, self.output_bytes),
                                      stderr=cut(record.stderr, self.output_bytes))
        self._batcher.add(row)  # batched: one thread wake-up and transaction per batch

    def _hand_over(self) -> None:
        """Queue every pending row for insertion; reads queued later see them (FIFO)."""
        self._batcher.flush()

    # --- reads ----------------------------------------------------------------------------

    async def get(self, execution_id: str, *, client: str | None = None
                  ) -> dict[str, Any] | None:
        """One execution with its outputs, or ``None`` (also when ``client`` is given and
        the execution is another client's)."""
        return await self._call(self._get, execution_id, client)

    async def list(self, *, status: str | None = None, language: str | None = None,
                   client: str | None = None, limit: int = 50, offset: int = 0
                   ) -> ExecutionPage:
        """A page of executions, newest first, optionally filtered (``client``: one
        caller's own)."""
        return await self._call(self._list, status, language, client, limit, offset)

    async def prune(self, now: float | None = None) -> int:
        """Apply the retention rules now; return the rows deleted."""
        return await self._call(self._prune, time.time() if now is None else now)

    async def _prune_on_a_timer(self) -> None:
        interval = min(PRUNE_INTERVAL, self.retention_days * 86400.0 / 10)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.prune()
            except (sqlite3.Error, StoreUnavailable) as exc:
                log.error("cannot prune the history %s: %s", self.path, exc)

    # --- on the database thread -----------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the database thread, after every write queued before it.

        Raises:
            StoreUnavailable: the thread has not answered in ``timeout`` seconds.
        """
        self._hand_over()  # a read sees every execution recorded before it
        return await answer(self._executor, fn, *args, timeout=self.timeout,
                            what="the history's database")

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _check_is_database(self.path)
        _check_layout(self.path)
        # Made here, not by SQLite (0644), so that neither the file nor the -wal and -shm
        # files SQLite gives its mode are readable by everyone: rows hold outputs. One made
        # by an earlier version (0644) loses what everyone could read.
        for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if path is not self.path and not path.exists():
                continue
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, RECORD_FILE_MODE)
            try:
                if (mode := os.fstat(fd).st_mode) & 0o007:
                    os.fchmod(fd, mode & 0o7770)
                    log.warning("the history %s was readable by everyone: now %o", path,
                                mode & 0o770)
            finally:
                os.close(fd)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        have = _columns(db)
        for name, definition in ADDED_COLUMNS.items():
            if name not in have:  # a database written before it was kept
                db.execute(f"ALTER TABLE executions ADD COLUMN {name} {definition}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db = db
        self._prune(time.time())

    def _close(self) -> None:
        if self._db is not None:
            self._write_waiting()
            if self._waiting:
                log.error("%d executions could not be written to the history %s (%s): %s",
                          len(self._waiting), self.path, self.error,
                          ", ".join(r.execution_id for r in self._waiting))
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "history database is not open"
        return self._db

    def _insert_many(self, records: Sequence[ExecutionRecord]) -> None:
        self._batcher.taken(records)
        self._waiting.extend(records)
        excess = len(self._waiting) - MAX_WAITING_ROWS
        if excess > 0:
            dropped, self._waiting = self._waiting[:excess], self._waiting[excess:]
            self._rows_dropped += excess
            log.error("%d executions dropped from the history: more than %d wait for %s"
                      " (%s): %s", excess, MAX_WAITING_ROWS, self.path, self.error,
                      ", ".join(r.execution_id for r in dropped))
        self._write_waiting()

    def _write_waiting(self) -> None:
        """Insert the waiting rows in one transaction; on a failure, keep them."""
        if not self._waiting:
            return
        try:
            written = self._insert_waiting()
        except sqlite3.Error as exc:  # the database's trouble: the rows wait for the next try
            self.write_errors += 1
            if self.error is None:
                log.error("cannot write the history %s: %s; %d executions wait, tried again"
                          " with the next batch or read", self.path, exc, len(self._waiting))
            self.error = str(exc)
            return
        if self.error is not None:
            log.warning("the history %s is written again", self.path)
            self.error = None
        before, self._inserted = self._inserted, self._inserted + written
        if before // PRUNE_EVERY != self._inserted // PRUNE_EVERY:
            try:
                self._prune(time.time())
            except sqlite3.Error as exc:
                log.error("cannot prune the history %s: %s", self.path, exc)

    def _insert_waiting(self) -> int:
        """Insert every waiting row; return how many went in.

        Raises:
            sqlite3.Error: the database failed; the rows not yet in keep waiting.
        """
        try:
            self._insert(self._waiting)
        except sqlite3.Error:
            raise
        except Exception:  # a row the database cannot take (a bug): find it, keep the rest
            log.exception("the history refused a batch; inserting its rows one by one")
            return self._insert_one_by_one()
        written, self._waiting = len(self._waiting), []
        return written

    def _insert_one_by_one(self) -> int:
        written = 0
        while self._waiting:
            record = self._waiting[0]
            try:
                self._insert([record])
                written += 1
            except sqlite3.Error:
                raise
            except Exception as exc:
                self._rows_dropped += 1
                log.error("execution %s dropped from the history: %s", record.execution_id,
                          exc)
            del self._waiting[0]
        return written

    def _insert(self, records: Sequence[ExecutionRecord]) -> None:
        db = self._conn()
        with db:  # one transaction per batch
            db.execute("BEGIN")
            db.executemany(
                f"INSERT OR REPLACE INTO executions ({', '.join(_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(_COLUMNS))})",
                [[getattr(r, c) for c in _COLUMNS] for r in records])

    def _prune(self, now: float) -> int:
        db = self._conn()
        cutoff = now - self.retention_days * 86400.0
        deleted = db.execute("DELETE FROM executions WHERE finished_at < ?",
                             (cutoff,)).rowcount
        deleted += db.execute(
            "DELETE FROM executions WHERE seq <= (SELECT seq FROM executions"
            " ORDER BY seq DESC LIMIT 1 OFFSET ?)", (self.max_rows,)).rowcount
        return int(deleted)

    def _get(self, execution_id: str, client: str | None) -> dict[str, Any] | None:
        self._write_waiting()  # a read sees every execution recorded before it
        query = f"SELECT {', '.join(_COLUMNS)} FROM executions WHERE execution_id = ?"
        args = [execution_id]
        if client is not None:  # another client's is as if absent
            query += " AND client = ?"
            args.append(client)
        row = self._conn().execute(query, args).fetchone()
        return None if row is None else _row(row)

    def _list(self, status: str | None, language: str | None, client: str | None,
              limit: int, offset: int) -> ExecutionPage:
        self._write_waiting()
        where, args = [], []
        if client is not None:
            where.append("client = ?")
            args.append(client)
        if status:
            where.append("status = ?")
            args.append(status)
        if language:
            where.append("language = ?")
            args.append(language)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        db = self._conn()
        total = int(db.execute(f"SELECT COUNT(*) FROM executions{clause}", args).fetchone()[0])
        rows = db.execute(
            f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM executions{clause}"
            " ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        items = [_row(r) for r in rows]
        more = offset + len(items) < total
        return ExecutionPage(items=items, total=total, limit=limit, offset=offset,
                             next_offset=offset + len(items) if more else None)


def _row(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    item["truncated"] = bool(item["truncated"])
    return item


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_is_database(path: Path) -> None:
    """Refuse a file that is neither empty nor a SQLite database, before anything (its mode
    included) is changed: HISTORY_DB_PATH naming another file left it 0640 (a review).

    Raises:
        sqlite3.DatabaseError: naming what the file is not.
    """
    try:
        with path.open("rb") as existing:
            head = existing.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    if head and head != SQLITE_HEADER:
        raise sqlite3.DatabaseError("the file is not a SQLite database; it was left as it is")


def _columns(db: sqlite3.Connection) -> set[str]:
    return {row[1] for row in db.execute("PRAGMA table_info(executions)")}


def _check_layout(path: Path) -> None:
    """Refuse a database that is not a history this version can write, before anything (its
    mode included) is changed: one of a later version, or another program's database, which
    the history's table would have been added to.

    Raises:
        sqlite3.DatabaseError: naming what is wrong.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"a later version of ws_sandbox wrote it (layout {version}; this version"
                f" writes {SCHEMA_VERSION}); it was left as it is")
        tables = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        if others := sorted(tables - {"executions"}):
            raise sqlite3.DatabaseError(
                f"it holds tables that are not the history's ({', '.join(others[:5])});"
                " it was left as it is")
        if tables and (missing := sorted(set(_COLUMNS) - set(ADDED_COLUMNS) - _columns(db))):
            raise sqlite3.DatabaseError(
                f"its executions table is not the history's (no {', '.join(missing[:5])});"
                " it was left as it is")
    finally:
        db.close()
