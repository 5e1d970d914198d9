eval "$__ws_code"
