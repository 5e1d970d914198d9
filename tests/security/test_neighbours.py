"""Neighbours unharmed: a hostile session never slows another session's cells past 1 s."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.conftest import Service
from tests.security.conftest import RUNSC
from ws_sandbox.client import connect

pytestmark = pytest.mark.docker

HOSTILE = {
    "cpu_spin": ("python", "while True:\n    pass"),
    "fork_bomb": ("shell", ":(){ :|:& };:\nwhile :; do :; done"),
    "python_fork_bomb": ("python", "import os\nwhile True:\n    try:\n        os.fork()\n"
                                   "    except OSError:\n        pass"),
    # One OOM kill after another for the whole cell.
    "memory_bomb": ("shell", "while :; do python3 -c 'b = []\nwhile True:"
                             " b.append(bytearray(b\"x\" * 10**7))'; done"),
}

# How each attack's own cell may end. None of them ends by itself within its timeout; a bomb
# can end `killed` when it takes its whole sandbox down (gVisor, at the memory limit), and the
# Python bomb `error` when a forked child fails in the cell's process.
ENDINGS = {
    "cpu_spin": {"timeout"},
    "fork_bomb": {"timeout", "killed"},
    "python_fork_bomb": {"timeout", "killed", "error"},
    "memory_bomb": {"timeout", "killed"},
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
async def test_neighbour_cells_stay_correct_and_fast(battery: Service, attack: str) -> None:
    language, code = HOSTILE[attack]
    async with await connect(battery.url) as neighbour, \
            await connect(battery.url, language=language) as hostile:
        warm = await neighbour.execute("total = 0")
        assert warm.status == "success"
        bad = asyncio.create_task(hostile.execute(code, timeout=8))
        await asyncio.sleep(1.5)  # let the attack take hold
        if not RUNSC:
            # RUNSC: a bomb may bring down its whole gVisor sandbox at the memory limit
            # sooner; the neighbour's cells below must be unaffected either way.
            assert not bad.done(), bad
        trips = []
        for i in range(1, 8):
            start = time.monotonic()
            r = await neighbour.execute(f"total += {i}\nprint(total, sum(range({i} * 1000)))")
            trips.append(time.monotonic() - start)
            expected = f"{i * (i + 1) // 2} {sum(range(i * 1000))}\n"
            assert (r.status, r.stdout) == ("success", expected), r
            await asyncio.sleep(0.3)
        assert max(trips) < 1.0, trips
        result = await bad
        assert result.status in ENDINGS[attack], result
