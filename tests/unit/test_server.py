"""Serving: no listening beyond loopback with nobody checking keys; the open files limit."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from ws_sandbox.exceptions import ConfigError
from ws_sandbox.server import serve
from ws_sandbox.settings import Settings


def test_non_loopback_bind_without_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="without API keys"):
        serve(Settings.from_env({"SANDBOX_HOST": "0.0.0.0"}))


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    code = ("import resource\nfrom ws_sandbox.server import raise_open_files_limit\n"
            "print(*raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)))
    assert out.stdout.split() == [str(low), str(hard), str(hard), str(hard)], out.stderr
