"""The service refuses to listen beyond loopback with nobody checking keys."""

from __future__ import annotations

import pytest

from ws_sandbox.exceptions import ConfigError
from ws_sandbox.server import serve
from ws_sandbox.settings import Settings


def test_non_loopback_bind_without_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="without API keys"):
        serve(Settings.from_env({"SANDBOX_HOST": "0.0.0.0"}))
