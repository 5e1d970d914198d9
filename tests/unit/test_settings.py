"""Settings: parsing, validation and the env.example that documents them."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from ws_sandbox.exceptions import ConfigError
from ws_sandbox.settings import BOUNDS, Settings, env_example

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
    ({"MAX_EXECUTION_TIME": "-1"},
     "MAX_EXECUTION_TIME=-1 is out of range: must be between 0.001 and 2592000 seconds"),
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
    s = Settings.from_env({"SESSION_SECRET": "hunter2-hunter2-hunter2"})
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


# --- ranges: every numeric setting has a minimum and a maximum ----------------------------

@pytest.mark.parametrize(("env", "words"), [
    ({"HISTORY_MAX_ROWS": "99999999999999999999"},
     "HISTORY_MAX_ROWS=99999999999999999999 is out of range: must be between 1 and"),
    ({"MAX_MEMORY_MB": "99999999999999"}, "MAX_MEMORY_MB=99999999999999 is out of range"),
    ({"NOFILE_LIMIT": "100000000000000000000"}, "NOFILE_LIMIT=100000000000000000000"),
    ({"PIDS_LIMIT": "99999999999"}, "PIDS_LIMIT=99999999999 is out of range"),
    ({"FSIZE_LIMIT_MB": "99999999999999"}, "FSIZE_LIMIT_MB=99999999999999 is out of range"),
    ({"WORKSPACE_SIZE_MB": "99999999999999"}, "WORKSPACE_SIZE_MB=99999999999999 is out of"),
    ({"TMP_SIZE_MB": "99999999999999"}, "TMP_SIZE_MB=99999999999999 is out of range"),
    ({"MAX_OUTPUT_BYTES": "99999999999999"}, "MAX_OUTPUT_BYTES=99999999999999 is out of"),
    ({"MAX_CONCURRENT_EXECUTIONS": "99999999999999"}, "MAX_CONCURRENT_EXECUTIONS="),
    ({"MAX_SESSIONS_PER_KEY": "99999999999999"}, "MAX_SESSIONS_PER_KEY=99999999999999"),
    ({"MAX_SESSIONS_PER_KEY": "-1"}, "MAX_SESSIONS_PER_KEY=-1 is out of range: must be"
     " between 0 and 10000"),
    ({"MAX_QUEUED_CELLS": "99999999999999"}, "MAX_QUEUED_CELLS=99999999999999"),
    ({"RATE_LIMIT_PER_MINUTE": "99999999999999"}, "RATE_LIMIT_PER_MINUTE=99999999999999"),
    ({"RATE_LIMIT_BURST": "99999999999999"}, "RATE_LIMIT_BURST=99999999999999"),
    ({"AUDIT_LOG_MAX_BYTES": "99999999999999999"}, "AUDIT_LOG_MAX_BYTES=99999999999999999"),
    ({"HISTORY_OUTPUT_BYTES": "99999999999999"}, "HISTORY_OUTPUT_BYTES=99999999999999"),
    ({"HISTORY_RETENTION_DAYS": "1e12"}, "HISTORY_RETENTION_DAYS=1000000000000 is out of"),
    ({"IDLE_TIMEOUT": "1e12"}, "IDLE_TIMEOUT=1000000000000 is out of range"),
    ({"MAX_EXECUTION_TIME": "1e12"}, "MAX_EXECUTION_TIME=1000000000000 is out of range"),
    ({"STOP_TIMEOUT": "1e12"}, "STOP_TIMEOUT=1000000000000 is out of range"),
])
def test_huge_numbers_are_refused_naming_the_variable_and_range(
        env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert words in info.value.message
    assert "must be between" in info.value.message


def test_every_numeric_setting_has_bounds() -> None:
    from dataclasses import fields

    from ws_sandbox.settings import BOUNDS
    numeric = {f.name for f in fields(Settings)
               if f.type in ("int", "float", "float | None")}
    assert numeric == set(BOUNDS)


def test_the_largest_values_allowed_still_make_a_container_docker_takes() -> None:
    from ws_sandbox.backend import container_config
    from ws_sandbox.settings import BOUNDS
    top = {name: str(hi) for name, (lo, hi, unit) in BOUNDS.items()}
    env = {f.metadata["env"]: top[f.name] for f in fields_of_settings() if f.name in top}
    env["DEFAULT_EXECUTION_TIME"] = env["MAX_EXECUTION_TIME"]
    config = container_config(Settings.from_env(env), "python", "p")
    host = config["HostConfig"]
    for value in (host["Memory"], host["MemorySwap"], host["NanoCpus"], host["PidsLimit"],
                  *(u["Hard"] for u in host["Ulimits"])):
        assert 0 <= value < 2**63


def fields_of_settings() -> tuple[Any, ...]:
    from dataclasses import fields
    return fields(Settings)


@pytest.mark.parametrize("value", ["0.0000001", "0.009", "0", "2000"])
def test_cpu_limit_is_between_docker_minimum_and_1024(value: str) -> None:
    with pytest.raises(ConfigError, match=r"CPU_LIMIT=\S+ is out of range: must be between 0.01 and"
                                          r" 1024 CPUs"):
        Settings.from_env({"CPU_LIMIT": value})
    assert Settings.from_env({"CPU_LIMIT": "0.01"}).cpu_limit == 0.01


@pytest.mark.parametrize("value", ["-1", "0", "1e-300", "0.0009"])
def test_exit_wait_timeout_is_validated_like_the_other_timeouts(value: str) -> None:
    with pytest.raises(ConfigError, match=r"EXIT_WAIT_TIMEOUT=.* must be between 0.001 and"):
        Settings.from_env({"EXIT_WAIT_TIMEOUT": value})


@pytest.mark.parametrize("name", ["SEND_TIMEOUT", "IDLE_TIMEOUT", "RESUME_GRACE",
                                  "MAX_EXECUTION_TIME", "REQUEST_TIMEOUT"])
def test_tiny_timeouts_are_refused_with_the_minimum(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name}=1e-300 is out of range: must be between"
                                          r" 0.001 and 2592000 seconds"):
        Settings.from_env({name: "1e-300"})


def test_stop_timeout_may_be_zero_and_optional_timeouts_none() -> None:
    s = Settings.from_env({"STOP_TIMEOUT": "0", "SEND_TIMEOUT": "none",
                           "EXIT_WAIT_TIMEOUT": "0.001"})
    assert (s.stop_timeout, s.send_timeout, s.exit_wait_timeout) == (0.0, None, 0.001)


# --- strings: keys, secret, origins --------------------------------------------------------

@pytest.mark.parametrize("keys", [" , ", ",", "k1,,k2", "k1, "])
def test_api_keys_with_an_empty_item_are_refused(keys: str) -> None:
    with pytest.raises(ConfigError, match="API_KEYS has an empty key"):
        Settings.from_env({"API_KEYS": keys})


def test_empty_api_keys_still_mean_no_keys() -> None:
    assert Settings.from_env({"API_KEYS": ""}).api_key_list == ()
    assert Settings.from_env({"API_KEYS": " k1-0123456789abcd , k2-0123456789abcd "}
                             ).api_key_list == ("k1-0123456789abcd", "k2-0123456789abcd")


def test_a_short_session_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="SESSION_SECRET must be at least 16 characters") \
            as info:
        Settings.from_env({"SESSION_SECRET": "xyzzy-short"})
    assert "xyzzy-short" not in info.value.message
    assert Settings.from_env({"SESSION_SECRET": "s" * 16}).session_secret == "s" * 16


@pytest.mark.parametrize("origins", ["not an origin", "chat.example", "https://",
                                     "https://chat.example/path", "https://a.example,b",
                                     "https://chat.example:port", "https://u@chat.example",
                                     "https://chat.example?q", "null"])
def test_allowed_origins_must_be_origins(origins: str) -> None:
    with pytest.raises(ConfigError, match=r"ALLOWED_ORIGINS .* is not an origin"):
        Settings.from_env({"ALLOWED_ORIGINS": origins})


@pytest.mark.parametrize("origins", ["*", "https://chat.example", "http://localhost:3000",
                                     "https://chat.example/", " https://a.example , *",
                                     "http://[::1]:8080", "chrome-extension://abcdef", ""])
def test_allowed_origins_keep_the_documented_forms(origins: str) -> None:
    Settings.from_env({"ALLOWED_ORIGINS": origins})


# --- number syntax ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value"), [
    ("SANDBOX_PORT", "8_090"), ("SANDBOX_PORT", "\u0668\u0660\u0669\u0660"),
    ("MAX_MEMORY_MB", "1_000"), ("POOL_SIZE", "\uff12"), ("PIDS_LIMIT", "0x80"),
])
def test_whole_numbers_need_ascii_digits(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}=.*: expected a whole number"):
        Settings.from_env({name: value})


@pytest.mark.parametrize(("name", "value"), [
    ("MAX_EXECUTION_TIME", "1_0"), ("MAX_EXECUTION_TIME", "\u0661\u0660"),
    ("CPU_LIMIT", "\u0661"), ("IDLE_TIMEOUT", "1_0.5"),
])
def test_numbers_need_plain_ascii_decimals(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}=.*: expected a number"):
        Settings.from_env({name: value})


@pytest.mark.parametrize(("env", "expected"), [
    ({"MAX_EXECUTION_TIME": "12.5"}, 12.5), ({"MAX_EXECUTION_TIME": ".5e2"}, 50.0),
    ({"MAX_EXECUTION_TIME": "15."}, 15.0), ({"MAX_EXECUTION_TIME": "1e2"}, 100.0),
    ({"MAX_EXECUTION_TIME": "+20"}, 20.0), ({"MAX_EXECUTION_TIME": " 17 "}, 17.0),
])
def test_plain_decimals_still_parse(env: dict[str, str], expected: float) -> None:
    assert Settings.from_env(env).max_execution_time == expected


@pytest.mark.parametrize(("name", "words"), [
    ("CPU_LIMIT", "expected a number of CPUs"),
    ("HISTORY_RETENTION_DAYS", "expected a number of days"),
    ("SEND_TIMEOUT", "expected a number of seconds"),
])
def test_a_bad_number_message_fits_the_setting(name: str, words: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}='lots': {words}"):
        Settings.from_env({name: "lots"})


@pytest.mark.parametrize(("env", "key"), [
    ("API_KEYS", 'ok-key,s3cr3t"q'), ("API_KEYS", "s3cr3té"), ("API_KEYS", "s3cr3t z"),
    ("API_KEYS", "s3cr3t&z"), ("ADMIN_API_KEY", "s3cr3t;z"), ("ADMIN_API_KEY", "adm1n,s3cr3t"),
    ("JUPYTER_TOKEN", "s3cr3t%41"), ("JUPYTER_TOKEN", "s3cr3t#1"),
])
def test_keys_are_characters_that_travel_in_headers_and_urls(env: str, key: str) -> None:
    """A key with a quote was redacted from the logs only up to the quote; a non-ASCII key
    never matched (headers arrive as latin-1); '&', ';', '#', '%' and '+' change a query
    value (found by a security review). Refused at start, naming the key's place, not
    the key."""
    with pytest.raises(ConfigError, match=f"{env} \\(key \\d\\) has a character") as info:
        Settings.from_env({env: key})
    assert "s3cr3t" not in str(info.value)


def test_ordinary_keys_are_accepted() -> None:
    s = Settings.from_env({"API_KEYS": "k-1_A.b~c-0123456, sk-live/XyZ=01234",
                           "ADMIN_API_KEY": "Adm!n:@*-0123456",
                           "JUPYTER_TOKEN": "0123abcdef012345"})
    assert s.api_key_list == ("k-1_A.b~c-0123456", "sk-live/XyZ=01234")


@pytest.mark.parametrize(("env", "value", "place"), [
    ("API_KEYS", "long-enough-key-1,abc", "API_KEYS (key 2) has 3 characters"),
    ("ADMIN_API_KEY", "adm1n", "ADMIN_API_KEY (key 1) has 5 characters"),
    ("JUPYTER_TOKEN", "s3cr3t-015", "JUPYTER_TOKEN (key 1) has 10 characters"),
])
def test_a_short_key_is_refused_without_echoing_it(env: str, value: str, place: str) -> None:
    """A one-character API key was accepted (a review): anyone could guess it, within the
    guess limit per address. Keys, the admin key and the Jupyter token need 16 characters,
    as SESSION_SECRET does; the message names the key's place, never the key."""
    with pytest.raises(ConfigError, match=re.escape(place)) as info:
        Settings.from_env({env: value})
    assert "needs at least 16" in info.value.message
    assert value.split(",")[-1] not in info.value.message
    Settings.from_env({env: "x" * 16})  # 16 will do


