"""Hand items from the event loop to a worker thread in batches.

Waking a thread for every finished cell would take the GIL from the event loop on the cell's
hot path; a :class:`Batcher` holds items for at most ``interval`` seconds (a timer, armed
only while something waits) and delivers them together.

With a ``bound`` it also keeps what waits for the thread bounded when the thread stops
taking batches (a write to a disk that hangs never returns): the thread says what it took
(:meth:`Batcher.taken`), and a batch that would leave more than ``bound`` handed over and
not taken (when some are) is dropped and counted (:attr:`Batcher.dropped`), with one log
line when the dropping begins and one when it ends.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def _one(_item: object) -> int:
    return 1


class Batcher(Generic[T]):
    """Collects items and passes each batch to ``deliver`` (called on the event loop).

    Args:
        deliver: takes a non-empty list of items; it should only queue work, not do it.
        interval: the longest an item waits, in seconds.
        bound: the most (by ``weigh``) handed over and not yet :meth:`taken`; None: no bound
            (the consumer need not call :meth:`taken`).
        weigh: an item's weight against ``bound`` (1 each by default).
        what: the items, for the log (``"audit lines"``).
    """

    def __init__(self, deliver: Callable[[list[T]], object], interval: float, *,
                 bound: int | None = None, weigh: Callable[[T], int] = _one,
                 what: str = "items") -> None:
        self._deliver = deliver
        self._interval = interval
        self._pending: list[T] = []
        self._timer: asyncio.TimerHandle | None = None
        self._bound = bound
        self._weigh = weigh
        self._what = what
        self.dropped = 0
        """Items dropped because the consumer was ``bound`` behind."""
        self._dropping = 0  # items dropped since the last batch handed over
        self._handed = 0  # weight handed over (the event loop's)
        self._taken = 0  # weight taken (written by the consumer's thread only)
        self._handed_at: collections.deque[tuple[int, float]] = collections.deque()

    def add(self, item: T) -> None:
        """Queue one item; it is delivered within ``interval`` seconds."""
        self._pending.append(item)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Deliver every pending item now (or drop them, ``bound`` behind)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._bound is None:
            self._deliver(batch)
            return
        weight = sum(map(self._weigh, batch))
        if self.behind and self.behind + weight > self._bound:  # one batch always goes
            if not self._dropping:
                log.error("%s dropped: %d (by weight) wait for the thread that writes them,"
                          " which has taken none for %.0f s", self._what, self.behind,
                          self.stalled_for())
            self._dropping += len(batch)
            self.dropped += len(batch)
            return
        if self._dropping:
            log.warning("%d %s were dropped while their writer was behind; it takes them"
                        " again", self._dropping, self._what)
            self._dropping = 0
        self._handed += weight
        self._forget_taken()
        self._handed_at.append((self._handed, time.monotonic()))
        self._deliver(batch)

    def taken(self, batch: Sequence[T]) -> None:
        """The consumer took ``batch`` (called on its thread, for each batch delivered)."""
        self._taken += sum(map(self._weigh, batch))

    @property
    def behind(self) -> int:
        """Weight handed over and not yet taken."""
        return self._handed - self._taken

    def stalled_for(self) -> float:
        """Seconds the oldest batch not yet taken has waited (0.0: every batch was taken)."""
        self._forget_taken()
        return time.monotonic() - self._handed_at[0][1] if self._handed_at else 0.0

    def _forget_taken(self) -> None:
        taken = self._taken
        while self._handed_at and self._handed_at[0][0] <= taken:
            self._handed_at.popleft()
