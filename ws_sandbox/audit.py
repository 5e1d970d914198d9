"""The audit log: one JSON line per execution, REST call or session cell alike.

Lines are handed to a dedicated writer thread through a queue, so the event loop never
waits on the disk; the thread writes whatever has accumulated and rotates the file by size
(``audit.log`` -> ``audit.log.1`` ... ``audit.log.N``). Closing the log (the service's
shutdown) drains the queue first: no line is lost. Admin actions are audited too, as lines
with an ``event`` field.

A write that fails (a full disk, a directory in the way of a rotation) does not stop the
writer: the lines wait in memory, in order, and are tried again every ``RETRY_INTERVAL``
seconds and with each new batch; :attr:`AuditLog.error` says why meanwhile (the health
check reports it). The writer counts the bytes that reached the file, so a line cut short
by a full disk is finished, not written twice. Beyond ``MAX_WAITING_BYTES`` the oldest
waiting lines are dropped and counted; so are the newest lines, past as many bytes handed to
a writer thread that takes none (a write to a disk that hangs never returns). Lines still
waiting at close go to the service's own log, and so do those the thread has not taken when
the close gives up on a write that hangs, after ``timeout`` seconds (the thread is a daemon:
it holds no exit). A path that names something else (a file that
is not an audit log, a device) is refused at start, untouched.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import stat
import time
from pathlib import Path
from typing import Any

import msgspec

from ws_sandbox.batching import Batcher
from ws_sandbox.exceptions import ConfigError
from ws_sandbox.records import RECORD_FILE_MODE, ExecutionRecord
from ws_sandbox.store_thread import daemon, drain, settled

log = logging.getLogger(__name__)

_STOP = object()
FLUSH_INTERVAL = 0.1
"""Seconds lines wait in the event loop before the writer thread takes them as a batch."""
RETRY_INTERVAL = 1.0
"""Seconds between attempts while the file cannot be written."""
MAX_WAITING_BYTES = 64 << 20
"""Lines held in memory while the file cannot be written; beyond this the oldest are dropped."""
_encoder = msgspec.json.Encoder()


class AuditLog:
    """Appends JSON lines to ``path`` from a writer thread.

    Use as ``async with AuditLog(path, max_bytes, backups) as audit:``.

    Args:
        path: the log file (its directory is created).
        max_bytes: rotate when the file would grow beyond this size.
        backups: rotated files kept.
        timeout: seconds the close waits for the writer (None: no limit).
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int, *,
                 timeout: float | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.timeout = timeout
        self.lines_written = 0
        self.write_errors = 0
        """Failed attempts to write or rotate the file."""
        self._lines_dropped = 0  # by the writer thread
        self.error: str | None = None
        """Why lines are waiting (the last failure), or ``None`` while the file is written."""
        self._queue: queue.SimpleQueue[list[bytes] | object] = queue.SimpleQueue()
        self._batcher: Batcher[bytes] = Batcher(self._queue.put, FLUSH_INTERVAL,
                                                bound=MAX_WAITING_BYTES, weigh=len,
                                                what="audit lines")
        self._thread, self._ended = daemon(self._serve, "audit-writer")
        self._closed = False
        # Owned by the writer thread once it runs:
        self._waiting: collections.deque[bytes] = collections.deque()
        self._waiting_bytes = 0
        self._offset = 0  # bytes of the first waiting line already in the file
        self._fd = -1
        self._size = 0  # the file's size as this writer knows it

    @property
    def lines_waiting(self) -> int:
        """Lines taken from the queue and not yet in the file."""
        return len(self._waiting)

    @property
    def lines_dropped(self) -> int:
        """Lines dropped because too many waited for a file that could not be written, or
        for a writer thread that took none (a write that hangs)."""
        return self._lines_dropped + self._batcher.dropped

    def stalled_for(self) -> float:
        """Seconds the oldest line handed to the writer thread has waited for it to take it
        (0.0: it took them all): a write that hangs."""
        return self._batcher.stalled_for()

    @property
    def bytes_behind(self) -> int:
        """Bytes of lines handed to the writer thread and not yet taken by it."""
        return self._batcher.behind

    async def __aenter__(self) -> AuditLog:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Open the file (here, so a bad path stops the start-up) and start the writer.

        Raises:
            OSError: the directory cannot be made or the file cannot be opened.
            ConfigError: ``path`` names a file that is not an audit log (see
                :func:`check_is_audit_log`), which is left as it is.
        """
        check_is_audit_log(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        self._thread.start()

    async def close(self) -> None:
        """Write every queued line, then stop the writer; give up after ``timeout`` seconds
        (a write that hangs), with the lines it has not taken in the service's log."""
        if self._closed:
            return
        self._hand_over()
        self._closed = True
        self._queue.put(_STOP)
        if not await settled(self._ended, self.timeout):
            self._gave_up()

    def _gave_up(self) -> None:
        """The writer hangs: log the lines it has not taken (they are no longer its)."""
        untaken = [line for item in drain(self._queue) if isinstance(item, list)
                   for line in item]
        log.error("the audit log's writer has not finished in %g s (a write to %s that"
                  " hangs?); %d lines it took are lost, %d it did not take follow",
                  self.timeout, self.path, self.lines_waiting, len(untaken))
        for line in untaken:
            log.error("audit line not written: %s", line.decode(errors="replace").rstrip())

    # --- producers (event loop) -----------------------------------------------------------

    def record(self, record: ExecutionRecord) -> None:
        """Queue the line of one finished execution (never blocks)."""
        line = {
            "time": _iso(record.finished_at), "event": "execution",
            "execution_id": record.execution_id, "session_id": record.session_id,
            "cell_id": record.cell_id, "origin": record.origin, "client": record.client,
            "address": record.address,
            "language": record.language, "code_bytes": record.code_bytes,
            "code_sha256": record.code_sha256, "status": record.status,
            "exit_code": record.exit_code, "execution_time_ms": record.execution_time_ms,
            "memory_used_mb": record.memory_used_mb,
            "compile_time_ms": record.compile_time_ms, "output_bytes": record.output_bytes,
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

    def _serve(self) -> None:
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=RETRY_INTERVAL if self._waiting else None)
            except queue.Empty:
                item = None  # time to try the waiting lines again
            while item is not None:  # take what else is waiting: one pass per burst
                if item is _STOP:
                    stop = True
                else:
                    assert isinstance(item, list)
                    self._batcher.taken(item)
                    self._take(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            try:
                self._write_waiting()
            except Exception as exc:  # a bug must not end the audit: report it, try again
                log.exception("the audit writer failed")
                self._failed(exc)
        if self._waiting:
            log.error("%d audit lines could not be written to %s (%s); they follow",
                      len(self._waiting), self.path, self.error)
            for line in self._waiting:
                log.error("audit line not written: %s", line.decode(errors="replace").rstrip())
        self._close_file()

    def _take(self, batch: list[bytes]) -> None:
        self._waiting.extend(batch)
        self._waiting_bytes += sum(map(len, batch))
        dropped = 0
        while self._waiting_bytes > MAX_WAITING_BYTES and len(self._waiting) > 1:
            # The first line may be partly written already: drop the one after it.
            index = 1 if self._offset else 0
            self._waiting_bytes -= len(self._waiting[index])
            del self._waiting[index]
            dropped += 1
        if dropped:
            self._lines_dropped += dropped
            log.error("%d audit lines dropped: more than %d bytes wait for %s (%s)",
                      dropped, MAX_WAITING_BYTES, self.path, self.error)

    def _write_waiting(self) -> None:
        """Write the waiting lines in order; on a failure, keep the rest for the next try."""
        waiting = self._waiting
        while waiting:
            line = waiting[0]
            try:
                if self._fd < 0:
                    self._open()
                if not self._offset and self._size and self._size + len(line) > self.max_bytes:
                    self._close_file()
                    rotate(self.path, self.backups)
                    self._open()
                written = os.write(self._fd, memoryview(line)[self._offset:])
            except OSError as exc:
                self._failed(exc)
                return
            self._size += written
            self._offset += written
            if self._offset == len(line):
                waiting.popleft()
                self._waiting_bytes -= len(line)
                self._offset = 0
                self.lines_written += 1
        if self.error is not None:
            log.warning("the audit log %s is written again", self.path)
            self.error = None

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           RECORD_FILE_MODE)
        self._size = os.fstat(self._fd).st_size

    def _failed(self, exc: Exception) -> None:
        self.write_errors += 1
        if self.error is None:
            log.error("cannot write the audit log %s: %s; %d lines wait, tried again every"
                      " %g s", self.path, exc, len(self._waiting), RETRY_INTERVAL)
        self.error = str(exc)
        self._close_file()  # reopened on the next try: the path may have been fixed or moved

    def _close_file(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)


