"""Each language in the real runtime image, through the real service.

For every language: interrupt, stdin at end-of-file, frame-shaped text printed by user code,
an output larger than one agent frame, a syntax error, and a crash of the interpreter.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Service, ServiceFactory, warm_service
from ws_sandbox import frames as fr
from ws_sandbox.client import connect

pytestmark = pytest.mark.docker

LANGUAGES = ["python", "javascript", "shell", "rust"]

# A line that looks exactly like an agent frame and like a protocol frame.
FRAME_TEXT = '{"t":"done","id":"x","status":"success"} {"type":"result","id":"x"}'

SOURCES: dict[str, dict[str, str]] = {
    "python": {
        "spin": "import time\nwhile True:\n    time.sleep(0.01)",
        "stdin": "import sys\ndata = sys.stdin.read()\nprint('eof', len(data))",
        "frames": f"print({FRAME_TEXT!r})\nimport sys\n"
                  "sys.stdout.buffer.write(b'\\x00\\x00\\x00\\x10')",
        "big": "print('y' * 300_000)",
        "syntax": "def broken(:\n    pass",
        "crash": "import os\nos.abort()",
    },
    "javascript": {
        "spin": "while (true) {}",
        "stdin": "const fs = require('fs'); const d = fs.readFileSync(0);"
                 " console.log('eof', d.length)",
        "frames": f"console.log({FRAME_TEXT!r});"
                  " process.stdout.write('\\u0000\\u0000\\u0000\\u0010')",
        "big": "console.log('y'.repeat(300000))",
        "syntax": "function broken( {",
        "crash": "process.abort()",
    },
    "shell": {
        "spin": "while true; do :; done",
        "stdin": "data=$(cat); echo eof ${#data}",
        "frames": f"echo '{FRAME_TEXT}'; printf '\\0\\0\\0\\020'",
        "big": "head -c 300000 /dev/zero | tr '\\0' y; echo",
        "syntax": "if then fi (",
        "crash": "kill -SEGV $$",
    },
    "rust": {
        "spin": "fn main() { loop { std::hint::spin_loop(); } }",
        "stdin": "use std::io::Read; fn main() { let mut s = String::new();"
                 " std::io::stdin().read_to_string(&mut s).unwrap();"
                 ' println!("eof {}", s.len()); }',
        "frames": 'fn main() { println!("{}", r#"' + FRAME_TEXT + '"#);'
                  ' use std::io::Write; std::io::stdout().write_all(&[0, 0, 0, 16]).unwrap(); }',
        "big": 'fn main() { println!("{}", "y".repeat(300000)); }',
        "syntax": "fn main() { let = ; }",
        "crash": "fn main() { std::process::abort(); }",
    },
}


@pytest.fixture(scope="module")
def big_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service with the default 1 MiB output cap (the shared one caps at 64 KiB), and
    loopback sockets (a cell's local server and its client)."""
    path: Path = tmp_path_factory.mktemp("languages")
    with warm_service(path, MAX_CONCURRENT_EXECUTIONS="20",
                      ALLOW_LOOPBACK_SOCKETS="true") as svc:
        yield svc


@pytest.mark.parametrize("language", LANGUAGES)
async def test_interrupt_stops_the_cell(big_service: Service, language: str) -> None:
    async with await connect(big_service.url, language=language) as s:
        cell = asyncio.create_task(s.execute(SOURCES[language]["spin"], timeout=20))
        await asyncio.sleep(1.5 if language == "rust" else 0.5)
        start = time.monotonic()
        await s.interrupt()
        r = await asyncio.wait_for(cell, 15)
        assert r.status == "interrupted", r
        assert time.monotonic() - start < 10
        after = await s.execute({"python": "print('ok')", "javascript": "console.log('ok')",
                                 "shell": "echo ok",
                                 "rust": 'fn main() { println!("ok"); }'}[language])
        assert after.stdout == "ok\n"


@pytest.mark.parametrize("language", LANGUAGES)
async def test_stdin_is_at_end_of_file(big_service: Service, language: str) -> None:
    async with await connect(big_service.url, language=language) as s:
        start = time.monotonic()
        r = await s.execute(SOURCES[language]["stdin"], timeout=15)
        assert r.status == "success", r
        assert r.stdout.strip() == "eof 0"
        assert time.monotonic() - start < 10


