"""Settings: parsing, validation and the env.example that documents them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ws_sandbox.exceptions import ConfigError
from ws_sandbox.settings import Settings, env_example

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_lists_every_setting_with_its_default() -> None:
    assert (ROOT / "env.example").read_text() == env_example(), (
        "env.example is stale: run `ws-sandbox env-example > env.example`")


def test_defaults_are_safe() -> None:
    s = Settings.from_env({})
    assert s.port == 8090
    assert s.is_loopback
    assert s.network_mode == "none"
    assert s.read_only_root
    assert s.drop_all_capabilities
    assert s.enabled_languages == ("python", "javascript", "shell", "rust")
    assert s.session_secret  # generated when not given


def test_parses_the_original_variable_names() -> None:
    s = Settings.from_env({"SANDBOX_PORT": "9000", "MAX_EXECUTION_TIME": "12.5",
                           "MAX_MEMORY_MB": "256", "ENABLE_RUST": "false",
                           "IDLE_TIMEOUT": "none"})
    assert (s.port, s.max_execution_time, s.max_memory_mb) == (9000, 12.5, 256)
    assert "rust" not in s.enabled_languages
    assert s.idle_timeout is None


@pytest.mark.parametrize(("env", "words"), [
    ({"SANDBOX_PORT": "http"}, "SANDBOX_PORT='http': expected a whole number"),
    ({"ENABLE_PYTHON": "maybe"}, "expected true or false"),
    ({"MAX_EXECUTION_TIME": "nan"}, "finite"),
    ({"MAX_EXECUTION_TIME": "-1"}, "MAX_EXECUTION_TIME must be positive"),
    ({"NETWORK_MODE": "host"}, "refused unless ALLOW_UNSAFE_NETWORK=true"),
    ({"NETWORK_MODE": "bridge"}, "refused unless ALLOW_UNSAFE_NETWORK=true"),
    ({"ENABLE_PYTHON": "0", "ENABLE_JAVASCRIPT": "0", "ENABLE_SHELL": "0",
      "ENABLE_RUST": "0"}, "at least one language"),
    ({"CONTAINER_RUNTIME": "kata"}, "CONTAINER_RUNTIME must be"),
    ({"DEFAULT_EXECUTION_TIME": "60"}, "at most MAX_EXECUTION_TIME"),
])
def test_bad_settings_are_refused_with_clear_messages(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert words in info.value.message


def test_unsafe_network_needs_explicit_opt_in() -> None:
    s = Settings.from_env({"NETWORK_MODE": "bridge", "ALLOW_UNSAFE_NETWORK": "true"})
    assert s.network_mode == "bridge"


def test_public_view_hides_secrets() -> None:
    s = Settings.from_env({"SESSION_SECRET": "hunter2"})
    assert "hunter2" not in repr(s.public())
    assert "session_secret" not in s.public()


def test_runsc_gets_a_pids_floor_for_its_own_threads() -> None:
    from ws_sandbox.backend import RUNSC_MIN_PIDS, container_config

    runc = container_config(Settings.from_env({"PIDS_LIMIT": "128"}), "rust", "p")
    runsc = container_config(Settings.from_env({"PIDS_LIMIT": "128",
                                                "CONTAINER_RUNTIME": "runsc"}), "rust", "p")
    assert runc["HostConfig"]["PidsLimit"] == 128
    assert runsc["HostConfig"]["PidsLimit"] == RUNSC_MIN_PIDS
    assert runsc["HostConfig"]["Runtime"] == "runsc"


def test_runsc_bounds_the_users_tasks_with_nproc_and_runc_does_not() -> None:
    from ws_sandbox.backend import container_config

    def nproc(env: dict[str, str]) -> list[dict[str, object]]:
        config = container_config(Settings.from_env(env), "python", "p")
        return [u for u in config["HostConfig"]["Ulimits"] if u["Name"] == "nproc"]

    assert nproc({"PIDS_LIMIT": "96", "CONTAINER_RUNTIME": "runsc"}) == [
        {"Name": "nproc", "Soft": 96, "Hard": 96}]
    # RLIMIT_NPROC is per host uid under runc, shared by every sandbox: never set there.
    assert nproc({"PIDS_LIMIT": "96"}) == []
    assert nproc({"PIDS_LIMIT": "96", "CONTAINER_RUNTIME": "runc"}) == []
