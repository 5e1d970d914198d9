#!/usr/bin/env bash
# Runs Open WebUI's own Jupyter client code (open_webui/utils/code_interpreter.py, unmodified,
# from the pinned open-webui wheel on PyPI) against real `ws-sandbox serve` processes, in token
# and in password mode, the way Open WebUI's Run button and its code interpreter call it.
# Checks stdout, stderr, a matplotlib image, an error, the time limit and kernel cleanup.
#
#   scripts/openwebui-check.sh
#
# Needs Docker, the runtime image (`ws-sandbox build-image`) and PyPI (first run only: the
# wheel, about 100 MB, and the client's venv are cached in .cache/openwebui/, gitignored).
# Open WebUI's code is never committed here (it is under the Open WebUI License); see
# tests/openwebui/check.py. Exit status: 0 all checks passed, 1 a check failed, 2 no Docker
# or the download/setup failed. CI runs the same through tests/integration/test_openwebui_client.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m tests.openwebui.check "$@"
