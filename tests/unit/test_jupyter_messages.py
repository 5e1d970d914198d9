"""Jupyter messages and kernelspecs: parsing, building, splitting, no Docker."""

from __future__ import annotations

import json

import pytest

from ws_sandbox.exceptions import BadRequest, NotFound, PayloadTooLarge
from ws_sandbox.jupyter import messages as jm
from ws_sandbox.jupyter.specs import find_spec, kernelspecs_model
from ws_sandbox.settings import Language


def test_decode_tolerates_what_real_clients_send() -> None:
    msg = jm.decode(json.dumps({
        "header": {"msg_id": "m1", "msg_type": "execute_request", "username": "user",
                   "session": "s", "date": "", "version": "5.3", "extra": 1},
        "parent_header": {}, "metadata": {}, "content": {"code": "1"}}))
    assert msg.msg_type == "execute_request"
    assert msg.channel_name == "shell"  # no channel: shell
    assert msg.buffers == []
    assert msg.header.date == ""


def test_decode_takes_null_as_missing() -> None:
    """A review: ``"date": null`` in a header (or ``"metadata": null``) closed the channel
    with 1008. ``null`` is taken as the field left out."""
    msg = jm.decode(json.dumps({
        "header": {"msg_id": "m1", "msg_type": "execute_request", "username": None,
                   "session": None, "date": None, "version": None},
        "parent_header": None, "metadata": None, "content": None, "channel": None,
        "buffers": None}))
    assert msg.header == jm.Header(msg_id="m1", msg_type="execute_request")
    assert msg.header.version == jm.PROTOCOL_VERSION
    assert (msg.metadata, msg.content, msg.buffers, msg.channel_name) == ({}, {}, [], "shell")
    with pytest.raises(BadRequest, match="no msg_type"):
        jm.decode('{"header": {"msg_type": null}}')


def test_decode_minimal_header_only() -> None:
    msg = jm.decode('{"header": {"msg_type": "kernel_info_request"}, "channel": "control"}')
    assert msg.msg_type == "kernel_info_request"
    assert msg.channel_name == "control"
    assert msg.content == {}


@pytest.mark.parametrize("data", ["not json", "[]", '{"content": {}}',
                                  '{"header": {"msg_id": 3}}',
                                  '{"header": {"msg_id": "m1"}}',  # no msg_type
                                  # header fields are echoed in every reply: bounded
                                  '{"header": {"msg_type": "' + "x" * 257 + '"}}',
                                  '{"header": {"msg_type": "a", "session": "'
                                  + "s" * 257 + '"}}',
                                  '{"content": {"x": ' + "[" * 2000 + "]" * 2000 + "}}"])
def test_decode_refuses_garbage(data: str) -> None:
    with pytest.raises(BadRequest):
        jm.decode(data)


def test_decode_refuses_huge_message() -> None:
    with pytest.raises(PayloadTooLarge, match="exceeds the limit"):
        jm.decode("x" * (jm.MAX_INCOMING_CHARS + 1))


def binary(*parts: bytes) -> bytes:
    """Jupyter Server's binary form: a count, one offset per part, the parts."""
    offset = 4 * (len(parts) + 1)
    offsets = []
    for part in parts:
        offsets.append(offset)
        offset += len(part)
    return b"".join([len(parts).to_bytes(4, "big"),
                     *(o.to_bytes(4, "big") for o in offsets), *parts])


def test_decode_binary_reads_the_message_and_drops_the_buffers() -> None:
    body = json.dumps({"header": {"msg_id": "b1", "msg_type": "comm_msg"},
                       "content": {"data": {}}, "channel": "shell"}).encode()
    msg = jm.decode_binary(binary(body, b"\x00\x01buffer", b""))
    assert msg.msg_type == "comm_msg"
    assert msg.header.msg_id == "b1"
    assert msg.buffers == []
    assert jm.decode_binary(binary(body)).msg_type == "comm_msg"  # no buffers at all