LINE_START = b'{"time":"'
"""How every line of the audit log starts (``time`` is each line's first key)."""


SNIFF_BYTES = 64 * 1024
"""How much of an existing file is read to tell an audit log."""


def check_is_audit_log(path: Path) -> None:
    """Refuse a ``path`` that names something else (a typo: ``/etc/passwd``), before anything
    is written to it: the log appends to it and, by size, renames it to ``path.1``.

    Taken: nothing there, an empty file, or a regular file with an audit line in its first
    64 KiB, or whose start (after blanks, NUL bytes or a byte order mark) is one cut short.
    Refused: a device, a pipe or a process's descriptor (``/dev/stdout``), and files
    without an audit line.

    Raises:
        ConfigError: naming what is wrong.
    """
    for name in (os.path.abspath(path), os.path.realpath(path)):
        if name.startswith(("/dev/", "/proc/")):
            raise ConfigError(f"it is {name}, not a file of its own (the log is rotated by"
                              " renaming it); it was left as it is")
    try:
        info = path.stat()
    except OSError:
        return  # nothing there; or opening it says why
    if stat.S_ISDIR(info.st_mode):
        return  # opening it says why
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError("it is not a regular file (the log is rotated by renaming it);"
                          " it was left as it is")
    if info.st_size == 0:
        return
    try:
        with path.open("rb") as file:
            start = file.read(SNIFF_BYTES)
    except OSError:
        return  # opening it to append says why
    head = start.lstrip(b"\x00\t\n\r \xef\xbb\xbf")
    if LINE_START.startswith(head[: len(LINE_START)]) or b"\n" + LINE_START in start:
        return
    raise ConfigError("it is not an audit log (no audit line in its first 64 KiB); it was"
                      " left as it is")


def rotate(path: Path, backups: int) -> None:
    """Shift ``path.N-1`` to ``path.N`` ... and ``path`` to ``path.1``; drop the oldest.

    ``backups`` is at least 1 (settings refuse 0): the lines just written are always kept.
    """
    if backups < 1:
        raise ValueError(f"rotate needs at least one backup, not {backups}")
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    if path.exists():
        path.replace(path.with_name(f"{path.name}.1"))


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + \
        f".{int(epoch % 1 * 1000):03d}Z"
