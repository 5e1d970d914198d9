"""The agent binary for tests that run it on the host (no Docker).

The agent is C (``runtime/agent/agent.c``); it finds its workers next to its own binary, so
the host build goes to ``runtime/agent/agent`` (ignored by git and by the image's build
context), through the same ``build.sh`` the image uses. It is rebuilt when the source or the
build script is newer than the binary.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parents[1] / "runtime" / "agent"
SOURCES = (AGENT_DIR / "agent.c", AGENT_DIR / "build.sh")


@functools.cache
def agent_binary() -> Path:
    """The path of an up-to-date host build of the agent (built at the first call).

    ``WS_SANDBOX_TEST_AGENT`` names another executable to test instead.
    """
    chosen = os.environ.get("WS_SANDBOX_TEST_AGENT")
    if chosen:
        return Path(chosen).resolve()
    binary = AGENT_DIR / "agent"
    newest = max(source.stat().st_mtime for source in SOURCES)
    if not binary.exists() or binary.stat().st_mtime < newest:
        partial = AGENT_DIR / f".agent.{os.getpid()}"
        result = subprocess.run(["sh", str(AGENT_DIR / "build.sh"), str(partial)],
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"the agent does not build:\n{result.stderr}")
        partial.replace(binary)  # atomic: a concurrent run never sees half a binary
    return binary
