"""The one-shot call's body reading, with a scripted ASGI receive (no server)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from ws_sandbox.exceptions import CapacityError, RateLimited
from ws_sandbox.rest import BodyBudget, read_body

BOUND = 10.0


def trickled(*chunks: bytes, then: asyncio.Event | None = None) -> Request:
    """A POST whose body arrives in ``chunks``; the last waits for ``then``."""
    pending = list(chunks)

    async def receive() -> Message:
        if len(pending) == 1 and then is not None:
            await then.wait()
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    scope = {"type": "http", "method": "POST", "path": "/api/v1/execute", "headers": []}
    return Request(scope, receive)


async def test_bodies_received_at_once_are_bounded_service_wide() -> None:
    """A client sending all but the last bytes of many bodies held each whole until
    REQUEST_TIMEOUT: 850 MiB per key (a review). Past the budget, a body is refused
    (503 at_capacity) instead of kept; a body read whole gives its bytes back."""
    budget = BodyBudget(100)
    release = asyncio.Event()
    first = asyncio.create_task(read_body(trickled(b"a" * 80, b"", then=release), 1000,
                                          budget))
    await asyncio.sleep(0.01)
    assert budget.in_flight == 80
    with pytest.raises(CapacityError) as refused:
        await read_body(trickled(b"b" * 30), 1000, budget)
    assert refused.value.http_status == 503 and refused.value.retry_after == 1
    assert budget.in_flight == 80  # the refused one gave back what it had
    release.set()
    async with asyncio.timeout(BOUND):
        assert await first == b"a" * 80
    assert budget.in_flight == 0
    assert await read_body(trickled(b"c" * 100), 1000, budget) == b"c" * 100
    assert budget.in_flight == 0


async def test_one_key_may_hold_its_share_of_the_budget_alone() -> None:
    """One tenant's slow bodies took the whole budget: every other tenant's one-shot calls
    were refused for as long as it kept sending them (a review). Past its share a key's
    body is refused as its own limit (429); callers without a key have no share."""
    budget = BodyBudget(100, share=50)
    release = asyncio.Event()
    slow = [asyncio.create_task(read_body(trickled(b"a" * 25, b"", then=release), 1000,
                                          budget, "key:a")) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert (budget.in_flight, budget.held("key:a")) == (50, 50)
    with pytest.raises(RateLimited, match="one key") as refused:
        await read_body(trickled(b"a" * 10), 1000, budget, "key:a")
    assert refused.value.http_status == 429 and refused.value.retry_after == 1
    assert budget.held("key:a") == 50  # what the refused body had is given back
    # Another caller still has room: the budget is not the first caller's.
    assert await read_body(trickled(b"b" * 50), 1000, budget, "key:b") == b"b" * 50
    assert budget.held("key:b") == 0
    release.set()
    async with asyncio.timeout(BOUND):
        assert await asyncio.gather(*slow) == [b"a" * 25] * 2
    assert budget.in_flight == 0 and budget.held("key:a") == 0
    with pytest.raises(RateLimited, match="one key"):  # a share caps a single body too
        await read_body(trickled(b"c" * 60), 1000, budget, "key:c")
    # Without a key (an address, which a proxy gives every client): the limit alone.
    assert await read_body(trickled(b"d" * 90), 1000, budget, None) == b"d" * 90
    assert budget.in_flight == 0 and budget._held == {}
