"""The audit log's writer thread, flush on close and rotation by size."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from ws_sandbox import audit as audit_module
from ws_sandbox.audit import AuditLog, rotate
from ws_sandbox.exceptions import ConfigError
from ws_sandbox.records import ExecutionRecord
from ws_sandbox.settings import Settings


def record(n: int, compile_time_ms: float | None = None) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=f"e{n}", session_id="s", cell_id=f"c{n}", origin="session",
        client="key:abc", address="192.0.2.9",
        language="python" if compile_time_ms is None else "rust", started_at=1.0,
        finished_at=2.0,
        code_bytes=8, code_sha256="ab" * 32, status="success", exit_code=0,
        execution_time_ms=3.5, memory_used_mb=12.0, compile_time_ms=compile_time_ms,
        output_bytes=2, truncated=False,
        error=None, stdout="1\n")


async def test_every_line_is_written_by_close(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.log"
    async with AuditLog(path, max_bytes=10_000_000, backups=2) as audit:
        for n in range(500):
            audit.record(record(n, 190.5 if n == 1 else None))
        audit.event("admin_limits_changed", changes={"max_code_bytes": 10})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 501
    assert [x["execution_id"] for x in lines[:500]] == [f"e{n}" for n in range(500)]
    first = lines[0]
    for key in ("time", "execution_id", "session_id", "client", "language", "code_bytes",
                "code_sha256", "status", "exit_code", "execution_time_ms",
                "memory_used_mb", "compile_time_ms", "output_bytes", "truncated"):
        assert key in first
    assert first["compile_time_ms"] is None  # a Python cell's
    assert (lines[1]["language"], lines[1]["compile_time_ms"]) == ("rust", 190.5)
    # A keyed caller is named by its key and recorded with its address (the key alone
    # before: where a leaked key was used from could not be told).
    assert (first["client"], first["address"]) == ("key:abc", "192.0.2.9")
    assert "stdout" not in first  # outputs belong to the history, not the audit log
    assert lines[-1]["event"] == "admin_limits_changed"


async def test_the_close_gives_up_on_a_write_that_hangs_and_logs_what_was_not_taken(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A write that never returns (a disk that hangs) made the close, and so the service's
    exit, wait without end. The close now gives up after its timeout; the lines the writer
    never took go to the service's log, as lines still waiting at a close do."""
    audit = AuditLog(tmp_path / "a.log", 1 << 20, 1, timeout=0.5)
    release = threading.Event()
    try:
        async with audit:
            audit._write_waiting = lambda: release.wait(60)  # type: ignore[assignment,method-assign]
            audit.record(record(0))
            audit._hand_over()
            await wait_for(lambda: audit.lines_waiting == 1)  # taken; its write hangs
            for n in range(1, 4):
                audit.record(record(n))
            start = time.monotonic()
        assert time.monotonic() - start < 10
        logged = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("the audit log's writer has not finished in 0.5 s") and
                   "1 lines it took are lost, 3 it did not take follow" in m
                   for m in logged), logged
        untaken = [json.loads(m.removeprefix("audit line not written: "))["execution_id"]
                   for m in logged if m.startswith("audit line not written: ")]
        assert untaken == ["e1", "e2", "e3"]
    finally:
        release.set()


async def test_rotation_by_size_keeps_n_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    async with AuditLog(path, max_bytes=4096, backups=2) as audit:
        for n in range(200):
            audit.record(record(n))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 4096
    newest = [json.loads(x) for x in path.read_text().splitlines()]
    assert newest[-1]["execution_id"] == "e199"
    # Lines were never split across files.
    older = (tmp_path / "audit.log.1").read_text().splitlines()
    assert all(json.loads(x) for x in older)


def test_rotate_never_drops_the_lines_just_written(tmp_path: Path) -> None:
    """With 0 backups a rotation deleted the live file: AUDIT_LOG_BACKUPS=0 lost 36 of 40
    records (a review). Settings now refuse 0, and rotate refuses it too."""
    path = tmp_path / "audit.log"
    path.write_text("x\n")
    with pytest.raises(ValueError, match="at least one backup"):
        rotate(path, 0)
    assert path.read_text() == "x\n"
    with pytest.raises(ConfigError, match=r"AUDIT_LOG_BACKUPS=0 is out of range: must be"
                       r" between 1 and 1000 \(with 0, each rotation would delete"):
        Settings.from_env({"AUDIT_LOG_BACKUPS": "0"})


def lines_of(*paths: Path) -> list[dict[str, object]]:
    return [json.loads(line) for p in paths for line in p.read_text().splitlines()]


async def test_a_failed_rotation_keeps_the_lines_and_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A non-empty directory where the rotation must put audit.log.1: every rotation fails,
    # as with a full disk. The writer used to die on it, and every later line was lost.
    monkeypatch.setattr(audit_module, "RETRY_INTERVAL", 0.05)
    path = tmp_path / "audit.log"
    blocker = tmp_path / "audit.log.1"
    (blocker / "x").mkdir(parents=True)
    async with AuditLog(path, max_bytes=7000, backups=1) as audit:  # ~18 lines a file
        for n in range(20):
            audit.record(record(n))
        audit.event("admin_limits_changed", changes={})  # handed over at once
        await wait_for(lambda: audit.error is not None)
        assert audit.error is not None and "audit.log.1" in audit.error
        assert audit.lines_waiting > 0 and audit.write_errors >= 1
        errors = audit.write_errors
        await wait_for(lambda: audit.write_errors > errors)  # tried again on its own
        shutil.rmtree(blocker)
        await wait_for(lambda: audit.error is None)  # no new line needed
        for n in range(20, 30):
            audit.record(record(n))
    assert audit.lines_waiting == 0 and audit.lines_dropped == 0
    got = lines_of(blocker, path)
    ids = [x.get("execution_id", x["event"]) for x in got]
    assert ids == [f"e{n}" for n in range(20)] + ["admin_limits_changed"] + \
        [f"e{n}" for n in range(20, 30)]


