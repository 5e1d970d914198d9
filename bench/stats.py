"""Small statistics helpers shared by the benchmarks."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    """n, median, 99th percentile and minimum of millisecond samples."""
    return {"n": len(values), "p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(percentile(values, 0.99), 3), "min_ms": round(min(values), 3)}