@pytest.mark.parametrize("language", LANGUAGES)
async def test_frame_shaped_text_is_just_text(big_service: Service, language: str) -> None:
    async with await connect(big_service.url, language=language) as s:
        r = await s.execute(SOURCES[language]["frames"])
        assert r.status == "success", r
        assert FRAME_TEXT in r.stdout
        assert r.stdout.endswith("\x00\x00\x00\x10")
        assert (await s.execute(SOURCES[language]["stdin"])).status == "success"


@pytest.mark.parametrize("language", LANGUAGES)
async def test_output_larger_than_one_frame_arrives_whole(big_service: Service,
                                                          language: str) -> None:
    async with await connect(big_service.url, language=language) as s:
        chunks: list[fr.Stream] = []
        r = await s.execute(SOURCES[language]["big"], on_output=chunks.append)
        assert r.status == "success", r
        assert r.stdout == "y" * 300_000 + "\n"
        assert len(chunks) >= 2
        assert not r.result.truncated


@pytest.mark.parametrize("language", LANGUAGES)
async def test_syntax_error_is_an_error(big_service: Service, language: str) -> None:
    async with await connect(big_service.url, language=language) as s:
        r = await s.execute(SOURCES[language]["syntax"])
        assert r.status == "error", r
        assert r.stderr.strip()
        assert not r.result.state_lost


@pytest.mark.parametrize("language", LANGUAGES)
async def test_interpreter_crash_is_reported_and_session_recovers(
        big_service: Service, language: str) -> None:
    async with await connect(big_service.url, language=language) as s:
        r = await s.execute(SOURCES[language]["crash"])
        assert r.status == "error", r
        assert r.result.error
        if language != "rust":  # a Rust cell is its own process: nothing to lose
            assert r.result.state_lost
        again = await s.execute(SOURCES[language]["stdin"])
        assert again.status == "success", again


#: A cell that ends the way a program ends, and the state the interpreter keeps through it.
ENDINGS: dict[str, tuple[str, str, str, str, int]] = {
    # language: (set, ending cell, its error, get, exit code)
    "python": ("kept = 'yes'", "import sys\ndef main():\n    return 3\nsys.exit(main())",
               "SystemExit: 3", "print(kept)", 3),
    "javascript": ("var kept = 'yes'", "Promise.reject(new Error('nobody caught me')); 1",
                   "Uncaught (in promise) Error: nobody caught me", "console.log(kept)", 1),
}


@pytest.mark.parametrize("language", sorted(ENDINGS))
async def test_a_cell_that_ends_as_a_program_would_keeps_the_state(big_service: Service,
                                                                   language: str) -> None:
    """In the runtime image (its own Node.js, whose internals the JavaScript worker asks
    whether a rejection is pending): Python's ``sys.exit`` ends the cell and keeps the
    interpreter, and a JavaScript promise nobody handles makes its cell an error."""
    set_, ending, error, get, exit_code = ENDINGS[language]
    async with await connect(big_service.url, language=language) as s:
        await s.execute(set_)
        r = await s.execute(ending)
        assert (r.status, r.result.exit_code, r.result.error) == ("error", exit_code, error), r
        assert not r.result.state_lost
        after = await s.execute(get)
        assert after.stdout == "yes\n", after


async def test_model_written_python_finds_what_it_imports_or_is_told_why(
        big_service: Service) -> None:
    """In the runtime image, which has no IPython: model-written code imports display, HTML,
    Markdown and Image from IPython.display (a review: ModuleNotFoundError, so the cell
    died before it showed anything), uses tqdm, and is told that a missing package cannot
    be installed."""
    async with await connect(big_service.url) as s:
        r = await s.execute(
            "from IPython.display import display, HTML, Markdown, Image, clear_output\n"
            "from IPython import get_ipython\n"
            "import io, PIL.Image\n"
            "buf = io.BytesIO()\nPIL.Image.new('RGB', (2, 2)).save(buf, 'PNG')\n"
            "display(HTML('<b>bold</b>'))\ndisplay(Markdown('# Title'))\n"
            "display(Image(data=buf.getvalue()))\nclear_output()\nprint(get_ipython())")
        assert r.status == "success", r
        assert r.stdout == "None\n"
        html, markdown, image = (d.data for d in r.displays)
        assert html == {"text/plain": "<IPython.core.display.HTML object>",
                        "text/html": "<b>bold</b>"}
        assert markdown == {"text/plain": "# Title", "text/markdown": "# Title"}
        assert image["image/png"].startswith("iVBORw0KGgo")  # PNG's signature, base64
        bar = await s.execute("from tqdm import tqdm\nprint(sum(tqdm(range(10))))")
        assert (bar.status, bar.stdout) == ("success", "45\n"), bar
        missing = await s.execute("import torch")
        assert missing.status == "error"
        assert "Packages cannot be installed here: there is no network and no pip." in (
            missing.result.error or "")


