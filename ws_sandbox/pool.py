"""The warm pool: started, greeted, never-used sandboxes, ready per language.

A session takes one with :meth:`WarmPool.acquire` in microseconds instead of waiting for
``docker create``; a background task per language refills the pool. A pooled sandbox that
speaks or dies before it is taken is discarded: it may never serve a session. One that does
so young counts as a failed start, so the pool backs off before replacing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

from ws_sandbox.backend import DockerBackend, Sandbox
from ws_sandbox.exceptions import BackendError, SandboxError
from ws_sandbox.settings import Language

log = logging.getLogger(__name__)

_RETRY_MIN = 0.5
FILL_PARALLEL = 3
"""Sandboxes one language's pool starts at once: the engine's churn peaks at a few in flight."""
_RETRY_MAX = 15.0
_DIED_YOUNG = 30.0
"""A pooled sandbox discarded within this many seconds of being pooled counts as a failed
start: the pool waits (0.5 s, doubling to 15 s) before replacing it, so an image or a setting
that lets sandboxes greet and then die cannot make the pool churn containers as fast as the
engine starts them. A pooled sandbox taken by a session, or one that lived longer, resets it."""


@dataclass(slots=True)
class _Warm:
    sandbox: Sandbox
    watcher: asyncio.Task[None]
    pooled_at: float


class _LanguagePool:
    def __init__(self) -> None:
        self.ready: deque[_Warm] = deque()
        self.starting = 0
        self.wanted = asyncio.Event()
        self.last_error: str | None = None
        self.died_young_delay = 0.0  # the wait after the last sandbox that died young
        self.hold_until = 0.0  # no start before this loop time


class WarmPool:
    """Keeps ``size`` sandboxes per language started and greeted.

    Use as ``async with WarmPool(backend, languages, size) as pool:``; leaving the block
    removes every sandbox still in the pool.
    """

    def __init__(self, backend: DockerBackend, languages: tuple[Language, ...],
                 size: int) -> None:
        self._backend = backend
        self._size = size
        self._pools = {lang: _LanguagePool() for lang in languages}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._discarding: set[asyncio.Task[None]] = set()  # sandboxes being removed

    async def __aenter__(self) -> WarmPool:
        for language in self._pools:
            self._tasks.append(asyncio.create_task(self._fill(language),
                                                   name=f"pool-fill-{language}"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop refilling and remove every pooled sandbox."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        doomed: list[Sandbox] = []
        for pool in self._pools.values():
            while pool.ready:
                warm = pool.ready.popleft()
                warm.watcher.cancel()
                doomed.append(warm.sandbox)
        await asyncio.gather(*(sb.destroy() for sb in doomed), *self._discarding)

    async def acquire(self, language: Language) -> Sandbox:
        """Take a warm sandbox, or start one now when the pool is empty.

        Raises:
            BackendError: no sandbox could be started.
        """
        pool = self._pools[language]
        pool.wanted.set()
        while pool.ready:
            warm = pool.ready.popleft()
            warm.watcher.cancel()
            try:
                await warm.watcher
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # The caller was cancelled (not only the watcher): it gets no sandbox,
                    # and this one must not be left behind.
                    self._discard(warm.sandbox)
                    raise
            if not warm.watcher.cancelled():
                continue  # it spoke or died while waiting: discarded by its watcher
            pool.died_young_delay = 0.0
            return warm.sandbox
        return await self._backend.start_sandbox(language)

    def _discard(self, sandbox: Sandbox) -> None:
        """Remove ``sandbox`` in the background; :meth:`close` waits for it."""
        task = asyncio.create_task(sandbox.destroy())
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    def state(self) -> dict[str, dict[str, int | str | None]]:
        """Per language: ready and starting counts, the target, the last start error."""
        return {lang: {"ready": len(p.ready), "starting": p.starting, "target": self._size,
                       "last_error": p.last_error}
                for lang, p in self._pools.items()}

    async def _fill(self, language: Language) -> None:
        """Keep ``size`` sandboxes ready, starting up to :data:`FILL_PARALLEL` at once."""
        pool = self._pools[language]
        delay = _RETRY_MIN
        starts: set[asyncio.Task[bool]] = set()
        loop = asyncio.get_running_loop()
        try:
            while not self._closed:
                if (hold := pool.hold_until - loop.time()) > 0:
                    await asyncio.sleep(hold)  # a pooled sandbox died young: see _DIED_YOUNG
                    continue
                while (len(pool.ready) + pool.starting < self._size
                       and pool.starting < FILL_PARALLEL):
                    pool.starting += 1
                    starts.add(asyncio.create_task(self._start_one(language)))
                if not starts:
                    pool.wanted.clear()
                    await pool.wanted.wait()
                    continue
                finished, starts = await asyncio.wait(starts,
                                                      return_when=asyncio.FIRST_COMPLETED)
                if all(task.result() for task in finished):
                    delay = _RETRY_MIN
                    continue
                # Back off on failure, but wake at once if someone asks for a sandbox.
                pool.wanted.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await pool.wanted.wait()
                delay = min(delay * 2, _RETRY_MAX)
        finally:
            for task in starts:
                task.cancel()
            await asyncio.gather(*starts, return_exceptions=True)

    async def _start_one(self, language: Language) -> bool:
        """Start one sandbox into the pool; returns whether it worked."""
        pool = self._pools[language]
        try:
            sandbox = await self._backend.start_sandbox(language)
        except SandboxError as exc:
            # Said once per cause: the retries of an engine that stays down (every 15 s at
            # most, per language) said it again each time.
            if exc.message != pool.last_error:
                log.warning("pool: cannot start a %s sandbox: %s; trying again", language,
                            exc.message)
            pool.last_error = exc.message
            return False
        finally:
            pool.starting -= 1
        if pool.last_error is not None:
            log.info("pool: %s sandboxes start again", language)
        pool.last_error = None
        if self._closed:
            await sandbox.destroy()
            return True
        pooled_at = asyncio.get_running_loop().time()
        watcher = asyncio.create_task(self._watch(language, sandbox, pooled_at))
        pool.ready.append(_Warm(sandbox, watcher, pooled_at))
        return True

    async def _watch(self, language: Language, sandbox: Sandbox, pooled_at: float) -> None:
        """Discard a pooled sandbox that sends anything or dies before it is taken."""
        pool = self._pools[language]
        try:
            try:
                async with asyncio.timeout(_DIED_YOUNG):
                    frame = await sandbox.receive()
            except TimeoutError:
                pool.died_young_delay = 0.0  # it lived: sandboxes no longer die young
                frame = await sandbox.receive()
            reason = f"unexpected frame {type(frame).__name__}"
        except BackendError as exc:
            reason = exc.message
        now = asyncio.get_running_loop().time()
        if (lived := now - pooled_at) < _DIED_YOUNG:
            pool.died_young_delay = min(max(2 * pool.died_young_delay, _RETRY_MIN), _RETRY_MAX)
            pool.hold_until = now + pool.died_young_delay
            pool.last_error = f"a pooled sandbox ended {lived:.1f} s after it started: {reason}"
            log.warning("pool: discarding %s sandbox %s, %.1f s after it started: %s; its"
                        " replacement starts in %.1f s", language, sandbox.short_id, lived,
                        reason, pool.died_young_delay)
        else:
            log.warning("pool: discarding %s sandbox %s: %s", language, sandbox.short_id,
                        reason)
        for warm in list(pool.ready):
            if warm.sandbox is sandbox:
                pool.ready.remove(warm)
        pool.wanted.set()
        await sandbox.destroy()
