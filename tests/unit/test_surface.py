"""``ws_sandbox.surface``: the record stores and the limiter take their settings."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.unit.test_audit import record
from ws_sandbox import audit as audit_module
from ws_sandbox import history as history_module
from ws_sandbox import surface as surface_module
from ws_sandbox.settings import Settings
from ws_sandbox.surface import Surface


def test_the_stores_and_the_limiter_get_their_environment_variables(tmp_path: Path) -> None:
    # The stores' behaviour under these parameters is tested in test_history and test_audit;
    # here, that each variable reaches them (a name mapped to the wrong field would not).
    settings = Settings.from_env({
        "HISTORY_DB_PATH": str(tmp_path / "h.db"), "HISTORY_MAX_ROWS": "3",
        "HISTORY_RETENTION_DAYS": "2.5", "HISTORY_OUTPUT_BYTES": "10",
        "AUDIT_LOG_PATH": str(tmp_path / "a.log"), "AUDIT_LOG_MAX_BYTES": "5000",
        "AUDIT_LOG_BACKUPS": "4", "RATE_LIMIT_PER_MINUTE": "7", "RATE_LIMIT_BURST": "2",
        "AUTH_FAILURES_PER_MINUTE": "11",
    })
    surface = Surface(settings)
    assert surface.history is not None and surface.audit is not None
    history, audit = surface.history, surface.audit
    assert (history.path, history.max_rows, history.retention_days, history.output_bytes) == (
        tmp_path / "h.db", 3, 2.5, 10)
    assert (audit.path, audit.max_bytes, audit.backups) == (tmp_path / "a.log", 5000, 4)
    assert surface.limiter.enabled
    # The limiters' numbers, not only that one is on (a review):
    assert (surface.limiter.per_minute, surface.limiter.burst) == (7, 2)
    assert (surface.guesses.per_minute, surface.guesses.burst) == (11, 11)


def test_stores_switched_off_are_not_made(tmp_path: Path) -> None:
    settings = Settings.from_env({"ENABLE_AUDIT_LOG": "false", "ENABLE_HISTORY": "false",
                                  "RATE_LIMIT_PER_MINUTE": "0"})
    surface = Surface(settings)
    assert (surface.audit, surface.history, surface.limiter.enabled) == (None, None, False)


async def test_a_store_whose_writes_hang_holds_a_bounded_amount_and_the_health_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A write that never returns (a disk that hangs) left every record handed to the
    store's thread queued in memory, without bound and unreported. Past a bound the newest
    are dropped and counted, the health check says the thread is stuck, and once it takes
    records again, nothing it took is lost."""
    monkeypatch.setattr(audit_module, "MAX_WAITING_BYTES", 6000)
    monkeypatch.setattr(history_module, "MAX_WAITING_ROWS", 15)
    monkeypatch.setattr(surface_module, "STALLED_AFTER", 0.2)
    settings = Settings.from_env({"HISTORY_DB_PATH": str(tmp_path / "h.db"),
                                  "AUDIT_LOG_PATH": str(tmp_path / "a.log")})
    release = threading.Event()
    async with Surface(settings) as surface:
        audit, history = surface.audit, surface.history
        assert audit is not None and history is not None
        try:
            hung: list[str] = []
            for store, method in ((audit, "_write_waiting"), (history, "_write_waiting")):
                real = getattr(store, method)

                def hang(real: Callable[[], None] = real, name: str = type(store).__name__
                         ) -> None:
                    hung.append(name)
                    release.wait(30)
                    real()

                setattr(store, method, hang)
            for n in range(200):
                rec = record(n)
                audit.record(rec)
                history.record(rec)
                if n % 10 == 9:  # a batch of 10, as a burst of cells hands them over
                    audit._hand_over()
                    history._hand_over()
                    await asyncio.sleep(0.01)
            await wait_for(lambda: sorted(hung) == ["AuditLog", "History"])
            await asyncio.sleep(0.3)
            # What waits for the threads is bounded: the bound, plus one batch at most.
            line = 500  # the longest audit line of these records is 414 bytes
            assert 0 < audit.bytes_behind <= 6000 + 10 * line, audit.bytes_behind
            assert 0 < history.rows_behind <= 15 + 10, history.rows_behind
            assert audit.lines_dropped > 100 and history.rows_dropped > 100
            problems = surface.problems()
            assert any(p.startswith("the audit log's writer has taken no lines for")
                       for p in problems), problems
            assert any(p.startswith("the history's database thread has taken no executions for")
                       for p in problems), problems
            release.set()
            await wait_for(lambda: audit.bytes_behind == 0 and history.rows_behind == 0)
            audit.record(record(200))
            history.record(record(200))
            audit._hand_over()
            history._hand_over()
            assert surface.problems() == []
        finally:
            release.set()  # a failing test must not leave the threads hung
        page = await history.list(limit=1000)
    lines = [json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines()]
    assert len(lines) + audit.lines_dropped == 201
    assert page.total + history.rows_dropped == 201
    # In order, the first batch (taken before the hang) and the last whole.
    ids = [x["execution_id"] for x in lines]
    assert ids[:10] == [f"e{n}" for n in range(10)] and ids[-1] == "e200"
    assert ids == sorted(ids, key=lambda i: int(i[1:]))
    logged = [r.getMessage() for r in caplog.records]
    for what in ("audit lines", "history rows"):
        assert sum(m.startswith(f"{what} dropped:") for m in logged) == 1, logged
        assert sum(f"{what} were dropped while their writer was behind" in m
                   for m in logged) == 1, logged


HUNG_STORES = """
import asyncio, sys, threading
from ws_sandbox.settings import Settings
from ws_sandbox.surface import Surface
from tests.unit.test_audit import record

async def main() -> None:
    settings = Settings.from_env({"HISTORY_DB_PATH": sys.argv[1] + "/h.db",
                                  "AUDIT_LOG_PATH": sys.argv[1] + "/a.log",
                                  "STORE_TIMEOUT": "0.5"})
    never = threading.Event()
    async with Surface(settings) as surface:
        for store in (surface.audit, surface.history):
            store._write_waiting = lambda: never.wait()
        for n in range(5):
            surface.audit.record(record(n))
            surface.history.record(record(n))
    print("closed", flush=True)

asyncio.run(main())
"""


def test_stores_whose_writes_hang_hold_neither_the_close_nor_the_exit(tmp_path: Path) -> None:
    """A write that never returns made the service's shutdown wait without end: the audit
    log's close joined its writer, the history's close waited for its database thread,
    and a ThreadPoolExecutor's thread is joined at the interpreter's exit anyway. Each store
    now gives up after STORE_TIMEOUT, and the process exits."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", HUNG_STORES, str(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "closed\n"
    assert "the audit log's writer has not finished in 0.5 s" in done.stderr
    assert "has not answered in 0.5 s" in done.stderr
