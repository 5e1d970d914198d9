"""Names of the ASGI extensions shared by the server protocol and the application.

Kept apart from :mod:`ws_sandbox.ws_protocol` (which builds on uvicorn's internals) so that
the application imports nothing of a particular server.
"""

from __future__ import annotations

ABORT = "ws_sandbox.websocket.abort"
"""Scope extension ``{"abort": <callable>}``: calling it cuts the connection at once, without
a close frame, and drops what was not sent. For a peer that takes nothing: uvicorn writes a
close frame only once the peer has taken what came before, and closes a transport only once
its buffer is written, so for such a peer neither ever happens."""

SEND_MANY = "ws_sandbox.websocket.send_many"
"""Scope extension, and ASGI message type, of a batch of text messages sent in one write:
``{"type": SEND_MANY, "texts": [b"...", ...]}`` (each item UTF-8 bytes)."""
