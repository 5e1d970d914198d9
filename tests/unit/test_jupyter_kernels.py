"""The kernel registry with a fake session manager: who may see and use which kernel."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ws_sandbox.driver import CloseRequest, Event
from ws_sandbox.exceptions import NotFound
from ws_sandbox.jupyter.kernels import KernelRegistry
from ws_sandbox.manager import SessionManager
from ws_sandbox.settings import Settings

KEY_A, KEY_B = "key:aaaaaaaaaaaa", "key:bbbbbbbbbbbb"


class FakeRunner:
    def __init__(self, n: int) -> None:
        self.session_id = f"s{n}"
        self.closed = asyncio.Event()
        self.core = SimpleNamespace(close_reason=None)

    async def feed(self, event: Event) -> None:
        if isinstance(event, CloseRequest):
            self.core.close_reason = event.reason
            self.closed.set()


class FakeManager:
    def __init__(self) -> None:
        self.settings = Settings()
        self.runners: list[FakeRunner] = []

    async def open(self, language: str, sink: Any, **_: Any) -> FakeRunner:
        self.runners.append(FakeRunner(len(self.runners)))
        return self.runners[-1]


async def test_a_kernel_started_with_a_key_is_that_keys_alone() -> None:
    """Any key could list another key's kernels, connect to one, run code in its state,
    read its output, interrupt, restart or delete it (and spend its owner's rate limit):
    it is now 404 to every other identity, as a WebSocket session's resume token is."""
    registry = KernelRegistry(cast(SessionManager, FakeManager()))
    a = await registry.start(None, client_id=KEY_A)
    shared = await registry.start(None, client_id="jupyter-token")
    assert [k.id for k in registry.list(KEY_A)] == [a.id]
    assert [k.id for k in registry.list(KEY_B)] == []
    assert [k.id for k in registry.list("jupyter-login")] == [shared.id]
    assert registry.get(a.id, KEY_A) is a
    for other in (KEY_B, "jupyter-token"):
        with pytest.raises(NotFound, match="does not exist"):
            registry.get(a.id, other)
    with pytest.raises(NotFound):
        await registry.delete(a.id, KEY_B)
    assert not a.dead
    # An id the client chose comes back cut short and quoted: 5,000 characters of it came
    # back whole, control characters and all (a review).
    with pytest.raises(NotFound) as unknown:
        registry.get("A" * 5000 + "\x1b[31m", KEY_A)
    assert len(unknown.value.message) < 300 and "\x1b" not in unknown.value.message
    # Callers without a key are one tenant, which no key holder belongs to (a key could
    # otherwise read, and fill the connections of, the kernels of the shared token).
    assert registry.get(shared.id, "jupyter-login") is shared
    with pytest.raises(NotFound):
        registry.get(shared.id, KEY_B)
    await registry.delete(a.id, KEY_A)
    with pytest.raises(NotFound):
        registry.get(a.id, KEY_A)
