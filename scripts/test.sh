#!/usr/bin/env bash
# Set up this machine (scripts/setup.sh), then run every gate: ruff, mypy, pytest, and the
# security battery again with every sandbox under gVisor (scripts/security-runsc.sh).
#
#   scripts/test.sh [pytest options...]
#
# With pytest options (a -k, a file) only the pytest gate takes them, and the gVisor gate is
# left out: it runs with the whole suite. All gates run even when one fails; the exit status
# is non-zero if any failed.
# With CI set (or WS_SANDBOX_REQUIRE_DOCKER=1), tests marked `docker` fail instead of
# skipping when the engine or the runtime image is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/setup.sh

if [[ -n ${CI:-} && ${CI:-} != false && ${CI:-} != 0 ]]; then
    export WS_SANDBOX_REQUIRE_DOCKER=1
fi

failed=()
summary=()
gate() {
    local name=$1 start=$SECONDS status=0
    shift
    echo "==> $name: $*"
    "$@" || status=$?
    summary+=("$(printf '%-7s %-6s %4ss' "$name" "$([[ $status -eq 0 ]] && echo ok || echo "FAIL($status)")" $((SECONDS - start)))")
    if ((status)); then failed+=("$name"); fi
}

gate ruff .venv/bin/ruff check .
gate mypy .venv/bin/mypy
gate pytest .venv/bin/pytest "$@"
if (($# == 0)); then
    gate gvisor bash scripts/security-runsc.sh -q
else
    echo "==> gvisor: left out (pytest options given; it runs with the whole suite)"
fi

echo "==> summary"
printf '    %s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all gates passed"
