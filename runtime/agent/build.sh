#!/bin/sh
# Compile the agent (agent.c) into OUTPUT (default: `agent` next to this script, where it
# finds the workers). The image build and the host tests both use this one command line.
#
#   sh runtime/agent/build.sh [OUTPUT] [extra gcc options...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/agent"}
[ $# -gt 0 ] && shift
exec gcc -std=gnu11 -O2 -Wall -Wextra -Werror \
    -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE -pie -Wl,-z,relro,-z,now \
    -o "$out" "$here/agent.c" "$@"