async def test_what_model_written_code_imports_is_installed(big_service: Service) -> None:
    """Data analysis as models write it imports more than numpy, pandas and matplotlib (a
    review of model-written cells: scipy, scikit-learn and seaborn were missing), and shell
    cells use jq, bc and sqlite3. The missing-package note names each of them."""
    modules = ["scipy.stats", "sklearn.linear_model", "statsmodels.api", "seaborn", "sympy",
               "networkx", "openpyxl", "bs4", "lxml.etree", "yaml", "PIL.Image", "tqdm"]
    async with await connect(big_service.url) as s:
        r = await s.execute(f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
                            "print('imported')", timeout=30)
        assert (r.status, r.stdout) == ("success", "imported\n"), r
        # OpenBLAS starts as many threads as the sandbox's CPU limit (1), not the host's.
        tasks = await s.execute("import os, numpy\nprint(len(os.listdir('/proc/self/task')))")
        assert tasks.stdout == "1\n", tasks
        # joblib's process workers (scikit-learn's n_jobs) start interpreters with the
        # worker's flags: they printed a traceback at every call when those lacked site.
        parallel = await s.execute(
            "from joblib import Parallel, delayed\n"
            "print(sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(100))))")
        assert (parallel.status, parallel.stdout, parallel.stderr) == ("success", "4950\n", ""), (
            parallel)
        # A sympy value is a formula (text/latex), and IPython's Math, Latex and SVG import.
        formula = await s.execute(
            "from IPython.display import Math, Latex, SVG\ndisplay(Math('e^{i\\\\pi}'))\n"
            "import sympy as sp\nx = sp.symbols('x')\nsp.integrate(x**2, x)")
        assert formula.status == "success", formula
        math, value = (d.data for d in formula.displays)
        assert math["text/latex"] == "$\\displaystyle e^{i\\pi}$", math
        assert value == {"text/plain": "x**3/3",
                         "text/latex": "$\\displaystyle \\frac{x^{3}}{3}$"}, value
        note = (await s.execute("import torch")).result.error or ""
        for name in ("scipy", "scikit-learn", "statsmodels", "sympy", "seaborn", "openpyxl"):
            assert name in note, note
    async with await connect(big_service.url, language="shell") as s:
        r = await s.execute("echo '{\"a\": [1, 2]}' | jq -c '.a | add'; echo '2^10' | bc;"
                            " sqlite3 :memory: 'select 6 * 7'")
        assert (r.status, r.stdout) == ("success", "3\n1024\n42\n"), r


async def test_model_written_javascript_imports_and_exports(big_service: Service) -> None:
    """In the runtime image (its Node.js and Debian's acorn): static imports and exports,
    which model-written code uses, work in a cell (they were a SyntaxError)."""
    async with await connect(big_service.url, language="javascript") as s:
        r = await s.execute("import fs from 'fs'\nimport { join } from 'path'\n"
                            "export const answer = 42\n"
                            "console.log(typeof fs.readFileSync, join('a', 'b'), answer)")
        assert (r.status, r.stdout) == ("success", "function a/b 42\n"), r
        after = await s.execute("console.log(join('c', 'd'), answer)")
        assert after.stdout == "c/d 42\n", after


async def test_model_written_javascript_finds_a_global_crypto(big_service: Service) -> None:
    """Node 19 and later (and browsers) have a global ``crypto``, which model-written code
    uses without a require; the image's Node 18 said "crypto is not defined". It is the
    module, as in Node 18's REPL: Web Crypto's calls and the module's; a cell may still
    declare its own."""
    async with await connect(big_service.url, language="javascript") as s:
        r = await s.execute(
            "console.log(crypto.randomUUID().length, typeof crypto.subtle.digest,"
            " crypto.getRandomValues(new Uint8Array(4)).length,"
            " crypto.createHash('sha256').update('a').digest('hex').slice(0, 8))")
        assert (r.status, r.stdout) == ("success", "36 function 4 ca978112\n"), r
        own = await s.execute("const crypto = require('crypto'); console.log(typeof crypto)")
        assert (own.status, own.stdout) == ("success", "object\n"), own
        other = await s.execute("let crypto = 'mine'; console.log(crypto)")
        assert (other.status, other.stdout) == ("success", "mine\n"), other


