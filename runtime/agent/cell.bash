if (( __ws_sig )); then __ws_sig=0; if read -t 0 -u "$__ws_in" && IFS= read -r -d '' -u "$__ws_in" __ws_mark; then [[ $__ws_mark == i ]] && __ws_intr=1; fi; fi; if (( __ws_intr )); then return 130; fi; if (( __ws_last > 1 )); then __ws_status "$__ws_last" && :; else (( __ws_last == 0 )) && :; fi; eval "$__ws_code"
# All on the first line, so that bash's messages name the cell's own line numbers (the eval'd
# code's lines count from the line of the eval).
#
# Interrupted before the code runs (see worker_shell.bash): by a SIGINT since the worker read
# the cell (the trap could not return from here yet), or by one that came while it was
# reading the cell, if that one's mark follows the code; a SIGINT without a mark was late.
#
# `$?` is the last cell's status when the code starts, as in a terminal (`false`, then `echo $?`
# in the next cell, prints 1). Set in an && list, which neither `set -e` nor the ERR trap
# takes for a failure; 0 and 1 by an arithmetic test, other statuses by a function (which a
# RETURN trap with `set -T` sees).
