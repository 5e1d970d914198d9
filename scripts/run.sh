#!/usr/bin/env bash
# Set up this machine (scripts/setup.sh), then run the service in the foreground.
#
#   scripts/run.sh [serve options...]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
exec "$ROOT/.venv/bin/ws-sandbox" serve "$@"
