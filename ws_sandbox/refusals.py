"""Calls the service turned away, for operators: who, why, and how often.

Refusals at a limit are counted where they happen (the rate limiter, the session manager);
refusals for a missing or wrong key, a foreign host or origin, are counted here
(:attr:`Refusals.auth`, in ``/api/v1/stats`` and ``/metrics``). Every refusal also goes into
a summary that names the callers refused most: one WARNING line at most every
:data:`SUMMARY_INTERVAL` seconds, while there are any. Never one line per refusal, which
anyone could use to flood the log, and never an audit line, which would let a caller without
a key push real records out of the audit log through its rotation.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter

log = logging.getLogger(__name__)

SUMMARY_INTERVAL = 60.0
"""Seconds a summary covers: the first refusal after a quiet spell starts one."""
MAX_CALLERS = 1000
"""Distinct (reason, caller) pairs a summary tracks; refusals of any more count as others."""
TOP = 5
"""Callers a summary names per reason."""
OTHERS = "others"
#: Why a call was refused before it reached a route, as counted in :attr:`Refusals.auth`.
AUTH_REASONS = ("unauthorized", "forbidden")


class Refusals:
    """Counts refusals for credentials and sums up every refusal in the log.

    Call :meth:`refused` from the event loop; :meth:`close` writes what the last summary
    has gathered.
    """

    def __init__(self, interval: float = SUMMARY_INTERVAL) -> None:
        self.interval = interval
        #: Calls refused for their credentials, host or origin, by reason, since start.
        self.auth: Counter[str] = Counter()
        self._window: Counter[tuple[str, str]] = Counter()
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0  # loop time of the window's first refusal

    def refused(self, reason: str, caller: str) -> None:
        """Note one refusal of ``caller`` (a key's identity or an address) for ``reason``
        (an error code)."""
        if reason in AUTH_REASONS:
            self.auth[reason] += 1
        if (reason, caller) not in self._window and len(self._window) >= MAX_CALLERS:
            caller = OTHERS
        self._window[reason, caller] += 1
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._started = loop.time()
            self._timer = loop.call_later(self.interval, self.summarize)

    def summarize(self, took: float | None = None) -> None:
        """Log what was refused since the last summary, over ``took`` seconds (the
        :attr:`interval` by default), and start afresh."""
        self._timer = None
        if not self._window:
            return
        log.warning("refused in the last %g s: %s", self.interval if took is None else took,
                    self.summary())
        self._window.clear()

    def summary(self) -> str:
        """The current window, most refused reason first: ``"12 forbidden (10.0.0.5 9,
        10.0.0.6 3); 4 rate_limited (key:ab12 4)"``."""
        by_reason: dict[str, Counter[str]] = {}
        for (reason, caller), count in self._window.items():
            by_reason.setdefault(reason, Counter())[caller] += count
        parts = []
        for reason, callers in sorted(by_reason.items(), key=lambda r: -r[1].total()):
            top = callers.most_common(TOP)
            named = ", ".join(f"{caller} {count}" for caller, count in top)
            rest = len(callers) - len(top)
            more = f", {rest} more" if rest > 0 else ""
            parts.append(f"{callers.total()} {reason} ({named}{more})")
        return "; ".join(parts)

    def close(self) -> None:
        """Write the summary gathered so far (at shutdown), over the seconds it took."""
        if self._timer is None:
            return
        self._timer.cancel()
        took = asyncio.get_running_loop().time() - self._started
        self.summarize(min(math.ceil(took), self.interval))