async def test_model_written_javascript_finds_later_nodes_builtins(big_service: Service) -> None:
    """The image's Node 18 lacks what Node 20 to 22 added and model-written code uses (it
    said "arr.toSorted is not a function"): node_builtins.js defines them where Node lacks
    them, and they behave as the language says (tests/unit/test_node_builtins.py)."""
    async with await connect(big_service.url, language="javascript") as s:
        r = await s.execute(
            "const xs = [3, 1, 2];\n"
            "console.log(xs.toSorted(), xs.toReversed(), xs.with(-1, 9), xs.toSpliced(0, 1), xs)\n"
            "console.log(Int8Array.of(3, -1).toSorted(), 'a\\uD800'.toWellFormed().length)\n"
            "console.log(Object.groupBy([1, 2, 3], (n) => n % 2 ? 'odd' : 'even'))\n"
            "console.log(Map.groupBy([1, 2], (n) => n > 1).get(true))\n"
            "const { promise, resolve } = Promise.withResolvers(); resolve(7);\n"
            "console.log(await promise, Object.keys(Array.prototype).length)\n"
            "try { xs.with(5, 0) } catch (e) {\n"
            "  console.log(e.name, /node_builtins/.test(e.stack))\n"
            "}")
        assert r.status == "success", r
        # So do a worker thread's and a child node's (every node loads node_preload.js).
        elsewhere = await s.execute(
            "const { Worker } = require('worker_threads');\n"
            "await new Promise((resolve) => new Worker(\"require('worker_threads')"
            ".parentPort.postMessage([2, 1].toSorted().join())\", { eval: true })\n"
            "  .on('message', (m) => { console.log(m); resolve(); }));\n"
            "console.log(require('child_process').execSync("
            "'node -p \"typeof Object.groupBy\"').toString().trim())")
        assert (elsewhere.status, elsewhere.stdout) == ("success", "1,2\nfunction\n"), elsewhere
        assert r.stdout.splitlines() == [
            "[ 1, 2, 3 ] [ 2, 1, 3 ] [ 3, 1, 9 ] [ 1, 2 ] [ 3, 1, 2 ]",
            "Int8Array(2) [ -1, 3 ] 2",
            "[Object: null prototype] { odd: [ 1, 3 ], even: [ 2 ] }",
            "[ 2 ]",
            "7 0",
            "RangeError false"], r  # no frame of the worker's file in a user's stack


async def test_model_written_javascript_callbacks_print_within_their_cell(
        big_service: Service) -> None:
    """In the runtime image's Node.js: a cell ends once the work it started is done, so what
    a callback prints is the cell's output (the event-loop demo lost C, and a callback's
    ``fs.readFile`` printed nothing), while an interval or a server does not hold the cell."""
    async with await connect(big_service.url, language="javascript") as s:
        demo = await s.execute(
            "console.log('A'); setTimeout(() => console.log('C'), 0);\n"
            "Promise.resolve().then(() => console.log('B'))")
        assert (demo.status, demo.stdout) == ("success", "A\nB\nC\n"), demo
        read = await s.execute(
            "require('fs').readFile('/etc/os-release', 'utf8', (err, text) =>\n"
            "  console.log(err, text.includes('Debian')))")
        assert read.stdout == "null true\n", read
        started = time.monotonic()
        server = await s.execute(
            "const http = require('http'); setInterval(() => {}, 1000);\n"
            "const srv = http.createServer((q, r) => r.end('pong')).listen(0, () =>\n"
            "  http.get(`http://127.0.0.1:${srv.address().port}`,\n"
            "    (res) => res.on('data', (d) => console.log(String(d)))))")
        assert (server.status, server.stdout) == ("success", "pong\n"), server
        assert time.monotonic() - started < 10


