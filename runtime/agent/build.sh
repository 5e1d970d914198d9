#!/bin/sh
# Compile the agent (agent.c) into OUTPUT (default: `agent` next to this script, where it
# finds the workers). The image build and the host tests both use this one command line.
#
#   sh runtime/agent/build.sh [OUTPUT] [extra gcc options...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/agent"}
[ $# -gt 0 ] && shift
#
# Linked statically (as a position-independent executable, so its addresses are still
# randomized): the dynamic loader's ~20 system calls (open and map libc, relocate) cost every
# sandbox's start about 1.5 ms under gVisor. The agent uses nothing of glibc that loads code
# at run time (no NSS lookups, no iconv, no dlopen).
exec gcc -std=gnu11 -O2 -Wall -Wextra -Werror \
    -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE -static-pie -Wl,-z,relro,-z,now \
    -o "$out" "$here/agent.c" "$@"
