"""The summary of refusals: counts, callers named most first, bounded, one line a window."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ws_sandbox import refusals as refusals_module
from ws_sandbox.refusals import Refusals


async def test_a_window_is_one_line_naming_the_callers_refused_most(
        caplog: pytest.LogCaptureFixture) -> None:
    r = Refusals(interval=0.05)
    with caplog.at_level(logging.WARNING, logger="ws_sandbox.refusals"):
        for n in range(7):
            r.refused("forbidden", f"10.0.0.{n}" if n < 6 else "10.0.0.0")
        for _ in range(3):
            r.refused("rate_limited", "key:ab12")
        r.refused("unauthorized", "10.0.0.9")
        assert caplog.records == []  # not a line each
        await asyncio.sleep(0.15)
        lines = [rec.getMessage() for rec in caplog.records]
    assert lines == ["refused in the last 0.05 s: 7 forbidden (10.0.0.0 2, 10.0.0.1 1,"
                     " 10.0.0.2 1, 10.0.0.3 1, 10.0.0.4 1, 1 more); 3 rate_limited"
                     " (key:ab12 3); 1 unauthorized (10.0.0.9 1)"]
    assert r.auth == {"forbidden": 7, "unauthorized": 1}  # only refusals for credentials


async def test_a_quiet_spell_logs_nothing_and_the_next_refusal_starts_a_window(
        caplog: pytest.LogCaptureFixture) -> None:
    r = Refusals(interval=0.05)
    with caplog.at_level(logging.WARNING, logger="ws_sandbox.refusals"):
        r.refused("at_capacity", "10.0.0.1")
        await asyncio.sleep(0.3)
        r.refused("too_many_sessions", "key:cd34")
        r.close()  # at shutdown: what is gathered is written at once
        long = Refusals(interval=60)
        long.refused("rate_limited", "10.0.0.2")
        long.close()  # over the whole seconds its window took, not the minute
        long.close()  # nothing more
        lines = [rec.getMessage() for rec in caplog.records]
    assert lines == ["refused in the last 0.05 s: 1 at_capacity (10.0.0.1 1)",
                     "refused in the last 0.05 s: 1 too_many_sessions (key:cd34 1)",
                     "refused in the last 1 s: 1 rate_limited (10.0.0.2 1)"]


async def test_many_callers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client with many addresses (or keys) cannot make the summary hold one entry each."""
    monkeypatch.setattr(refusals_module, "MAX_CALLERS", 10)
    r = Refusals()
    for n in range(100):
        r.refused("forbidden", f"10.0.{n}.1")
    r.refused("forbidden", "10.0.0.1")  # already tracked: still counted as itself
    assert len(r._window) == 11
    assert r._window["forbidden", "others"] == 90
    assert r._window["forbidden", "10.0.0.1"] == 2
    assert r.summary().startswith("101 forbidden (others 90, 10.0.0.1 2, ")
    r.close()
