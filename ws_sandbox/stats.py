"""Execution statistics for ``GET /api/v1/stats`` and ``GET /metrics``.

A :class:`Stats` object observes every finished execution (REST call or session cell) and
keeps counters, a histogram of execution times and a window of recent latencies for
percentiles. It is fed on the event loop and does no I/O.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from typing import Any

from ws_sandbox.records import ExecutionRecord

#: Upper bounds (seconds) of the execution-time histogram's buckets.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                              30.0, 60.0)
WINDOW = 2048


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values`` by nearest rank; ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[rank]


class Stats:
    """Counters of finished executions."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.by_status_language: Counter[tuple[str, str]] = Counter()
        self.by_origin: Counter[str] = Counter()
        self.bucket_counts = [0] * len(BUCKETS)
        self.time_sum_s = 0.0
        self.count = 0
        self.output_bytes = 0
        self.truncated = 0
        self._recent: deque[float] = deque(maxlen=WINDOW)

    def observe(self, record: ExecutionRecord) -> None:
        """Count one finished execution."""
        seconds = record.execution_time_ms / 1000.0
        self.by_status_language[(record.status, record.language)] += 1
        self.by_origin[record.origin] += 1
        self.count += 1
        self.time_sum_s += seconds
        self.output_bytes += record.output_bytes
        self.truncated += record.truncated
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1
                break
        self._recent.append(record.execution_time_ms)

    @property
    def uptime_s(self) -> float:
        """Seconds since the service started."""
        return time.monotonic() - self.started

    def snapshot(self) -> dict[str, Any]:
        """Totals by status and language, by origin, and latency percentiles (ms)."""
        by_status: Counter[str] = Counter()
        by_language: Counter[str] = Counter()
        for (status, language), n in self.by_status_language.items():
            by_status[status] += n
            by_language[language] += n
        recent = list(self._recent)
        return {
            "total": self.count,
            "by_status": dict(by_status),
            "by_language": dict(by_language),
            "by_origin": dict(self.by_origin),
            "truncated": self.truncated,
            "output_bytes": self.output_bytes,
            "latency_ms": {"window": len(recent),
                           "p50": percentile(recent, 50), "p90": percentile(recent, 90),
                           "p99": percentile(recent, 99),
                           "max": max(recent) if recent else None},
            "uptime_s": round(self.uptime_s, 3),
        }
