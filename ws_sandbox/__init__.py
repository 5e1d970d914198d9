"""ws_sandbox: run untrusted code in short-lived, hardened Docker containers.

Clients open a WebSocket session (``/api/v1/sessions/ws``) that owns one sandbox container,
send code cells and receive stdout and stderr as live frames.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
