"""Stats percentiles and the Prometheus exposition."""

from __future__ import annotations

from ws_sandbox.metrics import StoreState, render
from ws_sandbox.records import ExecutionRecord
from ws_sandbox.stats import Stats, percentile


def record(ms: float, status: str = "success", language: str = "python") -> ExecutionRecord:
    return ExecutionRecord(
        execution_id="e", session_id="s", cell_id="c", origin="rest", client="x", address="x",
        language=language, started_at=0.0, finished_at=1.0, code_bytes=1, code_sha256="",
        status=status,  # type: ignore[arg-type]
        exit_code=0, execution_time_ms=ms, memory_used_mb=None, output_bytes=3,
        truncated=status == "error", error=None)


def test_percentile_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99)) == (50.0, 99.0)
    assert percentile([], 50) is None


def test_snapshot_and_exposition() -> None:
    stats = Stats()
    stats.observe(record(3.0))
    stats.observe(record(700.0, "error", "shell"))
    snap = stats.snapshot()
    assert snap["total"] == 2
    assert snap["by_status"] == {"success": 1, "error": 1}
    assert snap["by_language"] == {"python": 1, "shell": 1}
    text = render(stats, sessions=2, queued_cells=1, rate_limited=4,
                  pool={"python": {"ready": 1, "target": 2, "starting": 1,
                                   "last_error": None}},
                  stores={"audit": StoreState(write_errors=3, waiting=5, dropped=0),
                          "history": StoreState(0, 0, 2)},
                  refused={"too_many_sessions": 6})
    assert 'ws_sandbox_executions_total{status="error",language="shell"} 1' in text
    # Every reason has its series, 0 until it happens (a rate() over a missing series is
    # nothing, not 0).
    assert 'ws_sandbox_sessions_refused_total{reason="at_capacity"} 0' in text
    assert 'ws_sandbox_sessions_refused_total{reason="too_many_sessions"} 6' in text
    assert 'ws_sandbox_execution_seconds_bucket{le="0.005"} 1' in text
    assert 'ws_sandbox_execution_seconds_bucket{le="1"} 2' in text
    assert 'ws_sandbox_execution_seconds_bucket{le="+Inf"} 2' in text
    assert "ws_sandbox_execution_seconds_count 2" in text
    assert "ws_sandbox_sessions_active 2" in text
    assert 'ws_sandbox_pool_ready{language="python"} 1' in text
    assert "ws_sandbox_rate_limited_total 4" in text
    assert 'ws_sandbox_record_write_errors_total{store="audit"} 3' in text
    assert 'ws_sandbox_records_waiting{store="audit"} 5' in text
    assert 'ws_sandbox_records_dropped_total{store="history"} 2' in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


def test_large_counts_and_floats_are_written_exactly() -> None:
    # ``:g`` wrote six significant digits: 1234567 became 1.23457e+06, and a counter past a
    # million seemed to stand still between scrapes.
    stats = Stats()
    stats.observe(record(3.0))
    stats.by_status_language[("success", "python")] = 1_234_567
    stats.time_sum_s = 1_500_000.25
    text = render(stats, sessions=0, queued_cells=0, rate_limited=10_000_003, pool={},
                  stores={"audit": StoreState(write_errors=0, waiting=0,
                                              dropped=2**53 + 2)})
    assert 'ws_sandbox_executions_total{status="success",language="python"} 1234567' in text
    assert "ws_sandbox_rate_limited_total 10000003" in text
    assert "ws_sandbox_execution_seconds_sum 1500000.25" in text
    assert f'ws_sandbox_records_dropped_total{{store="audit"}} {2**53 + 2}' in text
    assert "e+" not in text
