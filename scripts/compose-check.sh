#!/usr/bin/env bash
# Release check of docker-compose.yml: build the runtime and service images on the offline
# base, bring the stack up, wait for health, run one execute through it, and take it down.
# Run before each release (CI does not, for its time budget):
#
#   scripts/compose-check.sh
#
# Needs a running Docker engine and `docker compose` or `docker-compose`.
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    echo "compose-check: neither 'docker compose' nor docker-compose is installed" >&2
    exit 2
fi
PY=${PYTHON:-.venv/bin/python}
export SANDBOX_PORT=${SANDBOX_PORT:-18090}
export INSTANCE_NAME=ws-sandbox-compose-check
PROJECT=wsb-compose-check
BASE=${BASE_IMAGE:-ws-sandbox-base:bookworm}
export BASE_IMAGE=$BASE

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    echo "compose-check: making the offline base image $BASE"
    "$PY" -m ws_sandbox build-image
fi
echo "compose-check: building wheels"
rm -rf build/wheels
"$PY" -m pip wheel --quiet . -w build/wheels

down() { "${COMPOSE[@]}" -p "$PROJECT" down -v --remove-orphans >/dev/null 2>&1 || true; }
trap down EXIT
"${COMPOSE[@]}" -p "$PROJECT" up -d --build

url="http://127.0.0.1:${SANDBOX_PORT}"
for _ in $(seq 1 180); do
    if curl -fsS "$url/api/v1/health" >/dev/null 2>&1; then break; fi
    sleep 1
done
curl -fsS "$url/api/v1/health" >/dev/null || {
    "${COMPOSE[@]}" -p "$PROJECT" logs --tail 50 sandbox; echo "compose-check: not healthy" >&2
    exit 1; }
out=$(curl -fsS -X POST "$url/api/v1/execute" -H 'Content-Type: application/json' \
      -d @examples/python_example.json)
echo "$out"
echo "$out" | "$PY" -c 'import json,sys; r=json.load(sys.stdin); assert r["status"]=="success", r'
echo "compose-check: OK"
