"""The service surface around sessions: stats, audit log, history and the rate limiter.

:class:`Surface` owns them for the life of the service (``async with``) and is the one cell
observer the session manager calls: each finished execution becomes one
:class:`~ws_sandbox.records.ExecutionRecord`, handed to each of them.
"""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType

from ws_sandbox.audit import AuditLog
from ws_sandbox.driver import SessionRunner
from ws_sandbox.history import History
from ws_sandbox.ratelimit import RateLimiter
from ws_sandbox.records import record_of
from ws_sandbox.session import CellFinished
from ws_sandbox.settings import Settings
from ws_sandbox.stats import Stats

log = logging.getLogger(__name__)


class Surface:
    """Stats, audit log, history and rate limiter of one service run."""

    def __init__(self, settings: Settings) -> None:
        self.stats = Stats()
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self.audit: AuditLog | None = None
        self.history: History | None = None
        if settings.enable_audit_log:
            self.audit = AuditLog(settings.audit_log_path, settings.audit_log_max_bytes,
                                  settings.audit_log_backups)
        if settings.enable_history:
            self.history = History(settings.history_db_path,
                                   retention_days=settings.history_retention_days,
                                   max_rows=settings.history_max_rows,
                                   output_bytes=settings.history_output_bytes)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Surface:
        async with contextlib.AsyncExitStack() as stack:
            if self.audit is not None:
                await stack.enter_async_context(self.audit)
            if self.history is not None:
                await stack.enter_async_context(self.history)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stack.aclose()

    def observe(self, runner: SessionRunner, finished: CellFinished) -> None:
        """The cell observer: record one finished execution everywhere."""
        record = record_of(runner, finished)
        self.stats.observe(record)
        if self.audit is not None:
            self.audit.record(record)
        if self.history is not None:
            self.history.record(record)
