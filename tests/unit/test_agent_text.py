"""The agent's text core against CPython's, through a harness compiled with the agent's own
source (``tests/unit/agent_harness.c``, built here with the sanitizers when gcc has them).

The C agent must decode a stream of user output exactly as Python's incremental UTF-8
decoder with ``errors="replace"`` does (the protocol says so), and accept exactly the frame
bodies the service's and the worker's JSON would: strict UTF-8, strict JSON, an object with
a string ``t``. Hypothesis draws both from the pieces where decoders disagree.
"""

from __future__ import annotations

import codecs
import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.agent_binary import AGENT_DIR

sys.path.insert(0, str(AGENT_DIR))
from worker_python import loads

HARNESS = Path(__file__).with_name("agent_harness.c")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


class Harness:
    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def call(self, mode: bytes, data: bytes) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(mode + struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()
        header = self.proc.stdout.read(4)
        assert len(header) == 4, f"the harness died (exit {self.proc.wait()})"
        return self.proc.stdout.read(struct.unpack(">I", header)[0])

    def close(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    binary = tmp_path_factory.mktemp("harness") / "agent_harness"
    base = ["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Wno-unused-function",
            "-o", str(binary), str(HARNESS)]
    built = subprocess.run([*base, *SANITIZE], capture_output=True, text=True, check=False)
    if built.returncode != 0:  # no sanitizer runtime: plain build
        built = subprocess.run(base, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    h = Harness(binary)
    yield h
    assert h.close() == 0  # a sanitizer finding exits non-zero


UTF8_PIECES = [b"\xe0", b"\xa0", b"\x80", b"\xed\xa0\x80", b"\xf0\x9f", b"\x98\x80",
               b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xff", b"a", b"\xc3", b"\xa9",
               b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\n", b"\xef\xbf\xbd", b"\xf5"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(UTF8_PIECES), max_size=14),
       st.lists(st.integers(0, 60), max_size=4))
def test_output_decodes_like_pythons_incremental_decoder(harness: Harness,
                                                         pieces: list[bytes],
                                                         cuts: list[int]) -> None:
    data = b"".join(pieces)
    splits = sorted(min(c, len(data)) for c in cuts)
    record = bytes([len(splits)]) + b"".join(struct.pack(">I", s) for s in splits) + data
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    expected, prev = "", 0
    for at in [*splits, len(data)]:
        expected += decoder.decode(data[prev:at])
        prev = at
    expected += decoder.decode(b"", final=True)
    assert harness.call(b"u", record) == expected.encode()


JSON_PIECES = ["{", "}", "[", "]", '"', ":", ",", " ", '"t"', '"x"', "1", "-0", "1.5e3",
               "1e400", "-", "0", "null", "true", "false", "NaN", "Infinity", "\\u", "d800",
               "\\ud800", "\\udc00", "\\n", "\\", "é", "\x01", '"t":"a"', "9" * 20, "1E",
               ".5", "\\uD83D\\uDE00", '{"t":"s","a":', "\\x", "\x7f", "\u2028"]


def python_view(body: bytes) -> str:
    """What the agent must answer for ``body``: its refusal, word for word as agent.py's
    (``ERR`` and the message), or ``OK`` and its members."""
    try:
        obj = loads(body.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        return f"ERR invalid JSON frame: {exc}"
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        return "ERR a frame must be a JSON object with a string field 't'"
    view = "OK" + "".join(f"\n{json.dumps(k, ensure_ascii=False)}={v!r}" for k, v in obj.items())
    return view.encode("utf-8", "replace").decode("utf-8")  # lone surrogates: '?'


@settings(max_examples=600, deadline=None)
@example(['"t"', ",", '"t":"a"'], True)  # a repeated key: listed once, with its last value
@given(st.lists(st.sampled_from(JSON_PIECES), min_size=1, max_size=14), st.booleans())
def test_frame_bodies_parse_like_pythons_json(harness: Harness, pieces: list[str],
                                               wrapped: bool) -> None:
    text = "".join(pieces)
    if wrapped:
        text = '{"t":"x","v":' + text + "}"
    body = text.encode("utf-8", "surrogatepass")
    assert harness.call(b"j", body).decode("utf-8") == python_view(body), text


@pytest.mark.parametrize(("depth", "accepted"), [(300, True), (5000, False), (100_000, False)])
def test_nesting_is_bounded_like_pythons(harness: Harness, depth: int, accepted: bool) -> None:
    body = ('{"t":"x","v":' + "[" * depth + "]" * depth + "}").encode()
    assert python_view(body).startswith("OK") == accepted
    assert harness.call(b"j", body).startswith(b"OK" if accepted else b"ERR ")
