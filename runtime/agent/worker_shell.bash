# Shell worker for the ws_sandbox agent: one persistent bash, cells run in the main shell.
#
# Started by the agent as `bash --norc --noprofile worker_shell.bash CTL_IN CTL_OUT` with stdin
# from /dev/null. Records arrive on CTL_IN as raw bytes: "c" and the code's length in bytes, a
# NUL, and the code (no NUL in it), read in one `read -N` (read up to a delimiter, a pipe gives
# bash one byte per system call); or "i" and a NUL, the mark of an interrupt, which the agent
# writes just before its SIGINT; the worker
# answers on CTL_OUT with JSON lines `ready` and `done`. The cell is run by sourcing cell.bash
# (which evals it) so that `cd`, variables and functions persist, and so that the SIGINT trap
# can `return` out of the cell while the shell itself lives on.
#
# A SIGINT outside a running cell only sets __ws_sig: it may be late (its cell has ended) or
# early (its cell is still being read). cell.bash tells the two apart before the code runs: an
# early one's mark is already behind the code (nothing else can come before the cell's done).
# A mark read between cells is a late one's, and is dropped.
__ws_in=$1
__ws_out=$2
# Aliases a cell defines work in the cells after it, as in a terminal's bash (a
# non-interactive one ignores them).
shopt -s expand_aliases
__ws_cell=${BASH_SOURCE[0]%/*}/cell.bash
__ws_intr=0
__ws_sig=0
__ws_running=0
set --
# Armed again before every cell: once the trap has returned from a cell waiting for a program
# (an interrupted `sleep`), bash 5.2 runs it no more for a cell of builtins only (a `while`
# loop), which then ran on until the agent restarted the shell.
__ws_trap='if (( __ws_running )); then __ws_intr=1; return 130 2>/dev/null; else __ws_sig=1; fi'
trap "$__ws_trap" INT
# bash says nothing when `set -e` ends it in the middle of a cell: say why its state is lost
# (a failed command noted by the ERR trap, not an `exit`).
__ws_failed=0
__ws_exiting() {
    if (( __ws_running && __ws_failed )) && [[ $- == *e* ]]; then
        printf 'bash exits: set -e is on and a command failed\n' >&2
    fi
}
trap __ws_exiting EXIT
trap __ws_failed=1 ERR
__ws_last=0  # the last cell's status: the next one's `$?` (cell.bash)
__ws_status() { return "$1"; }
printf '{"t":"ready"}\n' >&"$__ws_out" || exit 70
while :; do
    IFS= read -r -d '' -u "$__ws_in" __ws_code
    __ws_rc=$?
    if (( __ws_rc > 128 )); then continue; fi   # a read cut short by a signal
    (( __ws_rc == 0 )) || exit 0                # the agent closed the control pipe
    [[ $__ws_code == c* ]] || continue          # the mark of an interrupt whose cell has ended
    # The code, in bytes whatever locale a cell chose (-N counts the locale's characters). A
    # SIGINT does not cut it short: bash 5.2 runs the trap (which only notes it) and reads on.
    # Short all the same, the worker ends rather than read a cell's rest as records.
    LC_ALL=C IFS= read -r -N "${__ws_code:1}" -u "$__ws_in" __ws_code || exit 0
    __ws_intr=0
    __ws_failed=0
    trap "$__ws_trap" INT
    __ws_running=1
    . "$__ws_cell"
    __ws_rc=$?
    __ws_running=0
    __ws_last=$__ws_rc
    if (( __ws_intr )); then __ws_st=interrupted; elif (( __ws_rc == 0 )); then __ws_st=success; else __ws_st=error; fi
    printf '{"t":"done","status":"%s","exit_code":%d,"error":null}\n' "$__ws_st" "$__ws_rc" >&"$__ws_out" || exit 70
done
