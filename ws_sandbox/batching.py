"""Hand items from the event loop to a worker thread in batches.

Waking a thread for every finished cell would take the GIL from the event loop on the cell's
hot path; a :class:`Batcher` holds items for at most ``interval`` seconds (a timer, armed
only while something waits) and delivers them together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items and passes each batch to ``deliver`` (called on the event loop).

    Args:
        deliver: takes a non-empty list of items; it should only queue work, not do it.
        interval: the longest an item waits, in seconds.
    """

    def __init__(self, deliver: Callable[[list[T]], object], interval: float) -> None:
        self._deliver = deliver
        self._interval = interval
        self._pending: list[T] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, item: T) -> None:
        """Queue one item; it is delivered within ``interval`` seconds."""
        self._pending.append(item)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Deliver every pending item now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            batch, self._pending = self._pending, []
            self._deliver(batch)
