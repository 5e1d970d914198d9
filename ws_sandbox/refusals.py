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

    def refused(self, reason: str, caller: str) -> None:
        """Note one refusal of ``caller`` (a key's identity or an address) for ``reason``
        (an error code)."""
        if reason in AUTH_REASONS:
            self.auth[reason] += 1
        if (reason, caller) not in self._window and len(self._window) >= MAX_CALLERS:
            caller = OTHERS
        self._window[reason, caller] += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.summarize)

    def summarize(self) -> None:
        """Log what was refused since the last summary, and start afresh."""
        self._timer = None
        if not self._window:
            return
        log.warning("refused in the last %g s: %s", self.interval, self.summary())
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
        """Write the summary gathered so far (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
        self.summarize()