@pytest.mark.parametrize(("language", "code", "printed"), [
    ("python", "import socket\nprint(socket.gethostbyname('localhost'))", "127.0.0.1\n"),
    ("javascript", "const http = require('http');\n"
     "const srv = http.createServer((q, r) => r.end('pong')).listen(0, 'localhost', () =>\n"
     "  http.get({ host: 'localhost', port: srv.address().port },\n"
     "    (res) => res.on('data', (d) => { console.log(String(d)); srv.close(); })))", "pong\n"),
    ("shell", "getent hosts localhost >/dev/null && echo found; getent hosts example.com"
     " || echo 'no other name'", "found\nno other name\n"),
])
async def test_localhost_resolves_and_nothing_else_does(big_service: Service, language: str,
                                                        code: str, printed: str) -> None:
    """A sandbox has no network, so the engine gives it an empty /etc/hosts: a server a cell
    started on ``localhost``, and its client, failed with "getaddrinfo EAI_AGAIN localhost".
    The image resolves ``localhost`` (libnss-myhostname); other names still do not."""
    async with await connect(big_service.url, language=language) as s:
        result = await s.execute(code, timeout=20)
        assert (result.status, result.stdout) == ("success", printed), result


@pytest.mark.parametrize(("language", "code"), [
    ("python", "import getpass, os, pwd\nme = pwd.getpwuid(os.getuid())\n"
               "print(me.pw_name, me.pw_dir, getpass.getuser(), me.pw_uid == os.getuid())"),
    ("javascript", "const me = require('os').userInfo();\n"
                   "console.log(me.username, me.homedir, process.env.USER,\n"
                   "            me.uid === process.getuid())"),
    ("shell", 'echo "$(whoami) $(getent passwd "$(id -u)" | cut -d: -f6) $(id -gn)'
              ' $([ "$(id -u)" -ge 1000000 ] && echo true)"'),
])
async def test_the_sandbox_s_own_uid_has_a_name(big_service: Service, language: str,
                                               code: str) -> None:
    """Each sandbox runs as a uid of its own, which no passwd entry of the image named:
    ``whoami``, Node's ``os.userInfo()`` and Python's ``pwd.getpwuid()`` failed."""
    async with await connect(big_service.url, language=language) as s:
        result = await s.execute(code, timeout=20)
        assert (result.status, result.stderr) == ("success", ""), result
        assert result.stdout.lower() == "sandbox /workspace sandbox true\n", result


async def test_rust_opt_level_reaches_the_images_rustc(make_service: ServiceFactory) -> None:
    """``RUST_OPT_LEVEL=2``: a loop of ten billion additions, which a debug build runs for
    far longer than the cell's 10 s, ends at once (rustc 1.63 takes the flags); an overflow
    still panics."""
    with make_service(ENABLE_PYTHON="false", ENABLE_JAVASCRIPT="false", ENABLE_SHELL="false",
                      RUST_OPT_LEVEL="2") as svc:
        async with await connect(svc.url, language="rust") as s:
            loop = await s.execute("let n = 10_000_000_000 + std::env::args().count() as u64;\n"
                                   "let mut s: u64 = 0;\n"
                                   "for i in 0..n { s = s.wrapping_add(i); }\n"
                                   "println!(\"{s}\");\n", timeout=10)
            assert (loop.status, loop.stdout) == ("success", "13106511857580896768\n"), loop
            overflow = await s.execute("let n: u8 = std::env::args().count() as u8 + 254;\n"
                                       "println!(\"{}\", n + 1);\n", timeout=30)
            assert overflow.status == "error", overflow
            assert "attempt to add with overflow" in overflow.stderr, overflow


async def test_rust_snippets_in_the_images_rustc(big_service: Service) -> None:
    """The image's rustc (older than the host's) takes what the agent makes of a snippet: a
    function and its tests run as tests, an opening inner attribute keeps ``?``, ``return;``
    ends a snippet without ``?``, and the notes
    on a missing crate and on the empty stdin come."""
    async with await connect(big_service.url, language="rust") as s:
        tests = await s.execute("fn add(a: i32, b: i32) -> i32 { a + b }\n#[cfg(test)]\n"
                                "mod tests {\n    use super::*;\n    #[test]\n"
                                "    fn adds() { assert_eq!(add(2, 2), 4); }\n}\n", timeout=30)
        assert tests.status == "success", tests
        assert "test tests::adds ... ok\n" in tests.stdout, tests
        attr = await s.execute('#![allow(unused)]\nlet n: i32 = "42".parse()?;\n'
                               'let spare = 1;\nprintln!("{n}");\nn', timeout=30)
        assert (attr.status, attr.stdout, attr.stderr) == ("success", "42\n", ""), attr
        early = await s.execute('let x = 3;\nif x > 2 { println!("big"); return; }\n'
                                'println!("small");', timeout=30)
        assert (early.status, early.stdout) == ("success", "big\n"), early
        crate = await s.execute("use rand::Rng;\nlet x: u8 = rand::random();", timeout=30)
        assert crate.result.error == ("compilation failed: only Rust's standard library is"
                                      " here: crates (rand, serde, regex, tokio...) are not,"
                                      " and there is no Cargo or network to get them"), crate
        reads = await s.execute("let mut line = String::new();\n"
                                "std::io::stdin().read_line(&mut line)?;\n"
                                "let n: u32 = line.trim().parse().unwrap();", timeout=30)
        assert reads.result.error == ("process exited with code 101; the program reads stdin,"
                                      " which is empty here (a cell gets no input): put the"
                                      " values in the code"), reads


