"""The backend's pieces that need no engine: the attach request a sandbox is read through.

Everything else in ``ws_sandbox/backend.py`` talks to the engine and is tested against it
(tests/integration, tests/security).
"""

from __future__ import annotations

import aiodocker

from ws_sandbox.backend import attach, container_config
from ws_sandbox.settings import Settings


async def test_attach_asks_for_all_three_streams_without_inspecting() -> None:
    """aiodocker's own attach inspects the container first (for its TTY flag): one engine
    request more per sandbox. Ours knows a sandbox has no TTY."""
    docker = aiodocker.Docker(url="unix:///nonexistent/docker.sock")
    try:
        stream = attach(docker, "abc123")
        url, body, tty = await stream._setup()  # what the stream sends when it connects
    finally:
        await docker.close()
    assert url.path == "containers/abc123/attach"
    assert dict(url.query) == {"detachKeys": "", "logs": "0", "stdin": "1", "stdout": "1",
                               "stderr": "1", "stream": "1"}
    assert body is None
    assert tty is False
    config = container_config(Settings(), "python", "test")
    assert config["Tty"] is False and config["OpenStdin"] is True
