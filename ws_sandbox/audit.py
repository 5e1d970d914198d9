"""The audit log: one JSON line per execution, REST call or session cell alike.

Lines are handed to a dedicated writer thread through a queue, so the event loop never
waits on the disk; the thread writes whatever has accumulated, flushes, and rotates the file
by size (``audit.log`` -> ``audit.log.1`` ... ``audit.log.N``). Closing the log (the
service's shutdown) drains the queue first: no line is lost. Admin actions are audited too,
as lines with an ``event`` field.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from ws_sandbox.batching import Batcher
from ws_sandbox.records import ExecutionRecord

log = logging.getLogger(__name__)

_STOP = object()
FLUSH_INTERVAL = 0.1
"""Seconds lines wait in the event loop before the writer thread takes them as a batch."""
_encoder = msgspec.json.Encoder()


class AuditLog:
    """Appends JSON lines to ``path`` from a writer thread.

    Use as ``async with AuditLog(path, max_bytes, backups) as audit:``.

    Args:
        path: the log file (its directory is created).
        max_bytes: rotate when the file would grow beyond this size.
        backups: rotated files kept.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.lines_written = 0
        self._queue: queue.SimpleQueue[list[bytes] | object] = queue.SimpleQueue()
        self._batcher: Batcher[bytes] = Batcher(self._queue.put, FLUSH_INTERVAL)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._closed = False
        self._stream: BinaryIO

    async def __aenter__(self) -> AuditLog:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Open the file (here, so a bad path stops the start-up) and start the writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = self.path.open("ab")
        self._thread.start()

    async def close(self) -> None:
        """Write every queued line, then stop the writer."""
        if self._closed:
            return
        self._hand_over()
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    # --- producers (event loop) -----------------------------------------------------------

    def record(self, record: ExecutionRecord) -> None:
        """Queue the line of one finished execution (never blocks)."""
        line = {
            "time": _iso(record.finished_at), "event": "execution",
            "execution_id": record.execution_id, "session_id": record.session_id,
            "cell_id": record.cell_id, "origin": record.origin, "client": record.client,
            "language": record.language, "code_bytes": record.code_bytes,
            "code_sha256": record.code_sha256, "status": record.status,
            "exit_code": record.exit_code, "execution_time_ms": record.execution_time_ms,
            "memory_used_mb": record.memory_used_mb, "output_bytes": record.output_bytes,
            "truncated": record.truncated, "error": record.error,
        }
        self._put(line)

    def event(self, event: str, **fields: Any) -> None:
        """Queue a line for a non-execution event (an admin action, say)."""
        self._put({"time": _iso(time.time()), "event": event, **fields})
        self._hand_over()  # rare and important: written at once, not batched

    def _put(self, line: dict[str, Any]) -> None:
        if self._closed:
            log.error("audit line after close, written to the log instead: %s", line)
            return
        self._batcher.add(_encoder.encode(line) + b"\n")

    def _hand_over(self) -> None:
        """Give every pending line to the writer thread in one batch."""
        self._batcher.flush()

    # --- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        stream = self._stream
        try:
            while True:
                item = self._queue.get()
                batch: list[bytes] = []
                stop = item is _STOP
                if not stop:
                    assert isinstance(item, list)
                    batch.extend(item)
                while not stop:  # take what else is waiting: one flush per burst
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                    else:
                        assert isinstance(more, list)
                        batch.extend(more)
                for line in batch:
                    stream = self._write(stream, line)
                stream.flush()
                if stop:
                    return
        except Exception:
            log.exception("the audit writer failed")
        finally:
            stream.close()

    def _write(self, stream: BinaryIO, line: bytes) -> BinaryIO:
        if stream.tell() and stream.tell() + len(line) > self.max_bytes:
            stream.close()
            rotate(self.path, self.backups)
            stream = self.path.open("ab")
        stream.write(line)
        self.lines_written += 1
        return stream


def rotate(path: Path, backups: int) -> None:
    """Shift ``path.N-1`` to ``path.N`` ... and ``path`` to ``path.1``; drop the oldest."""
    if backups <= 0:
        path.unlink(missing_ok=True)
        return
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    if path.exists():
        path.replace(path.with_name(f"{path.name}.1"))


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + \
        f".{int(epoch % 1 * 1000):03d}Z"
