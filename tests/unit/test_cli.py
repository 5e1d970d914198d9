"""``ws-sandbox exec`` against a scripted server (``tests/unit/test_client.py``'s): its exit
status, and one clear line (no traceback, status 2) for whatever keeps it from a result."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.unit.test_client import Server, deaf_server, result, scripted_server
from ws_sandbox import frames as fr
from ws_sandbox.cli import exit_status


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> Done:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ws_sandbox", "exec", *args,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "WS_SANDBOX_API_KEY"} | (env or {}))
    async with asyncio.timeout(60):
        out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with scripted_server() as running:
        yield running


def assert_one_clear_line(done: Done, expected: str) -> None:
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert expected in done.stderr, done.stderr


@pytest.mark.parametrize(("status", "code", "expected"), [
    ("success", 0, 0), ("success", None, 0), ("success", 3, 0),
    ("error", 0, 1), ("error", None, 1), ("error", 256, 255), ("killed", -9, 1),
    ("killed", 137, 137), ("killed", None, 1), ("error", 1000, 255),
    # A timed-out cell exited 130 (its interrupt's code), like a Ctrl-C of ws-sandbox.
    ("timeout", 130, 124), ("timeout", None, 124), ("timeout", 4, 124),
    ("interrupted", 137, 130), ("interrupted", None, 130), ("paused", 5, 5)])
def test_exit_status_is_non_zero_for_every_failed_cell(status: str, code: int | None,
                                                       expected: int) -> None:
    assert exit_status(status, code) == expected


async def test_a_failed_cell_with_exit_code_0_exits_1(server: Server) -> None:
    def failed(request: fr.Execute) -> list[fr.ServerFrame | str]:
        return [fr.Result(id=request.id, status="error", exit_code=0, execution_time_ms=1.0,
                          memory_used_mb=None, error="boom")]

    server.script = failed  # type: ignore[assignment]
    done = await run_cli("--url", server.url, "x")
    assert done.returncode == 1, done
    assert "[error] boom" in done.stderr


async def test_a_successful_cell_exits_0(server: Server) -> None:
    server.script = lambda request: [result(request.id)]
    done = await run_cli("--url", server.url, "x")
    assert done.returncode == 0, done


async def test_a_refused_upgrade_is_one_line(server: Server) -> None:
    server.reject = (401, b'{"error": {"code": "unauthorized", "message": "no key"}}')
    assert_one_clear_line(await run_cli("--url", server.url, "x"), "refused: unauthorized:"
                          " no key (give the key with --api-key or $WS_SANDBOX_API_KEY)")
    server.reject = (503, b'{"error": {"code": "at_capacity", "message": "full"}}')
    done = await run_cli("--url", server.url, "x")
    assert_one_clear_line(done, "refused: at_capacity: full")
    assert "--api-key" not in done.stderr


async def test_a_close_before_ready_is_one_line(server: Server) -> None:
    server.opening = ["refuse"]
    assert_one_clear_line(await run_cli("--url", server.url, "x"), "connection_lost")


async def test_a_malformed_first_frame_is_one_line(server: Server) -> None:
    server.opening = ["{not json"]
    assert_one_clear_line(await run_cli("--url", server.url, "x"), "protocol_error")


async def test_a_bad_url_is_one_line() -> None:
    assert_one_clear_line(await run_cli("--url", "http://nowhere", "x"), "invalid URL")


async def test_a_url_with_a_port_out_of_range_is_one_line() -> None:
    assert_one_clear_line(await run_cli("--url", "ws://127.0.0.1:99999", "x"), "invalid URL")


async def test_a_service_that_cannot_be_reached_is_one_line() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert_one_clear_line(await run_cli("--url", f"ws://127.0.0.1:{port}", "x"),
                          f"cannot reach ws://127.0.0.1:{port}")


@pytest.mark.parametrize("option", ["--timeout", "--result-grace", "--open-timeout"])
@pytest.mark.parametrize("bad", ["nan", "inf", "0", "-1", "soon"])
async def test_a_timeout_that_is_not_a_positive_number_is_refused(server: Server, option: str,
                                                                  bad: str) -> None:
    done = await run_cli("--url", server.url, option, bad, "x")
    assert done.returncode == 2, done
    assert "must be a positive number of seconds" in done.stderr
    assert server.received == []




async def test_a_result_that_never_comes_is_one_line_after_the_grace(server: Server) -> None:
    server.script = lambda request: []  # never answers the cell
    start = asyncio.get_running_loop().time()
    done = await run_cli("--url", server.url, "--timeout", "0.2", "--result-grace", "0.3",
                         "x")
    assert_one_clear_line(done, "result_timeout")
    assert asyncio.get_running_loop().time() - start < 30  # the default grace alone is 60 s


async def test_code_that_is_not_utf8_is_one_line(server: Server) -> None:
    """Bytes that are not UTF-8, in an argument (a lone surrogate to Python) or on standard
    input: a traceback (UnicodeEncodeError, UnicodeDecodeError) and exit status 1."""
    assert_one_clear_line(await run_cli("--url", server.url, "print(1)#\udcff"),
                          "refused: bad_request: invalid frame: the code cannot be encoded")
    assert_one_clear_line(await run_cli("--url", server.url, "-", stdin=b"print(1)#\xff"),
                          "the code on standard input is not UTF-8")
    assert server.received == []


def test_exec_help_lists_the_exit_statuses() -> None:
    done = subprocess.run([sys.executable, "-m", "ws_sandbox", "exec", "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "124      the cell timed out" in done.stdout
    assert "130      the cell was interrupted" in done.stdout


async def test_open_timeout_bounds_the_wait_for_a_session() -> None:
    """A service that never opens the session held exec for the library's 60 s."""
    loop = asyncio.get_running_loop()
    async with deaf_server() as url:
        start = loop.time()
        done = await run_cli("--url", url, "--open-timeout", "0.5", "x")
        assert loop.time() - start < 30
    assert_one_clear_line(done, "no ready frame from")


async def test_displays_print_in_order_with_the_output(server: Server) -> None:
    """exec printed a cell's displays after all its streamed output."""
    done = await run_cli("--url", server.url, "x")  # out, err, display "d", more, result
    assert done.returncode == 0, done
    assert done.stdout == "out x\nd\nmore\n"
    assert done.stderr == "err\n"


async def test_the_api_key_can_come_from_the_environment(server: Server) -> None:
    """--api-key puts the key in the process list and the shell's history (an operator
    review): $WS_SANDBOX_API_KEY gives it too; the option wins."""
    server.script = lambda request: [result(request.id)]
    assert (await run_cli("--url", server.url, "x",
                          env={"WS_SANDBOX_API_KEY": "from-env"})).returncode == 0
    assert (await run_cli("--url", server.url, "--api-key", "given", "x",
                          env={"WS_SANDBOX_API_KEY": "from-env"})).returncode == 0
    assert (await run_cli("--url", server.url, "x")).returncode == 0
    assert server.authorizations == ["Bearer from-env", "Bearer given", None]