async def test_a_line_cut_short_by_a_full_disk_is_finished_not_repeated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "RETRY_INTERVAL", 0.05)
    path = tmp_path / "audit.log"
    real_write = os.write
    calls = 0

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        if os.readlink(f"/proc/self/fd/{fd}") != str(path):
            return real_write(fd, data)  # not the audit writer's
        calls += 1
        if calls == 3:
            return real_write(fd, bytes(data)[:7])  # a short write, then ENOSPC
        if 4 <= calls <= 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    async with AuditLog(path, max_bytes=10_000_000, backups=1) as audit:
        for n in range(10):
            audit.record(record(n))
        await wait_for(lambda: audit.write_errors == 3 and audit.error is None)
    assert [x["execution_id"] for x in lines_of(path)] == [f"e{n}" for n in range(10)]
    assert audit.lines_written == 10


async def test_lines_beyond_the_bound_are_dropped_oldest_first_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(audit_module, "MAX_WAITING_BYTES", 2000)
    path = tmp_path / "audit.log"
    audit = AuditLog(path, max_bytes=10_000_000, backups=1)
    audit.start()
    path.unlink()
    path.mkdir()  # every reopen fails from now on
    audit._close_file()  # as after a failure: the next write reopens
    for n in range(40):
        audit.record(record(n))
    await audit.close()
    assert audit.lines_dropped > 0
    assert audit.lines_dropped + audit.lines_waiting == 40
    logged = [r.getMessage() for r in caplog.records]
    assert any("audit lines dropped" in m for m in logged)
    # The lines left at close go to the service's log, newest last: nothing silently lost.
    not_written = [m for m in logged if m.startswith("audit line not written")]
    assert len(not_written) == audit.lines_waiting
    assert '"execution_id":"e39"' in not_written[-1]


@pytest.mark.parametrize("content", [
    b"root:x:0:0:root:/root:/bin/bash\n",
    b'{"event":"x"}\n',  # JSON, but no line of ours starts so
    b"x\n" + b"y" * (64 * 1024) + b'\n{"time":"2026"}\n',  # none in the first 64 KiB
])
async def test_a_file_that_is_not_an_audit_log_is_refused_and_left_as_it_is(
        tmp_path: Path, content: bytes) -> None:
    """AUDIT_LOG_PATH naming another file (a typo: /etc/passwd) had the lines appended to
    it, and past AUDIT_LOG_MAX_BYTES it was renamed to ``passwd.1``."""
    other = tmp_path / "passwd"
    other.write_bytes(content)
    log = AuditLog(other, max_bytes=4096, backups=2)
    with pytest.raises(ConfigError, match=r"^it is not an audit log \(no audit line in its"
                       r" first 64 KiB\); it was left as it is$"):
        await log.__aenter__()
    assert other.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]


async def test_something_other_than_a_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="it is not a regular file"):
        await AuditLog(fifo, max_bytes=4096, backups=2).__aenter__()
    assert [p.name for p in tmp_path.iterdir()] == ["fifo"]
    # A process's descriptor, whatever it points at (a rotation would rename /dev/stdout;
    # a review found /dev/stderr taken when it was an empty file).
    for path in ("/dev/stdout", "/dev/stderr", "/dev/null", "/proc/self/fd/1"):
        with pytest.raises(ConfigError, match=r"^it is /(dev|proc)/\S+, not a file of its"
                           r" own \(the log is rotated by renaming it\)"):
            await AuditLog(path, max_bytes=4096, backups=2).__aenter__()


@pytest.mark.parametrize("content", [
    b"", b'{"ti', None,
    # What a crash, an editor or a cut (tail -c) can leave of an audit log (a review):
    b'\n{"time":"2026-11-27T20:00:00.000Z","event":"execution"}\n',
    b'\xef\xbb\xbf{"time":"2026-11-27T20:00:00.000Z","event":"execution"}\n',
    b'\x00\x00\x00{"time":"2026-11-27T20:00:00.000Z","event":"execution"}\n',
    b'0:00.000Z","event":"execution"}\n{"time":"2026-11-27T20:00:01.000Z","event":"x"}\n',
])
async def test_an_audit_log_an_empty_file_or_a_first_line_cut_short_is_appended_to(
        tmp_path: Path, content: bytes | None) -> None:
    """The log's own file (written by an earlier run) is taken; so is an empty file, and one
    whose first line a full disk cut short."""
    path = tmp_path / "audit.log"
    if content is None:
        async with AuditLog(path, max_bytes=1 << 20, backups=2) as first:
            first.record(record(1))
        content = path.read_bytes()
    else:
        path.write_bytes(content)
    async with AuditLog(path, max_bytes=1 << 20, backups=2) as audit:
        audit.record(record(2))
    assert path.read_bytes().startswith(content)
    assert json.loads(path.read_bytes()[len(content):].splitlines()[-1])["execution_id"] == "e2"
