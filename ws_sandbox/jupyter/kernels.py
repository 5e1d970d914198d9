"""The kernel registry: kernel id to :class:`~ws_sandbox.jupyter.kernel.Kernel`.

Every kernel is a session opened through the :class:`~ws_sandbox.manager.SessionManager`,
so it counts against ``MAX_CONCURRENT_EXECUTIONS`` and keeps every limit of a session. A
kernel nobody deletes is closed by the session's idle timeout or maximum lifetime; a watcher
then drops it from the registry.

A kernel started with an API key is that key's alone, as a WebSocket session is
(``SessionManager.resume``): a caller with another identity does not see it in the list, and
any call naming it answers 404, as for a kernel that does not exist. Callers without a key
(the shared token, a password login, an open loopback service) are one tenant, which no key
holder belongs to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ws_sandbox.auth import is_key_identity
from ws_sandbox.exceptions import NotFound, quoted
from ws_sandbox.jupyter.kernel import Kernel
from ws_sandbox.jupyter.specs import find_spec
from ws_sandbox.manager import SessionManager

log = logging.getLogger(__name__)


class KernelRegistry:
    """Live kernels of one service.

    Args:
        manager: the session manager kernels' sessions come from.
    """

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self._kernels: dict[str, Kernel] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    async def start(self, name: str | None, *, client_id: str = "",
                    admit_cell: Callable[[], None] | None = None,
                    address: str = "") -> Kernel:
        """Start a kernel of kernelspec ``name`` (the default when empty), for the caller
        ``client_id`` at ``address``.

        ``admit_cell`` is asked before each cell is queued, and before each restart that
        starts one, as for a WebSocket session (a rate limit: a refused cell gets an error
        reply, a refused restart a 429 or an error reply).

        Raises:
            NotFound: no such kernelspec.
            CapacityError: the service runs as many sessions as it may.
            BackendError: no sandbox could be had.
        """
        settings = self.manager.settings
        spec = find_spec(name, settings.enabled_languages)
        kernel = Kernel(spec, owner=client_id or "jupyter", send_timeout=settings.send_timeout,
                        execution_timeout=settings.max_execution_time,
                        restart_timeout=settings.restart_timeout
                        + settings.sandbox_start_timeout + settings.acquire_timeout,
                        max_queued=settings.max_queued_cells,
                        max_code_bytes=settings.max_code_bytes, admit=admit_cell)
        runner = await self.manager.open(spec.language, kernel,
                                         client_id=client_id or "jupyter", origin="jupyter",
                                         send_ready=False,
                                         admit_cell=admit_cell, address=address)
        kernel.bind(runner)
        self._kernels[kernel.id] = kernel
        watcher = asyncio.create_task(self._watch(kernel), name=f"kernel-{kernel.id}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.info("kernel %s (%s) started on session %s", kernel.id, spec.name,
                 runner.session_id)
        return kernel

    def get(self, kernel_id: str, identity: str) -> Kernel:
        """The live kernel with this id, as ``identity`` may see it.

        Raises:
            NotFound: no such kernel, it has ended, or it is another key's.
        """
        kernel = self._kernels.get(kernel_id)
        if kernel is None or kernel.dead or not visible(kernel, identity):
            raise NotFound(f"kernel {quoted(kernel_id)} does not exist")
        return kernel

    def list(self, identity: str) -> list[Kernel]:
        """Every live kernel ``identity`` may see."""
        return [k for k in self._kernels.values() if not k.dead and visible(k, identity)]

    async def delete(self, kernel_id: str, identity: str) -> None:
        """Shut a kernel down: return once its session has closed (the kernel is dead; its
        channels are closed and its container removed right after, as a closed session's).

        Open WebUI awaits this call before it shows a run's result, so waiting for the
        container's removal too (about 70 ms of a 90 ms run under runc) made every run
        five times slower, for nothing a client can see: the slot is free once the session
        has closed, and shutdown still waits for every container.

        Raises:
            NotFound: no such kernel (or another key's).
        """
        kernel = self.get(kernel_id, identity)
        runner = kernel.runner
        await kernel.shutdown("the kernel was deleted")
        if runner is not None:
            await runner.closed.wait()
        self._kernels.pop(kernel_id, None)

    async def _watch(self, kernel: Kernel) -> None:
        runner = kernel.runner
        if runner is not None:
            await runner.closed.wait()
        reason = runner.core.close_reason if runner is not None else None
        log.info("kernel %s ended (%s)", kernel.id, reason)
        self._kernels.pop(kernel.id, None)
        await kernel.close(1000, str(reason or "closed"))


def visible(kernel: Kernel, identity: str) -> bool:
    """Whether ``identity`` may see and use ``kernel``: its own; and one that neither it nor
    the kernel's owner is a key (the shared token, a password login, an open service: one
    tenant)."""
    return kernel.owner == identity or not (is_key_identity(kernel.owner)
                                            or is_key_identity(identity))
