"""Call Open WebUI's ``execute_code_jupyter`` the way each of its two code paths calls it.

Runs in the client venv made by :mod:`tests.openwebui.check` (Open WebUI's pinned aiohttp,
websockets, pydantic, orjson, python-socketio), never in ours, and imports nothing of
ws_sandbox. ``--src`` is the directory holding the files extracted from the open-webui wheel;
the Open WebUI modules are loaded from there, unmodified, with importlib.

The two call sites, as in open-webui 0.12.4:

* **Run button** (``routers/utils.py``, ``POST /api/v1/utils/code/execute``)::

      execute_code_jupyter(url, code, token if auth == 'token' else None,
                           password if auth == 'password' else None, timeout)

* **code interpreter** (``utils/middleware.py``): the same call with the interpreter's
  settings, on ``sanitize_code(code)`` (markdown fences and ANSI codes stripped), preceded by
  the import-blocking prelude when ``CODE_INTERPRETER_BLOCKED_MODULES`` is set. The prelude is
  taken from the wheel's ``middleware.py`` at run time, not copied here.

Prints one JSON object: ``{"runs": [{"path", "case", "output", "seconds"}, ...]}``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import functools
import importlib
import json
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

PLOT = """\
import sys
import matplotlib.pyplot as plt
print("hello from stdout")
print("a warning", file=sys.stderr)
plt.plot([1, 2, 3], [1, 4, 9])
plt.show()
6 * 7
"""

ERROR = """\
print("before")
def f():
    return 1 / 0
f()
print("never")
"""

TIME_LIMIT = """\
import time
print("sleeping", flush=True)
time.sleep(600)
"""

BLOCKED = """\
try:
    import subprocess
except ImportError as e:
    print("blocked:", e)
import json
print("json", json.dumps(1))
"""

CASES = {"plot": PLOT, "error": ERROR, "time_limit": TIME_LIMIT}
BLOCKED_MODULES = ["subprocess"]

Execute = Callable[[str, str, str | None, str | None, int], Awaitable[dict[str, Any]]]


def blocking_prelude(src: Path, modules: list[str]) -> str:
    """The code interpreter's import-blocking prelude, evaluated from the wheel's source.

    ``middleware.py`` builds it as ``blocking_code = textwrap.dedent(f\"\"\"...\"\"\")`` with
    ``CODE_INTERPRETER_BLOCKED_MODULES`` in scope; that very expression is evaluated here.
    """
    tree = ast.parse((src / "open_webui/utils/middleware.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "blocking_code"):
            expression = compile(ast.Expression(node.value), "middleware.py", "eval")
            scope = {"textwrap": textwrap, "CODE_INTERPRETER_BLOCKED_MODULES": modules}
            return cast(str, eval(expression, scope))
    raise SystemExit("middleware.py has no `blocking_code = ...` assignment any more")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--auth", choices=["token", "password"], required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--cases", default=",".join([*CASES, "blocked"]))
    args = parser.parse_args()
    wanted = set(args.cases.split(","))

    sys.path.insert(0, str(args.src))
    interpreter = importlib.import_module("open_webui.utils.code_interpreter")
    sanitize = importlib.import_module("open_webui.utils.sanitize")
    execute = cast(Execute, interpreter.execute_code_jupyter)
    sanitize_code = cast(Callable[[str], str], sanitize.sanitize_code)

    token = args.secret if args.auth == "token" else None
    password = args.secret if args.auth == "password" else None

    async def run_button(code: str) -> dict[str, Any]:
        return await execute(args.url, code, token, password, args.timeout)

    async def code_interpreter(code: str, blocked: list[str] | None = None) -> dict[str, Any]:
        # The model writes the code inside a fenced block; the middleware sanitizes it.
        code = sanitize_code(f"```python\n{code}\n```")
        if blocked:
            code = blocking_prelude(args.src, blocked) + "\n" + code
        return await execute(args.url, code, token, password, args.timeout)

    calls: list[tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]] = []
    for case, code in CASES.items():
        if case in wanted:
            calls.append(("run_button", case, functools.partial(run_button, code)))
            calls.append(("code_interpreter", case, functools.partial(code_interpreter, code)))
    if "blocked" in wanted:
        calls.append(("code_interpreter", "blocked",
                      functools.partial(code_interpreter, BLOCKED, BLOCKED_MODULES)))

    runs = []
    for path, case, call in calls:
        start = time.monotonic()
        output = await call()
        runs.append({"path": path, "case": case, "output": output,
                     "seconds": round(time.monotonic() - start, 2)})
    json.dump({"runs": runs}, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
