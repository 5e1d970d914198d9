"""Open WebUI's own client code, unmodified, against the service: every path, every auth mode.

``tests/openwebui/check.py`` fetches the pinned open-webui wheel from PyPI (cached in
``.cache/openwebui/``), extracts ``open_webui/utils/code_interpreter.py`` and runs its
``execute_code_jupyter`` as the Run button and the code interpreter call it. Locally an
unreachable PyPI skips this test; in CI (``CI`` or ``WS_SANDBOX_REQUIRE_DOCKER``) it fails.
Same checks by hand: ``scripts/openwebui-check.sh``.
"""

from __future__ import annotations

import pytest

from tests.conftest import docker_required
from tests.integration.conftest import ServiceFactory
from tests.openwebui.check import VERSION, PrepareError, prepare, run_checks

pytestmark = pytest.mark.docker


@pytest.mark.timeout(900)
def test_open_webui_client_runs_code_on_both_paths(make_service: ServiceFactory) -> None:
    try:
        env = prepare()
    except PrepareError as e:
        if docker_required():
            pytest.fail(f"could not set up open-webui {VERSION}'s client: {e}", pytrace=False)
        pytest.skip(f"open-webui {VERSION} could not be fetched: {e}")
    report = run_checks(env, make_service)
    print("\n".join(report.lines))
    assert not report.failures, "\n".join(report.lines)
