#!/usr/bin/env bash
# Prepare this machine to run and test ws_sandbox. Idempotent: a second run only checks.
#
#   scripts/setup.sh [--no-image] [build-image options...]
#
# 1. apt packages: docker.io, runsc (gVisor), mmdebstrap, chromium, gcc, python3-venv,
#    node-acorn (beside a host Node.js), when missing.
# 2. gVisor: registers runsc in /etc/docker/daemon.json (merged, never clobbered).
# 3. Docker engine: reuses one that answers; otherwise starts dockerd in the background
#    (log: $WS_SANDBOX_DOCKERD_LOG, default /var/log/ws-sandbox-dockerd.log).
# 4. .venv with `pip install -c constraints.txt -e '.[dev]'`, skipped while pyproject.toml and
#    constraints.txt are unchanged.
# 5. The runtime image: `ws-sandbox build-image` (fast when nothing changed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DOCKERD_LOG=${WS_SANDBOX_DOCKERD_LOG:-/var/log/ws-sandbox-dockerd.log}
DOCKERD_TIMEOUT=${WS_SANDBOX_DOCKERD_TIMEOUT:-60}
DAEMON_JSON=/etc/docker/daemon.json
VENV=$ROOT/.venv
START_NS=$(date +%s%N)

build_image=1
build_args=()
for arg in "$@"; do
    case $arg in
        --no-image) build_image=0 ;;
        -h | --help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) build_args+=("$arg") ;;
    esac
done

log() { LC_ALL=C printf '[setup %6.1fs] %s\n' "$(( ($(date +%s%N) - START_NS) / 1000000 ))e-3" "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "must be root (or have sudo) to run: $*"; fi
}

