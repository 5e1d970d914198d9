"""Browser test fixtures: Debian's chromium driven by Playwright, and real services.

Everything here is module-scoped on purpose. Playwright's sync API keeps an event loop
running in the main thread while it is open, and pytest-asyncio cannot run a test while
another loop runs; so the browser (and the service it talks to) must be gone before the
asyncio tests of other modules start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.conftest import docker_problem, docker_required
from tests.integration.conftest import Service, make_service, running_service

__all__ = ["make_service"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _need(problem: str | None) -> None:
    if problem is None:
        return
    if docker_required():
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless chromium for one test module (Playwright's own download is not used)."""
    _need(None if CHROMIUM.exists() else f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service for one test module: default limits, a pool of one per language."""
    problem = docker_problem()
    _need(None if problem is None else f"needs Docker: {problem}")
    with running_service(tmp_path_factory.mktemp("web"), MAX_CONCURRENT_EXECUTIONS="30",
                         MAX_EXECUTION_TIME="20", RESUME_GRACE="5") as svc:
        svc.wait_pool_full()
        yield svc


@pytest.fixture
def artifacts() -> Path:
    """``artifacts/`` at the repository root (gitignored): screenshots land here."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
