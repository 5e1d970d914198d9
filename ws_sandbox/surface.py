"""The service surface around sessions: stats, audit log, history and the rate limiters.

:class:`Surface` owns them for the life of the service (``async with``) and is the one cell
observer the session manager calls: each finished execution becomes one
:class:`~ws_sandbox.records.ExecutionRecord`, handed to each of them.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from types import TracebackType

from ws_sandbox.audit import AuditLog
from ws_sandbox.driver import SessionRunner
from ws_sandbox.exceptions import ConfigError
from ws_sandbox.history import History
from ws_sandbox.metrics import StoreState
from ws_sandbox.ratelimit import GuessLimiter, RateLimiter
from ws_sandbox.records import record_of
from ws_sandbox.refusals import Refusals
from ws_sandbox.session import CellFinished
from ws_sandbox.settings import Settings
from ws_sandbox.stats import Stats

log = logging.getLogger(__name__)

STALLED_AFTER = 10.0
"""Seconds a store's thread may leave handed-over records untaken before the health check
says so (it takes them within milliseconds while its disk answers)."""


class Surface:
    """Stats, audit log, history and rate limiters of one service run."""

    def __init__(self, settings: Settings) -> None:
        self.stats = Stats()
        self.refusals = Refusals()
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst,
                                   on_refused=self.refusals.refused)
        self.guesses = GuessLimiter(settings.auth_failures_per_minute,
                                    on_refused=self.refusals.refused)
        self.audit: AuditLog | None = None
        self.history: History | None = None
        if settings.enable_audit_log:
            self.audit = AuditLog(settings.audit_log_path, settings.audit_log_max_bytes,
                                  settings.audit_log_backups, timeout=settings.store_timeout)
        if settings.enable_history:
            self.history = History(settings.history_db_path,
                                   retention_days=settings.history_retention_days,
                                   max_rows=settings.history_max_rows,
                                   output_bytes=settings.history_output_bytes,
                                   timeout=settings.store_timeout)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Surface:
        async with contextlib.AsyncExitStack() as stack:
            if self.audit is not None:
                try:
                    await stack.enter_async_context(self.audit)
                except OSError as exc:
                    raise ConfigError(f"AUDIT_LOG_PATH={self.audit.path}: cannot open it"
                                      f" ({_why(self.audit.path, exc)})") from exc
                except ConfigError as exc:
                    raise ConfigError(f"AUDIT_LOG_PATH={self.audit.path}: {exc}") from exc
            if self.history is not None:
                try:
                    await stack.enter_async_context(self.history)
                except OSError as exc:
                    raise ConfigError(f"HISTORY_DB_PATH={self.history.path}: cannot open it"
                                      f" ({_why(self.history.path, exc)})") from exc
                except sqlite3.Error as exc:
                    raise ConfigError(f"HISTORY_DB_PATH={self.history.path}: cannot open it"
                                      f" as a database ({exc}); move it aside to start a"
                                      " new one") from exc

            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.refusals.close()
        await self._stack.aclose()

    def problems(self) -> list[str]:
        """What keeps executions from being recorded right now (for the health check)."""
        found = []
        if self.audit is not None and self.audit.error is not None:
            found.append(f"the audit log cannot be written ({self.audit.error});"
                         f" {self.audit.lines_waiting} lines wait")
        if self.audit is not None and (stalled := self.audit.stalled_for()) >= STALLED_AFTER:
            found.append(f"the audit log's writer has taken no lines for {stalled:.0f} s (a"
                         f" write that hangs?); {self.audit.bytes_behind} bytes wait for it")
        if self.history is not None and self.history.error is not None:
            found.append(f"the history cannot be written ({self.history.error});"
                         f" {self.history.rows_waiting} executions wait")
        if (self.history is not None
                and (stalled := self.history.stalled_for()) >= STALLED_AFTER):
            found.append(f"the history's database thread has taken no executions for"
                         f" {stalled:.0f} s (a write that hangs?); {self.history.rows_behind}"
                         " wait for it")
        return found

    def stores(self) -> dict[str, StoreState]:
        """The audit log's and the history's write state, by name (for the metrics)."""
        found = {}
        if self.audit is not None:
            found["audit"] = StoreState(self.audit.write_errors, self.audit.lines_waiting,
                                        self.audit.lines_dropped)
        if self.history is not None:
            found["history"] = StoreState(self.history.write_errors,
                                          self.history.rows_waiting, self.history.rows_dropped)
        return found

    def observe(self, runner: SessionRunner, finished: CellFinished) -> None:
        """The cell observer: record one finished execution everywhere."""
        record = record_of(runner, finished)
        self.stats.observe(record)
        if self.audit is not None:
            self.audit.record(record)
        if self.history is not None:
            self.history.record(record)


def _why(path: Path, exc: OSError) -> str:
    """Why ``path`` cannot be opened, naming a file that stands where a directory must."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"{parent} is not a directory"
                break
    return exc.strerror or str(exc)
