"""runtime/agent/node_builtins.js: later Node.js builtins for the image's Node 18.

The host's Node (20 or later) has the ES2023 methods itself: each one here is compared with
it, call by call, over the same receivers and arguments (results, the errors' kinds, and the
functions' ``name`` and ``length``). ``Object.groupBy``, ``Map.groupBy`` and
``Promise.withResolvers`` (Node 21 and 22) are checked against what the language defines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

MODULE = Path(__file__).resolve().parents[2] / "runtime" / "agent" / "node_builtins.js"
NODE = shutil.which("node")  # the host's, which the agent's unit tests run as well

SCRIPTS = Path(__file__).resolve().parent / "js"


def run_node(script: str) -> dict[str, Any]:
    assert NODE is not None, "node is not installed (scripts/setup.sh installs it)"
    done = subprocess.run([NODE, str(SCRIPTS / script), str(MODULE)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_each_method_behaves_as_the_hosts_node_own() -> None:
    out = run_node("node_builtins_compare.js")
    assert out["mismatches"] == []
    assert out["compared"] > 400  # the battery ran


def test_group_by_and_with_resolvers_as_the_language_defines_them() -> None:
    checks = run_node("node_builtins_compare.js")["checks"]
    assert checks["byParity"] == [None, ["odd", "even"], [1, 3, 5], [2, 4]]
    assert checks["indexes"] == [0, 1, 2]
    # A symbol stays a symbol, an object becomes its string ("__proto__" is an own key of
    # the null-prototype result, not its prototype), a number its string.
    assert checks["keyed"] == [["1", "__proto__"], [1], [2], [3]]
    assert checks["mapped"] == [["0", 2], ["NaN", 2], ["a", 1]]  # -0 is +0; NaN is NaN
    assert checks["errors"] == {
        "Object.groupBy(null)": "throws TypeError",
        "Object.groupBy(1)": "throws TypeError",
        "Object.groupBy no callback": "throws TypeError",
        "Map.groupBy no callback": "throws TypeError",
        "Promise.withResolvers on a non-constructor": "throws TypeError",
        "Promise.withResolvers, an executor given no functions": "throws TypeError",
        "Promise.withResolvers, an executor called twice": "throws TypeError",
        "a callback that throws": "throws RangeError",
    }
    assert checks["closed"] is True  # the iterator was closed when the callback threw
    # A cell's own sort, Map#set or replace does not change them (a review).
    assert checks["patched"] == [[1, 2, 3], [1, 2, 3], [1, 0], "a\ufffd"]
    assert checks["resolvers"] == [True, "function", "function", True]
    assert checks["names"] == ["groupBy", 2, 2, "withResolvers", 0]
    assert checks["resolved"] == 42


def test_install_defines_what_node_lacks_as_its_own_are_defined() -> None:
    result = run_node("node_builtins_install.js")
    as_builtin = ["function", True, False, True]
    for key in ("Array.toSorted", "Array.toReversed", "Array.with", "Array.toSpliced",
                "TypedArray.toSorted", "TypedArray.toReversed", "TypedArray.with",
                "String.isWellFormed", "String.toWellFormed", "Object.groupBy", "Map.groupBy",
                "Promise.withResolvers"):
        assert result[key] == as_builtin, key
    assert result["unscopables"] == result["nativeUnscopables"]
    assert result["forIn"] == ["0"]  # nothing enumerable was added to arrays
    assert result["untouched"] is True
    assert result["works"] == [[1, 2, 3], [9, 2], ["k"]]
