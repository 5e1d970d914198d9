#!/usr/bin/env bash
# Run the security battery (tests/security) with every sandbox under gVisor (runsc).
#
# Needs: the engine with a `runsc` runtime registered (scripts/setup.sh does it: see
# /etc/docker/daemon.json, "runtimes": {"runsc": {"path": "/usr/bin/runsc",
# "runtimeArgs": ["--network=none", "--oci-seccomp"]}}) and the runtime image. Extra arguments go to pytest.
# Expectations that differ under gVisor are marked RUNSC in tests/security/test_abuse.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if ! docker info --format '{{json .Runtimes}}' | grep -q '"runsc"'; then
    echo "security-runsc: the engine has no runsc runtime; run scripts/setup.sh" >&2
    exit 2
fi

export WS_SANDBOX_TEST_RUNTIME=runsc
export WS_SANDBOX_REQUIRE_DOCKER=1
exec "$PY" -m pytest -p no:cacheprovider tests/security -ra "$@"
