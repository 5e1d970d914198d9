"""The WebSocket adapter's helpers, no server."""

from __future__ import annotations

import pytest

from ws_sandbox.websocket import close_reason


@pytest.mark.parametrize(("reason", "expected"), [
    ("short", "short"),
    ("a" * 123, "a" * 123),
    ("a" * 200, "a" * 123),
    ("é" * 100, "é" * 61),  # 2 bytes each: 61 whole characters, not a broken 62nd
    ("\ud800" + "b" * 200, "?" + "b" * 122),  # a lone surrogate cannot be sent as UTF-8
])
def test_close_reason_fits_a_close_frame(reason: str, expected: str) -> None:
    cut = close_reason(reason)
    assert cut == expected
    assert len(cut.encode()) <= 123
