"""``ws_sandbox.surface``: the record stores and the limiter take their settings."""

from __future__ import annotations

from pathlib import Path

from ws_sandbox.settings import Settings
from ws_sandbox.surface import Surface


def test_the_stores_and_the_limiter_get_their_environment_variables(tmp_path: Path) -> None:
    # The stores' behaviour under these parameters is tested in test_history and test_audit;
    # here, that each variable reaches them (a name mapped to the wrong field would not).
    settings = Settings.from_env({
        "HISTORY_DB_PATH": str(tmp_path / "h.db"), "HISTORY_MAX_ROWS": "3",
        "HISTORY_RETENTION_DAYS": "2.5", "HISTORY_OUTPUT_BYTES": "10",
        "AUDIT_LOG_PATH": str(tmp_path / "a.log"), "AUDIT_LOG_MAX_BYTES": "5000",
        "AUDIT_LOG_BACKUPS": "4", "RATE_LIMIT_PER_MINUTE": "7", "RATE_LIMIT_BURST": "2",
        "AUTH_FAILURES_PER_MINUTE": "11",
    })
    surface = Surface(settings)
    assert surface.history is not None and surface.audit is not None
    history, audit = surface.history, surface.audit
    assert (history.path, history.max_rows, history.retention_days, history.output_bytes) == (
        tmp_path / "h.db", 3, 2.5, 10)
    assert (audit.path, audit.max_bytes, audit.backups) == (tmp_path / "a.log", 5000, 4)
    assert surface.limiter.enabled
    # The limiters' numbers, not only that one is on (a review):
    assert (surface.limiter.per_minute, surface.limiter.burst) == (7, 2)
    assert (surface.guesses.per_minute, surface.guesses.burst) == (11, 11)


def test_stores_switched_off_are_not_made(tmp_path: Path) -> None:
    settings = Settings.from_env({"ENABLE_AUDIT_LOG": "false", "ENABLE_HISTORY": "false",
                                  "RATE_LIMIT_PER_MINUTE": "0"})
    surface = Surface(settings)
    assert (surface.audit, surface.history, surface.limiter.enabled) == (None, None, False)
