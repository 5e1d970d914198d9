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
#
# The trap's `return` leaves the innermost function alone: a cell interrupted in a function
# (`f() { ...; }; while :; do f; done`, or in the worker's own `__ws_status` just before the
# code ran) went on running until the agent restarted the shell. So the trap also sets a
# DEBUG trap, which runs before the next command at each level (bash keeps a DEBUG trap set
# inside a function when it returns), and returns from each function in turn and then from
# cell.bash; back at the worker's top level (its own file alone in BASH_SOURCE) it puts
# back the cell's own DEBUG action, if the cell set one.
# - Each level returns 0, not 130: neither `set -e` nor an ERR trap takes that for a
#   failure (a 130 ended a `set -e` shell, its state lost, and `local -` in a function gave
#   `-e` back before any trap could take it off), and the DEBUG trap returns before a `then`,
#   an `&&` or a loop's body can run after it. The worker makes the cell's status 130.
# - Once per level, from the deepest the trap left: a function's RETURN action (`trap 'rm
#   -f "$tmp"' RETURN`, a clean-up) runs at the level being left, and returning from it ran
#   it again, for ever.
# Back at the worker's top level it takes itself off: cell.bash sets the cell's DEBUG trap
# again before the next cell's code.
__ws_trap='if (( __ws_running && (__ws_intr = 1) )); then __ws_depth=${#BASH_SOURCE[@]}; builtin trap "$__ws_unwind" DEBUG; return 0 2>/dev/null; else __ws_sig=1; fi'
__ws_unwind='if (( ${#BASH_SOURCE[@]} == 1 )); then builtin trap - DEBUG; elif (( ${#BASH_SOURCE[@]} < __ws_depth )); then __ws_depth=${#BASH_SOURCE[@]}; return 0; fi'
__ws_depth=0
# A cell's DEBUG action (`trap 'echo "+ $BASH_COMMAND"' DEBUG`) runs before the cell's own
# commands, as a script's runs before the script's: not before the worker's (it ran before
# about 22 of them between cells, its output in the cell's, and with `shopt -s extdebug` an
# action that returned non-zero made bash skip them: no `done`, and the service restarted
# the shell), and in every later cell (a sourced file hides the DEBUG trap set outside it:
# it ran for none of a later cell's commands). The worker keeps the action in __ws_debug
# ('-' for none) and gives bash __ws_on_debug, which runs it once __ws_dlive is 1 (cell.bash
# sets it just before the code), for a command that is neither in the worker's file nor
# cell.bash's `eval` of the code (which bash also runs the trap for when the ERR trap runs
# after it), nor the worker's INT trap's (once the interrupt is noted), nor its EXIT trap's
# (`$BASH_COMMAND` is the worker's `. "$__ws_cell"` there). A single command of expansions (quoted, whatever the cell's IFS; with defaults,
# under `set -u`) that comes to nothing otherwise, so that a cell's `set -x` shows none of
# it; `$?` is the one the action should see, and with `extdebug` the action's status is the
# trap's. The worker's RETURN trap holds it off for its own commands. After each cell the
# worker takes the DEBUG trap off (cell.bash sets it again), so that one a cell set with
# `builtin trap` (or in POSIX mode, where `trap` is the builtin) runs before a few of the
# worker's commands after the cell, and no more.
__ws_debug=-
__ws_dlive=0
declare -A __ws_wsrc=(["_${BASH_SOURCE[0]}"]=1 ['_eval "$__ws_code"']=1 ['_. "$__ws_cell"']=1)
__ws_dgo=('' eval)
__ws_on_debug='"${__ws_dgo[@]:1:(__ws_dtop |= ${#BASH_SOURCE[@]} == 1, __ws_dg = __ws_dlive && !__ws_intr && !0${__ws_wsrc[_${BASH_SOURCE-}]-}${__ws_wsrc[_$BASH_COMMAND]-})}" ${__ws_dgo[__ws_dg]:+"$__ws_debug"}'
__ws_dtop=0
# A cell that took the trap off with `builtin trap - DEBUG` (or set another with the
# builtin) took the action off: it came back at the next cell (a review). The trap runs
# before the worker's first command after the cell only if it is still the worker's.
__ws_debug_kept() {
    (( __ws_dtop || __ws_intr )) || [[ -z $__ws_debug ]] || __ws_debug=-
}
builtin trap "$__ws_trap" INT
# bash says nothing when `set -e` ends it in the middle of a cell: say why its state is lost
# (a failed command noted by the ERR trap, not an `exit`).
__ws_failed=0
__ws_exiting() {
    __ws_rc=$?
    __ws_at_exit
    if (( __ws_running && __ws_failed )) && [[ $- == *e* ]]; then
        printf 'bash exits: set -e is on and a command failed\n' >&2
    fi
}
builtin trap __ws_exiting EXIT
# A cell's ERR trap runs from the worker's (below), which notes the failure first: in an
# arithmetic expansion inside one that comes to nothing, so that no command is run and a
# cell's `set -x` shows none each time a command fails (a braced `2>/dev/null` would cost
# each failing command six system calls), nor `__ws_run_err` when there is no ERR action.
# (`0` less the arithmetic's `0`: bash expands no pattern for an empty value.)
__ws_zero=0
__ws_on_err='${__ws_zero%$(( __ws_e = $?, __ws_failed = 1, 0 ))}${__ws_err:+__ws_run_err}'
builtin trap "$__ws_on_err" ERR
__ws_err=''
# The cell's ERR action, with the failed command's status as `$?`; not for the worker's own
# commands that run the cell (they fail when its last command did: with `set -E`, a trap ran
# three times for one failure where a script's runs once).
__ws_run_err() {
    (( ! __ws_intr )) || return 0  # an interrupted command is not the cell's failure
    [[ $BASH_COMMAND != 'eval "$__ws_code"' && $BASH_COMMAND != '. "$__ws_cell"' ]] || return 0
    __ws_status "$__ws_e" || eval "$__ws_err"
}
# A cell's EXIT trap (`trap 'rm -rf "$tmp"' EXIT`, a script's clean-up) runs when the cell
# ends, as a script's runs when the script ends: the shell lives on between cells, and the
# worker's own EXIT trap must stay. So `trap` is a function here (in this shell alone: a
# subshell's, and a program's, `trap` is the builtin) that keeps the cell's EXIT and ERR
# actions in __ws_exit and __ws_err and hands the rest to the builtin; `trap -p` shows the
# cell's actions, not the worker's.
__ws_exit=''
__ws_pid=$BASHPID
__ws_at_exit() {
    [[ -n $__ws_exit ]] || return 0
    local __ws_action=$__ws_exit
    __ws_exit=''
    __ws_status "$__ws_rc" && :  # `$?` is the cell's status, as a script's trap sees its own
    eval "$__ws_action"
}
# `trap -p`: the builtin's list without the worker's traps, and the cell's EXIT action first
# where the list has no EXIT of its own (a subshell's is its own).
__ws_traps() {
    local __ws_list __ws_line __ws_s __ws_lines=()
    local __ws_exit_wanted=$(( $# == 0 )) __ws_err_wanted=$(( $# == 0 ))
    local __ws_ret_wanted=$(( $# == 0 )) __ws_dbg_wanted=$(( $# == 0 )) __ws_has_exit=0
    local __ws_has_err=0
    __ws_list=$(builtin trap -p "$@") || return
    for __ws_s; do
        if __ws_is_exit "$__ws_s"; then __ws_exit_wanted=1
        elif __ws_is_err "$__ws_s"; then __ws_err_wanted=1
        elif __ws_is_ret "$__ws_s"; then __ws_ret_wanted=1
        elif [[ ${__ws_s^^} == ?(SIG)DEBUG ]]; then __ws_dbg_wanted=1; fi
    done
    while IFS= read -r __ws_line; do
        [[ -n $__ws_line && $__ws_line != *__ws_* ]] || continue
        [[ $__ws_line != "trap -- '' DEBUG" ]] || continue  # the worker's, or as below
        [[ $__ws_line != *' EXIT' ]] || __ws_has_exit=1
        [[ $__ws_line != *' ERR' ]] || __ws_has_err=1
        __ws_lines+=("$__ws_line")
    done <<< "$__ws_list"
    if (( __ws_exit_wanted && ! __ws_has_exit )) && [[ -n $__ws_exit ]]; then
        printf 'trap -- %s EXIT\n' "${__ws_exit@Q}"
    fi
    (( ${#__ws_lines[@]} == 0 )) || printf '%s\n' "${__ws_lines[@]}"
    # The cell's DEBUG action, which the builtin in this function does not see without `set
    # -T` (shown in a function too, where a script's `trap -p` would not show it).
    if (( __ws_dbg_wanted )) && [[ $__ws_debug != - ]]; then
        printf 'trap -- %s DEBUG\n' "${__ws_debug@Q}"
    fi
    if (( __ws_err_wanted && ! __ws_has_err )) && [[ -n $__ws_err ]]; then
        printf 'trap -- %s ERR\n' "${__ws_err@Q}"
    fi
    if (( __ws_ret_wanted )) && [[ -n $__ws_ret ]]; then
        printf 'trap -- %s RETURN\n' "${__ws_ret@Q}"
    fi
}
__ws_is_exit() { local __ws_s=${1^^}; [[ ${__ws_s#SIG} == EXIT || $1 == 0 ]]; }
__ws_is_err() { local __ws_s=${1^^}; [[ ${__ws_s#SIG} == ERR ]]; }
__ws_is_ret() { local __ws_s=${1^^}; [[ ${__ws_s#SIG} == RETURN ]]; }
# A cell's RETURN action (`f() { tmp=$(mktemp); trap 'rm -f "$tmp"' RETURN; ...; }`, a
# function's clean-up) runs from this one, as in a script: not as `trap` itself returns (set
# by the builtin in this function, it ran there, at once: the file was gone before its
# use), nor as cell.bash returns to the worker (at the end of every later cell) or as one of
# the worker's functions does. `$?` is the status being returned. In a subshell too (`x=$(f)`,
# `f | cat`), where EXIT and ERR are the builtin's. An interrupt that lands in the action
# returns from it, and bash runs it again: it is then skipped, once, at that level (it ran
# for ever, a review).
__ws_ret=''
__ws_rlvl=0
__ws_on_return='__ws_rs=$? __ws_rdl=$__ws_dlive __ws_dlive=0; if (( __ws_intr && __ws_rlvl == ${#BASH_SOURCE[@]} )); then __ws_rlvl=0; elif [[ -n $__ws_ret && ${#BASH_SOURCE[@]} -gt 1 && ${FUNCNAME[0]-} != @(trap|__ws_*) ]]; then __ws_rlvl=${#BASH_SOURCE[@]}; __ws_status "$__ws_rs" && :; eval "$__ws_ret"; __ws_rlvl=0; fi; __ws_dlive=$__ws_rdl'
trap() {
    local -  # a cell's `set -x` shows one line of this function, not all of them
    set +xv
    local __ws_print=0 __ws_s __ws_other=()
    while [[ ${1-} == -?* ]]; do
        case $1 in
            --) shift; break ;;
            -p) __ws_print=1; shift ;;
            *) builtin trap "$@"; return ;;  # -l, or what the builtin refuses
        esac
    done
    if (( $# == 0 || __ws_print )); then __ws_traps "$@"; return; fi
    local __ws_action=$1 __ws_sub=0
    [[ $BASHPID == "$__ws_pid" ]] || __ws_sub=1  # a subshell's EXIT and ERR are its own
    if (( $# == 1 )); then __ws_action=-; else shift; fi  # `trap EXIT` resets EXIT
    for __ws_s; do
        if (( __ws_sub )) && { __ws_is_exit "$__ws_s" || __ws_is_err "$__ws_s"; }; then
            __ws_other+=("$__ws_s")
        elif __ws_is_exit "$__ws_s"; then
            if [[ $__ws_action == - ]]; then __ws_exit=''; else __ws_exit=$__ws_action; fi
        elif __ws_is_err "$__ws_s"; then
            if [[ $__ws_action == - ]]; then __ws_err=''; else __ws_err=$__ws_action; fi
            # In a function (without `set -E`) bash took the worker's ERR trap off on the
            # way in: set there, the action ran only once the function had returned (a review).
            builtin trap -- "$__ws_on_err" ERR
        elif __ws_is_ret "$__ws_s"; then
            if [[ $__ws_action == - ]]; then __ws_ret=''; else __ws_ret=$__ws_action; fi
            builtin trap -- "$__ws_on_return" RETURN
        elif [[ ${__ws_s^^} == ?(SIG)DEBUG ]]; then
            # Taken off in a function of the cell's without `set -T`, the caller's trap is
            # back as it returns (bash kept none for the function), as in a script.
            if [[ $__ws_action == - && ${FUNCNAME[1]-source} != source && $- != *T* ]]; then
                continue
            fi
            __ws_debug=$__ws_action
            # Taken off in a function (this one), bash puts a DEBUG trap back as it returns:
            # an ignored one stays, and runs nothing.
            if [[ $__ws_action == - ]]; then builtin trap -- '' DEBUG
            else builtin trap -- "${__ws_action:+$__ws_on_debug}" DEBUG; fi
        else
            __ws_other+=("$__ws_s")
        fi
    done
    (( ${#__ws_other[@]} == 0 )) || builtin trap -- "$__ws_action" "${__ws_other[@]}"
}
# A command that is not here: bash's own message (as bash words it, the cell's line), and for
# a command that would reach the network or install software a note that neither can be
# done, as the Python worker gives one (a model retried with wget, then pip, then apt-get).
# `command -v curl` still finds nothing, and a program's own shell (`bash x.sh`) says what
# bash says.
__ws_offline=' curl wget pip pip3 pipx npm npx yarn pnpm apt apt-get dpkg conda uv git ssh scp
 rsync ping nc netcat telnet ftp dig nslookup host '
command_not_found_handle() {
    printf '%s: line %s: %s: command not found\n' "${BASH_SOURCE[1]:-bash}" "${BASH_LINENO[0]}" \
        "$1" >&2
    if [[ $__ws_offline == *[[:space:]]"$1"[[:space:]]* ]]; then
        printf '%s\n' "There is no network here, and nothing can be installed: no host name" \
            "resolves and no package manager is here. Installed: bash and coreutils, python3" \
            "(with numpy, pandas, scipy, scikit-learn, matplotlib and more), node, rustc, gcc," \
            "jq, bc and sqlite3." >&2
    fi
    return 127
}
__ws_last=0  # the last cell's status: the next one's `$?` (cell.bash)
__ws_opts=''  # the shell's options as the last cell left them
__ws_trace() { __ws_dlive=1; [[ $__ws_opts != *v* ]] || set -v; [[ $__ws_opts != *x* ]] || set -x; }
__ws_status() { return "$1"; }
__ws_begin() { __ws_dlive=1; return "$1"; }
# bash 5.2: once the INT trap has returned from a cell that a loop of builtins ran (the trap
# then runs from bash's pending-traps loop, which skips its clean-up on that return), bash
# takes itself to be in a trap for the rest of its life, and a bare `return` in any function
# gives the status from before that trap, not `$?`: after `while :; do :; done` was
# interrupted, `f() { false; return; }; f` gave 0 (`if f` took the wrong branch) and the
# worker's own `trap -p` exited 130 (a review). The end of a SIGCHLD trap clears that state:
# after an interrupted cell, a probe (a bare `return` after a 77) tells whether it is stale,
# and if so a child's exit runs a CHLD trap of ours (the cell's own, if it set one, again
# after it; it runs once more itself, for the child that reads it). Tested in ||-lists,
# which neither set -e nor the ERR trap looks at.
__ws_fresh() { __ws_status 77 || return; }
__ws_unstale() {
    local __ws_chld
    __ws_chld=$(builtin trap -p CHLD)
    builtin trap : CHLD
    ( : )
    builtin trap - CHLD
    [[ -z $__ws_chld ]] || eval "builtin $__ws_chld"
}
# cell.bash runs each cell, on its one line: bash's messages then name the cell's own line
# numbers (the eval'd code's lines count from the line of the eval), and a cell's `set -v`
# shows no line of ours after it (bash reads a file's lines as it runs them).
#
# Interrupted before the code runs: by a SIGINT since the worker read the cell (the trap
# could not return from there yet), or by one that came while it was reading the cell, if
# that one's mark follows the code; a SIGINT without a mark was late.
#
# `$?` is the last cell's status when the code starts, as in a terminal (`false`, then
# `echo $?` in the next cell, prints 1). Set in an && list, which neither `set -e` nor the
# ERR trap takes for a failure; 0 and 1 by an arithmetic test, other statuses by a function
# (which a RETURN trap with `set -T` sees). Not when the cells trace (`set -x` or `-v`): that
# is switched on last (by __ws_trace), so that no line of the worker's is traced, and `$?`
# is 0.
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
    builtin trap "$__ws_trap" INT
    __ws_running=1 __ws_dlive=0 __ws_dtop=0
    . "$__ws_cell"
    # Tracing (`set -x`, `set -v`) is the cell's: off for the worker, on again before the
    # next cell's code (cell.bash). Switched off quietly, so that a traced cell shows one
    # line of ours (`case $- in`), not the worker's loop; a cell that traces nothing pays no
    # redirection (its 6 system calls cost most under gVisor, where each takes tens of us).
    case $- in
        *[xv]*) { __ws_rc=$(( __ws_intr ? 130 : $? )) __ws_opts=$-; set +xv; } 2>/dev/null ;;
        *) __ws_rc=$(( __ws_intr ? 130 : $? )) __ws_opts='' ;;
    esac
    builtin trap - DEBUG
    [[ $__ws_debug == - ]] || __ws_debug_kept
    [[ -z $__ws_exit ]] || __ws_at_exit  # (a call per cell cost 6 us: tested first)
    __ws_running=0
    __ws_last=$__ws_rc
    if (( __ws_intr )); then
        __ws_p=0
        __ws_fresh || __ws_p=$?
        (( __ws_p == 77 )) || __ws_unstale
        __ws_st=interrupted
    elif (( __ws_rc == 0 )); then __ws_st=success; else __ws_st=error; fi
    printf '{"t":"done","status":"%s","exit_code":%d,"error":null}\n' "$__ws_st" "$__ws_rc" >&"$__ws_out" || exit 70
done
