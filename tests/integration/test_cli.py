"""``ws-sandbox exec`` against the real service: streamed output and the cell's exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Service

pytestmark = pytest.mark.docker


def run_cli(service: Service, *args: str,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ws_sandbox", "exec", "--url", service.url,
                           *args], input=stdin, capture_output=True, text=True, timeout=60,
                          check=False)


def test_exec_streams_output_and_returns_exit_code(service: Service) -> None:
    done = run_cli(service, "-l", "shell", "echo out; echo err >&2; exit 4")
    assert done.stdout == "out\n"
    assert done.stderr.startswith("err\n")
    assert done.returncode == 4


def test_exec_reads_code_from_stdin_and_prints_the_value(service: Service) -> None:
    done = run_cli(service, "-", stdin="x = 6\nx * 7\n")
    assert done.stdout == "42\n"
    assert done.returncode == 0


LATE_THREAD = ("import threading, time\n"
               "def late():\n"
               "    time.sleep(0.5)\n"
               "    print('late', flush=True)\n"
               "threading.Thread(target=late).start()\n"
               "print('main')\n")


def test_exec_runs_the_code_as_a_program(service: Service) -> None:
    """Its end waits for a thread the program left, as ``python3 prog.py`` and a one-shot
    call do (a notebook cell's end does not: ``late`` was lost with the session)."""
    done = run_cli(service, "-", stdin=LATE_THREAD)
    assert done.stdout == "main\nlate\n", done
    assert done.returncode == 0, done


def test_exec_reports_a_refusal(service: Service) -> None:
    done = run_cli(service, "-l", "cobol", "whatever")
    assert done.returncode == 2
    assert "language_unavailable" in done.stderr


def test_the_service_runs_on_uvloop(service: Service) -> None:
    """``serve`` names uvloop (a cell's round trip is about 50 us shorter on it)."""
    maps = Path(f"/proc/{service.process.pid}/maps").read_text()
    assert "/uvloop/loop." in maps, "uvloop's extension is not loaded in the service"


def test_exec_exits_non_zero_for_a_failed_cell(service: Service) -> None:
    done = run_cli(service, "raise ValueError('no')")
    assert done.returncode not in (0, 2), done
    assert "ValueError" in done.stderr


def test_exec_refuses_a_timeout_that_is_not_a_positive_number(service: Service) -> None:
    done = run_cli(service, "--timeout", "nan", "1")
    assert done.returncode == 2
    assert "must be a positive number of seconds" in done.stderr