@pytest.mark.parametrize(("data", "why"), [
    (b"", "0 bytes"),
    (b"\x00\x00\x00\x01", "4 bytes"),
    ((0).to_bytes(4, "big") + b"{}{}", "0 parts"),
    ((3).to_bytes(4, "big") + (16).to_bytes(4, "big") + b"{}", "3 parts in 10 bytes"),
    ((1).to_bytes(4, "big") + (4).to_bytes(4, "big") + b"{}", "offsets do not fit"),
    ((2).to_bytes(4, "big") + (12).to_bytes(4, "big") + (99).to_bytes(4, "big") + b"{}",
     "offsets do not fit"),  # a buffer past the end
    ((2).to_bytes(4, "big") + (12).to_bytes(4, "big") + (10).to_bytes(4, "big") + b"{}",
     "offsets do not fit"),  # offsets going back
    (binary(b"not json"), "invalid Jupyter message"),
    (binary(b'{"header": {}}'), "no msg_type"),
])
def test_decode_binary_refuses_what_does_not_fit(data: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        jm.decode_binary(data)


def test_decode_binary_reads_only_the_first_part_s_bounds() -> None:
    """A message claiming a million parts costs what one claiming two does: the offsets of
    the buffers (dropped anyway) are never read, so garbage there does not matter."""
    parts = 1_000_000
    body = b'{"header": {"msg_type": "kernel_info_request"}}'
    head = 4 * (parts + 1)
    data = (parts.to_bytes(4, "big") + head.to_bytes(4, "big")
            + (head + len(body)).to_bytes(4, "big") + b"\xff" * (4 * (parts - 2)) + body)
    assert jm.decode_binary(data).msg_type == "kernel_info_request"


def test_decode_binary_refuses_huge_message() -> None:
    with pytest.raises(PayloadTooLarge):
        jm.decode_binary(binary(b"x" * (jm.MAX_INCOMING_CHARS + 1)))


def test_build_copies_parent_and_has_top_level_fields() -> None:
    parent = jm.Header(msg_id="req", msg_type="execute_request", session="client", date="")
    out = json.loads(jm.encode(jm.build("stream", {"name": "stdout", "text": "hi"},
                                        channel="iopub", parent=parent, session="kern")))
    assert out["parent_header"]["msg_id"] == "req"
    assert out["parent_header"]["msg_type"] == "execute_request"
    assert out["msg_type"] == out["header"]["msg_type"] == "stream"
    assert out["msg_id"] == out["header"]["msg_id"]
    assert out["channel"] == "iopub"
    assert out["buffers"] == []
    assert out["header"]["version"] == "5.3"
    assert out["header"]["session"] == "kern"
    assert out["header"]["date"].endswith("Z")


def test_build_without_parent() -> None:
    out = jm.build("status", {"execution_state": "idle"}, channel="iopub", parent=None,
                   session="k")
    assert out.parent_header == {}


def test_strip_ansi() -> None:
    coloured = "\x1b[0;31mZeroDivisionError\x1b[0m: \x1b]8;;http://x\x07link\x1b]8;;\x07 end"
    assert jm.strip_ansi(coloured) == "ZeroDivisionError: link end"


def test_split_text() -> None:
    assert jm.split_text("abc", 2) == ["ab", "c"]
    assert jm.split_text("", 2) == [""]
    pieces = jm.split_text("é" * (jm.STREAM_CHUNK_CHARS * 2 + 5))
    assert len(pieces) == 3
    assert all(len(p.encode()) < 1024 * 1024 for p in pieces)


@pytest.mark.parametrize(("error", "expected"), [
    ("ZeroDivisionError: division by zero", ("ZeroDivisionError", "division by zero")),
    ("json.decoder.JSONDecodeError: bad", ("JSONDecodeError", "bad")),
    ("a.: b", ("a.", "b")),
    ("exited with code 1", ("Error", "exited with code 1")),
    ("KeyError", ("Error", "KeyError")),
    (None, ("Error", "")),
])
def test_split_error(error: str | None, expected: tuple[str, str]) -> None:
    assert jm.split_error(error, "Error") == expected


def test_kernelspecs_model() -> None:
    model = kernelspecs_model(("python", "javascript", "shell", "rust"))
    assert model["default"] == "python3"
    assert list(model["kernelspecs"]) == ["python3", "javascript", "bash", "rust"]
    assert model["kernelspecs"]["bash"]["spec"]["language"] == "bash"
    only_js = kernelspecs_model(("javascript",))
    assert only_js["default"] == "javascript"


def test_find_spec() -> None:
    langs: tuple[Language, ...] = ("python", "shell")
    assert find_spec(None, langs).name == "python3"
    assert find_spec("", langs).name == "python3"
    assert find_spec("python", langs).language == "python"
    assert find_spec("bash", langs).language == "shell"
    with pytest.raises(NotFound, match="available: python3, bash"):
        find_spec("rust", langs)
    assert find_spec("bash", langs, aliases=False).name == "bash"
    with pytest.raises(NotFound, match="no such kernel 'python'"):
        find_spec("python", langs, aliases=False)
