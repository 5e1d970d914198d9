# Shell worker for the ws_sandbox agent: one persistent bash, cells run in the main shell.
#
# Started by the agent as `bash --norc --noprofile worker_shell.bash CTL_IN CTL_OUT` with stdin
# from /dev/null. Each cell arrives on CTL_IN as raw bytes terminated by NUL; the worker answers
# on CTL_OUT with JSON lines `ready` and `done`. The cell is run by sourcing cell.bash (which
# evals it) so that `cd`, variables and functions persist, and so that the SIGINT trap can
# `return` out of the cell while the shell itself lives on.
__ws_in=$1
__ws_out=$2
__ws_cell=${BASH_SOURCE[0]%/*}/cell.bash
__ws_intr=0
set --
trap '__ws_intr=1; return 130 2>/dev/null' INT
printf '{"t":"ready"}\n' >&"$__ws_out" || exit 70
while :; do
    IFS= read -r -d '' -u "$__ws_in" __ws_code
    __ws_rc=$?
    if (( __ws_rc > 128 )); then continue; fi   # a late SIGINT while idle
    (( __ws_rc == 0 )) || exit 0                # the agent closed the control pipe
    __ws_intr=0
    . "$__ws_cell"
    __ws_rc=$?
    if (( __ws_intr )); then __ws_st=interrupted; elif (( __ws_rc == 0 )); then __ws_st=success; else __ws_st=error; fi
    printf '{"t":"done","status":"%s","exit_code":%d,"error":null}\n' "$__ws_st" "$__ws_rc" >&"$__ws_out" || exit 70
done
