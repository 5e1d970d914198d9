"""The audit log's writer thread, flush on close and rotation by size."""

from __future__ import annotations

import json
from pathlib import Path

from ws_sandbox.audit import AuditLog, rotate
from ws_sandbox.records import ExecutionRecord


def record(n: int) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=f"e{n}", session_id="s", cell_id=f"c{n}", origin="session",
        client="127.0.0.1", language="python", started_at=1.0, finished_at=2.0,
        code_bytes=8, code_sha256="ab" * 32, status="success", exit_code=0,
        execution_time_ms=3.5, memory_used_mb=12.0, output_bytes=2, truncated=False,
        error=None, stdout="1\n")


async def test_every_line_is_written_by_close(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.log"
    async with AuditLog(path, max_bytes=10_000_000, backups=2) as audit:
        for n in range(500):
            audit.record(record(n))
        audit.event("admin_limits_changed", changes={"max_code_bytes": 10})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 501
    assert [x["execution_id"] for x in lines[:500]] == [f"e{n}" for n in range(500)]
    first = lines[0]
    for key in ("time", "execution_id", "session_id", "client", "language", "code_bytes",
                "code_sha256", "status", "exit_code", "execution_time_ms",
                "memory_used_mb", "output_bytes", "truncated"):
        assert key in first
    assert "stdout" not in first  # outputs belong to the history, not the audit log
    assert lines[-1]["event"] == "admin_limits_changed"


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


def test_rotate_with_no_backups_drops_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("x\n")
    rotate(path, 0)
    assert not path.exists()