def test_the_admin_key_cannot_be_an_api_key() -> None:
    """A tenant whose key was also ADMIN_API_KEY was silently an administrator: it read
    every caller's history and could change limits (a review)."""
    shared = "shared-key-0123456789"
    with pytest.raises(ConfigError, match="ADMIN_API_KEY is also one of API_KEYS") as info:
        Settings.from_env({"API_KEYS": f"tenant-key-0123456789,{shared}",
                           "ADMIN_API_KEY": shared})
    assert shared not in info.value.message
    with pytest.raises(ConfigError, match="ADMIN_API_KEY is also JUPYTER_TOKEN"):
        Settings.from_env({"JUPYTER_TOKEN": shared, "ADMIN_API_KEY": shared})


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_a_value_out_of_range_is_refused_once(name: str) -> None:
    """One problem per bad value: AUDIT_LOG_BACKUPS=0 and HISTORY_RETENTION_DAYS=0 were each
    refused twice in one message, by the range and by a check that repeated it (a review)."""
    variable = next(f.metadata["env"] for f in fields(Settings) if f.name == name)
    lo, hi, _ = BOUNDS[name]
    for value in (lo - 1 if isinstance(lo, int) else (lo / 2 if lo > 0 else -1.0),
                  hi + 1 if isinstance(hi, int) else hi * 2):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({variable: str(value)})
        problems = str(info.value).removeprefix("invalid settings: ").split("; ")
        assert len([p for p in problems if p.startswith(variable)]) == 1, problems
        assert "is out of range" in str(info.value)