# --------------------------------------------------------------------------- 1. packages
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v runsc >/dev/null || missing+=(runsc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v chromium >/dev/null || missing+=(chromium)  # browser tests (tests/browser)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)  # the unit tests build the C agent
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# The unit tests run the agent's workers on the host: Node.js for JavaScript cells, rustc for
# Rust ones (the image's are Debian's too); the REST tests call curl.
command -v node >/dev/null || missing+=(nodejs)
command -v rustc >/dev/null || missing+=(rustc)
command -v curl >/dev/null || missing+=(curl)
# The JavaScript worker parses cells with Debian's acorn, which Debian's Node.js (the image's)
# depends on; the unit tests run the worker on the host's Node.js, which may come without it.
if command -v node >/dev/null && [[ ! -e /usr/share/nodejs/acorn ]]; then
    missing+=(node-acorn)
fi
if ((${#missing[@]})); then
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    as_root apt-get install -y -q "${missing[@]}"
else
    log "apt packages present (dockerd, runsc, mmdebstrap, chromium, gcc, python3-venv, node, rustc, curl)"
fi

# --------------------------------------------------------------------------- 2. runsc
# Prints "added" when daemon.json gained a runsc entry, "present" when it had one.
register_runsc() {
    as_root python3 - "$DAEMON_JSON" "$(command -v runsc)" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        config = json.load(f)
except FileNotFoundError:
    config = {}
except ValueError as exc:
    sys.exit(f"{path} is not valid JSON ({exc}); fix it by hand")
runtimes = config.setdefault("runtimes", {})
# --network=none: no network stack inside gVisor at all. --oci-seccomp: the sandbox's seccomp
# profile is applied inside gVisor too, so calls it denies never reach gVisor's kernel (the
# service lets clone3 through under runsc: settings.RUNSC_PASS_THROUGH says why).
wanted = ["--network=none", "--oci-seccomp"]
entry = runtimes.get("runsc")
if entry is not None:
    args = entry.setdefault("runtimeArgs", [])
    missing = [a for a in wanted if a not in args]
    if not missing:
        print("present")
        sys.exit()
    args.extend(missing)
    state = "updated"
else:
    runtimes["runsc"] = {"path": runsc, "runtimeArgs": wanted}
    state = "added"
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
print(state)
PY
}
runsc_state=$(register_runsc)
if [[ $runsc_state == added || $runsc_state == updated ]]; then
    log "registered runsc (gVisor) in $DAEMON_JSON ($runsc_state)"
else
    log "runsc already registered in $DAEMON_JSON"
fi

# --------------------------------------------------------------------------- 3. engine
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }
# runsc is listed with its arguments: after a reload, wait until the engine has the new ones.
has_runsc() {
    local runtimes
    runtimes=$(timeout 10 docker info --format '{{json .Runtimes}}' 2>/dev/null)
    [[ $runtimes == *'"runsc"'* && $runtimes == *'--oci-seccomp'* ]]
}
dockerd_pid() {
    local pid
    pid=$(cat /var/run/docker.pid 2>/dev/null || pidof -s dockerd || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}
show_log_tail() {
    if [[ -r $DOCKERD_LOG ]]; then
        echo "---- last lines of $DOCKERD_LOG ----" >&2
        tail -n 30 "$DOCKERD_LOG" >&2
    fi
}
# Waits until `docker info` answers and, with $1 = runsc, lists runsc; dies at the deadline.
wait_for_engine() {
    local deadline=$((SECONDS + DOCKERD_TIMEOUT)) pid=${2:-}
    until engine_answers && { [[ ${1:-} != runsc ]] || has_runsc; }; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail
            die "dockerd (pid $pid) exited during start-up"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail
            die "the Docker engine did not become ready within ${DOCKERD_TIMEOUT}s"
        fi
        sleep 0.5
    done
}

# A freshly started engine is waited for after step 4, so pip runs while it starts.
starting_pid=
if engine_answers; then
    log "Docker engine answers; reusing it"
    if ! has_runsc || [[ $runsc_state == updated ]]; then
        pid=$(dockerd_pid)
        [[ -n $pid ]] || die "the engine does not list runsc and no dockerd pid was found to reload"
        log "reloading dockerd (pid $pid, SIGHUP) so it picks up the runsc settings"
        as_root kill -HUP "$pid"
        wait_for_engine runsc
    fi
else
    [[ $(id -u) -eq 0 ]] || die "no Docker engine answers; start one (as root: dockerd &)"
    pid=$(dockerd_pid)
    if [[ -n $pid ]]; then
        log "dockerd (pid $pid) is running but not answering yet; waiting"
    else
        log "no Docker engine answers; starting dockerd in the background (log: $DOCKERD_LOG)"
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        # setsid: the engine outlives this script and is not hit by its Ctrl-C.
        setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
    fi
    starting_pid=$pid
fi

# --------------------------------------------------------------------------- 4. venv
stamp=$VENV/.ws-sandbox-setup
want="$(python3 --version) $(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [[ ! -x $VENV/bin/pip ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
if [[ -f $stamp && $(cat "$stamp") == "$want" && -x $VENV/bin/ws-sandbox ]]; then
    log ".venv is up to date"
else
    log "pip install -c constraints.txt -e '.[dev]' into .venv (log: .venv/pip-install.log)"
    # Quiet on success; pip's and setuptools' chatter is only worth reading on failure. The
    # versions are the ones the suite last passed with (constraints.txt).
    if ! "$VENV/bin/pip" install --disable-pip-version-check -c constraints.txt -e '.[dev]' \
        >"$VENV/pip-install.log" 2>&1; then
        tail -n 40 "$VENV/pip-install.log" >&2
        die "pip install failed (full log: $VENV/pip-install.log)"
    fi
    echo "$want" >"$stamp"
fi

if [[ -n $starting_pid ]]; then
    wait_for_engine runsc "$starting_pid"
    log "Docker engine ready ($(docker version --format '{{.Server.Version}}'))"
fi

# --------------------------------------------------------------------------- 5. image
if ((build_image)); then
    log "building the runtime image"
    "$VENV/bin/ws-sandbox" build-image "${build_args[@]}"
fi
log "setup done"
