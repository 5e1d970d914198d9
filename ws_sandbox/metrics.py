"""``GET /metrics``: the Prometheus text exposition format (version 0.0.4), written by hand."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ws_sandbox.exceptions import CapacityError, TooManySessions
from ws_sandbox.refusals import AUTH_REASONS
from ws_sandbox.stats import BUCKETS, Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreState(NamedTuple):
    """How one record store (the audit log, the history) keeps up with its writes."""

    write_errors: int
    waiting: int
    dropped: int


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _value(value: float) -> str:
    """A sample's value, exact: a count as its digits (``:g`` would write 1234567 as
    1.23457e+06, and a counter past a million would seem to stand still), a float as the
    shortest text that reads back as the same float."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


def _family(name: str, kind: str, doc: str,
            samples: Iterable[tuple[str, Mapping[str, str], float]]) -> list[str]:
    lines = [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{suffix}{_labels(labels)} {_value(value)}"
              for suffix, labels, value in samples]
    return lines


#: Why a session open is refused at a limit, as counted by the session manager.
REFUSAL_REASONS = (CapacityError.code, TooManySessions.code)


def render(stats: Stats, *, sessions: int, queued_cells: int,
           pool: Mapping[str, Mapping[str, int | str | None]], rate_limited: int,
           stores: Mapping[str, StoreState] | None = None,
           refused: Mapping[str, int] | None = None,
           auth_refused: Mapping[str, int] | None = None,
           connections: tuple[int, int] = (0, 0)) -> str:
    """The service's metrics as Prometheus text (``connections``: open, refused)."""
    lines: list[str] = []
    lines += _family("ws_sandbox_executions_total", "counter",
                     "Finished executions (REST calls and session cells)",
                     [("", {"status": s, "language": lang}, n)
                      for (s, lang), n in sorted(stats.by_status_language.items())])
    cumulative = 0
    samples: list[tuple[str, Mapping[str, str], float]] = []
    for bound, n in zip(BUCKETS, stats.bucket_counts, strict=True):
        cumulative += n
        samples.append(("_bucket", {"le": f"{bound:g}"}, cumulative))
    samples += [("_bucket", {"le": "+Inf"}, stats.count), ("_sum", {}, stats.time_sum_s),
                ("_count", {}, stats.count)]
    lines += _family("ws_sandbox_execution_seconds", "histogram",
                     "Execution time of finished executions", samples)
    lines += _family("ws_sandbox_output_truncated_total", "counter",
                     "Executions whose output was cut at MAX_OUTPUT_BYTES",
                     [("", {}, stats.truncated)])
    lines += _family("ws_sandbox_rate_limited_total", "counter",
                     "Calls refused by the rate limiter", [("", {}, rate_limited)])
    refused = refused or {}
    lines += _family("ws_sandbox_sessions_refused_total", "counter",
                     "Session opens refused at a limit: at_capacity (MAX_CONCURRENT_EXECUTIONS),"
                     " too_many_sessions (MAX_SESSIONS_PER_KEY)",
                     [("", {"reason": r}, refused.get(r, 0)) for r in REFUSAL_REASONS])
    auth_refused = auth_refused or {}
    lines += _family("ws_sandbox_auth_refused_total", "counter",
                     "Calls refused for their credentials: unauthorized (no key), forbidden (a"
                     " wrong key, host or origin, or an admin call without the admin key)",
                     [("", {"reason": r}, auth_refused.get(r, 0)) for r in AUTH_REASONS])
    lines += _family("ws_sandbox_connections_refused_total", "counter",
                     "Connections refused at MAX_CONNECTIONS_PER_ADDRESS or at the service's"
                     " share of its open files", [("", {}, connections[1])])
    lines += _family("ws_sandbox_connections_open", "gauge",
                     "HTTP and WebSocket connections open", [("", {}, connections[0])])
    lines += _family("ws_sandbox_sessions_active", "gauge", "Sessions open or opening",
                     [("", {}, sessions)])
    lines += _family("ws_sandbox_cells_queued", "gauge", "Cells waiting in sessions",
                     [("", {}, queued_cells)])
    ready = [("", {"language": lang}, float(int(p.get("ready") or 0)))
             for lang, p in sorted(pool.items())]
    lines += _family("ws_sandbox_pool_ready", "gauge", "Warm sandboxes ready", ready)
    target = [("", {"language": lang}, float(int(p.get("target") or 0)))
              for lang, p in sorted(pool.items())]
    lines += _family("ws_sandbox_pool_target", "gauge", "Warm sandboxes wanted", target)
    stores = stores or {}
    lines += _family("ws_sandbox_record_write_errors_total", "counter",
                     "Failed writes of the audit log or the history (their records wait)",
                     [("", {"store": k}, v.write_errors) for k, v in sorted(stores.items())])
    lines += _family("ws_sandbox_records_waiting", "gauge",
                     "Records waiting in memory for their store to be writable again",
                     [("", {"store": k}, v.waiting) for k, v in sorted(stores.items())])
    lines += _family("ws_sandbox_records_dropped_total", "counter",
                     "Records dropped: too many waited, or the store refused their content",
                     [("", {"store": k}, v.dropped) for k, v in sorted(stores.items())])
    lines += _family("ws_sandbox_uptime_seconds", "gauge", "Seconds since start",
                     [("", {}, round(stats.uptime_s, 3))])
    return "\n".join(lines) + "\n"