@pytest.mark.parametrize("audit", ["h.db", "./h.db", "h.db-wal", "h.db-shm"])
def test_the_audit_log_cannot_be_the_history_s_file(audit: str) -> None:
    """SQLite's page writes left none of 160 audit lines in a shared file (a review)."""
    with pytest.raises(ConfigError, match="is the history's own file"):
        Settings.from_env({"AUDIT_LOG_PATH": audit, "HISTORY_DB_PATH": "h.db"})
    Settings.from_env({"AUDIT_LOG_PATH": audit, "HISTORY_DB_PATH": "h.db",
                       "ENABLE_HISTORY": "false"})


def test_the_history_cannot_be_one_of_the_audit_log_s_backups() -> None:
    """The rotation renames audit.log to audit.log.N: over the database (a review)."""
    with pytest.raises(ConfigError, match="is one of the audit log's backups"):
        Settings.from_env({"AUDIT_LOG_PATH": "a.log", "HISTORY_DB_PATH": "a.log.3",
                           "AUDIT_LOG_BACKUPS": "5"})
    Settings.from_env({"AUDIT_LOG_PATH": "a.log", "HISTORY_DB_PATH": "a.log.6",
                       "AUDIT_LOG_BACKUPS": "5"})


def test_several_keys_without_a_cap_per_key_are_advised_against() -> None:
    """Out of the box, one of several keys could take every session slot and lock the other
    tenants out, with no word at start (a review). Documented in SECURITY.md; now said."""
    keys = "tenant-a-0123456789,tenant-b-0123456789"
    (advice,) = Settings.from_env({"API_KEYS": keys}).advice()
    assert advice.startswith("API_KEYS has 2 keys and MAX_SESSIONS_PER_KEY (0) caps no key")
    assert "set MAX_SESSIONS_PER_KEY (for example 5)" in advice
    assert Settings.from_env({"API_KEYS": keys, "MAX_SESSIONS_PER_KEY": "10"}).advice()
    assert not Settings.from_env({"API_KEYS": keys, "MAX_SESSIONS_PER_KEY": "4"}).advice()
    assert not Settings.from_env({"API_KEYS": "tenant-a-0123456789"}).advice()
    assert not Settings.from_env({}).advice()
