"""One record per finished execution, shared by stats, audit log, history and metrics.

Every adapter's cells end in the same :class:`~ws_sandbox.session.CellFinished` action; the
session manager hands it to its cell observers, and :func:`record_of` turns it into an
:class:`ExecutionRecord` once, so that the audit line, the history row and the counters
cannot disagree.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Literal

import msgspec

from ws_sandbox import frames as fr

if TYPE_CHECKING:
    from ws_sandbox.driver import SessionRunner
    from ws_sandbox.session import CellFinished

#: Mode of the files that keep records (the audit log, the history database): they hold
#: callers' identities and, in the history, outputs, so not everyone may read them.
RECORD_FILE_MODE = 0o640

#: The adapter an execution came through: a WebSocket session, ``POST /api/v1/execute``, or
#: a Jupyter kernel.
Origin = Literal["session", "rest", "jupyter"]


class ExecutionRecord(msgspec.Struct, kw_only=True):
    """What is known about one execution once it has ended."""

    execution_id: str
    session_id: str
    cell_id: str
    origin: Origin
    client: str
    #: The peer address of the connection that sent the cell (``client`` names a keyed
    #: caller by its key alone); empty in history rows written before it was kept.
    address: str
    language: str
    started_at: float
    finished_at: float
    code_bytes: int
    code_sha256: str
    status: fr.Status
    exit_code: int | None
    execution_time_ms: float
    memory_used_mb: float | None
    #: Rust: rustc's share of ``execution_time_ms``; ``None`` for the other languages, and
    #: in history rows written before it was kept.
    compile_time_ms: float | None = None
    output_bytes: int
    truncated: bool
    error: str | None
    stdout: str = ""
    stderr: str = ""


def record_of(runner: SessionRunner, finished: CellFinished) -> ExecutionRecord:
    """Build the record of one finished cell.

    A one-shot REST call names its cell after its execution id, so the id the caller got
    back finds the record; a session cell gets a fresh id of its own.
    """
    cell, result = finished.cell, finished.result
    code = cell.code.encode("utf-8", "surrogatepass")
    now = time.time()
    origin = runner.origin
    return ExecutionRecord(
        execution_id=cell.id if origin == "rest" else os.urandom(16).hex(),
        session_id=runner.session_id,
        cell_id=cell.id,
        origin=origin,
        client=runner.client_id,
        address=cell.address or runner.address,
        language=runner.core.language,
        started_at=round(now - result.execution_time_ms / 1000.0, 6),
        finished_at=round(now, 6),
        code_bytes=len(code),
        code_sha256=hashlib.sha256(code).hexdigest(),
        status=result.status,
        exit_code=result.exit_code,
        execution_time_ms=result.execution_time_ms,
        memory_used_mb=result.memory_used_mb,
        compile_time_ms=result.compile_time_ms,
        output_bytes=cell.output_bytes,
        truncated=result.truncated,
        error=result.error,
        stdout="".join(cell.stdout),
        stderr="".join(cell.stderr),
    )