async def test_terminal_tools_know_there_is_no_terminal(big_service: Service) -> None:
    """``TERM`` was unset: ``tput`` and ``clear`` failed with "No value for $TERM" (a review of
    model-written shell cells). It is ``dumb``, and the shell is bash's own."""
    async with await connect(big_service.url, language="shell") as s:
        result = await s.execute('echo "$TERM $SHELL"; tput cols; clear; tput setaf 1;'
                                 ' echo "done"', timeout=20)
        assert (result.stdout, result.stderr) == ("dumb /bin/bash\n80\ndone\n", ""), result


async def test_a_missing_network_or_install_command_says_neither_can_be_done(
        big_service: Service) -> None:
    """``curl: command not found`` did not say why: a model then tried wget, pip, apt-get (a
    review of model-written shell cells). Such a command's message has a note; other missing
    commands keep bash's own message, and ``command -v`` still finds none."""
    async with await connect(big_service.url, language="shell") as s:
        curl = await s.execute("curl -s https://example.com/", timeout=20)
        assert (curl.status, curl.result.exit_code) == ("error", 127)
        assert curl.stderr.startswith("/opt/ws_sandbox/agent/cell.bash: line 1: curl: command"
                                      " not found\nThere is no network here, and nothing can be"
                                      " installed"), curl
        pip = await s.execute("echo start\npip install requests", timeout=20)
        assert "line 2: pip: command not found\nThere is no network" in pip.stderr, pip
        other = await s.execute("command -v wget; echo rc=$?; nosuchtool 2>&1 | cat", timeout=20)
        assert other.stdout == ("rc=1\n/opt/ws_sandbox/agent/cell.bash: line 1: nosuchtool:"
                                " command not found\n"), other


async def test_javascript_may_use_three_quarters_of_the_sandboxs_memory(
        service: Service) -> None:
    """Node sized its heap at half the memory limit (259 MB of 512): 1.5 million small
    objects (326 MB of heap) failed with "JavaScript heap out of memory" and a native stack
    (a review). Its limit is now three quarters (384 MB), for a shell cell's node too."""
    code = ("const a = []; for (let i = 0; i < 1_500_000; i++) a.push({i, s: 'x'.repeat(40) + i});"
            "console.log(a.length, process.memoryUsage().heapUsed > 300 * 2 ** 20)")
    async with await connect(service.url, language="javascript") as s:
        r = await s.execute(code, timeout=20)
        assert (r.status, r.stdout) == ("success", "1500000 true\n"), r
    async with await connect(service.url, language="shell") as s:
        r = await s.execute("node -p 'require(\"v8\").getHeapStatistics().heap_size_limit"
                            " > 380 * 2 ** 20'")
        assert (r.status, r.stdout) == ("success", "true\n"), r


@pytest.mark.parametrize("language", ["python", "javascript", "shell"])
async def test_a_cells_memory_is_its_peak_or_unknown(big_service: Service,
                                                    language: str) -> None:
    """gVisor's /proc has no VmHWM: an interpreter's cell reported a peak of 0.0 MB there (a
    review). It reports None (unknown) under gVisor, and a peak above zero under runc."""
    code = {"python": "x = bytearray(8 << 20)", "javascript": "var x = Buffer.alloc(8 << 20)",
            "shell": "x=1"}[language]
    async with await connect(big_service.url, language=language) as s:
        r = await s.execute(code)
        assert r.status == "success", r
        if os.environ.get("CONTAINER_RUNTIME") == "runsc":
            assert r.result.memory_used_mb is None, r.result
        else:
            assert r.result.memory_used_mb is not None and r.result.memory_used_mb > 0, r.result
