"""``ws_sandbox.frames``: what a malformed client frame raises."""

from __future__ import annotations

import json

import pytest

from ws_sandbox import frames as fr
from ws_sandbox.exceptions import BadRequest


@pytest.mark.parametrize(("data", "words"), [
    ("not json", "invalid frame: JSON is malformed"),
    ('{"type": "execute", "id": "c1"}', "missing required field `code`"),
    # msgspec raises RecursionError, not DecodeError, for JSON nested about 1,000 deep
    # (the unknown field comes before the tag, so that it is skipped, not refused)
    ('{"x": ' + "[" * 2000 + "]" * 2000 + ', "type": "interrupt"}',
     "invalid frame: maximum recursion depth exceeded"),
    # A field the service does not know is refused, not ignored (a misspelt timeout).
    ('{"type": "execute", "id": "c1", "code": "1", "timout": 5}',
     "invalid frame: Object contains unknown field `timout`"),
    ('{"type": "interrupt", "now": true}', "invalid frame: Object contains unknown field"),
    # a binary frame: msgspec raises UnicodeDecodeError for bad UTF-8 inside a string
    (b'{"type": "execute", "id": "c1", "code": "print(1)#\xff"}',
     "invalid frame: 'utf-8' codec can't decode byte 0xff"),
    # A lone UTF-16 surrogate escape is valid JSON but not Unicode; msgspec called the
    # first "Input data was truncated" (a review).
    ('{"type": "execute", "id": "c1", "code": "\\ud800x"}',
     "invalid frame: JSON is malformed: a \\u escape is half of a UTF-16 surrogate pair"),
    ('{"type": "execute", "id": "c1", "code": "\\udc00"}', "without the other half"),
    ('{"type": "execute", "id": "c1", "code": "\\ud800\\ud800"}', "(such as \\ud800 alone)"),
    # a real truncation is still called one
    ('{"type": "execute", "id": "c1", "code": "\\ud800', "Input data was truncated"),
])
def test_a_malformed_client_frame_is_a_bad_request(data: str | bytes, words: str) -> None:
    with pytest.raises(BadRequest) as refused:
        fr.decode_client(data)
    assert words in str(refused.value)


@pytest.mark.parametrize("max_code_bytes", [1, 1000, 1024 * 1024, 16 * 1024 * 1024])
@pytest.mark.parametrize("char", ["\x1b", "\u00e9", "\u4e2d", "\U0001f600", "a"])
def test_code_of_the_maximum_size_fits_the_message_limit(max_code_bytes: int, char: str
                                                         ) -> None:
    """However a client's encoder escapes it (Python's json.dumps: ASCII only)."""
    code = char * (max_code_bytes // len(char.encode()))
    frame = json.dumps({"type": "execute", "id": "\x01" * 128, "code": code,
                        "timeout": 1.0000000000000002})
    assert len(frame.encode()) <= fr.ws_message_limit(max_code_bytes)
    assert fr.ws_message_limit(max_code_bytes) <= fr.MAX_WS_MESSAGE
    body = json.dumps({"language": "python", "code": code, "timeout": 1.5})
    assert len(body.encode()) <= fr.message_limit(max_code_bytes)


def test_a_surrogate_pair_escape_is_one_character() -> None:
    frame = fr.decode_client('{"type": "execute", "id": "c1", "code": "\\ud83d\\ude00"}')
    assert isinstance(frame, fr.Execute) and frame.code == "\U0001f600"


@pytest.mark.parametrize("data", ['\ufeff{"type": "interrupt"}',
                                  b'\xef\xbb\xbf{"type": "interrupt"}'])
def test_a_byte_order_mark_is_named(data: str | bytes) -> None:
    """msgspec says "invalid character (byte 0)" of a byte order mark, which some editors
    and Windows tools write first (a review): the message names it."""
    with pytest.raises(BadRequest) as refused:
        fr.decode_client(data)
    assert "starts with a byte order mark (EF BB BF)" in str(refused.value)
    with pytest.raises(BadRequest) as other:
        fr.decode_client('x{"type": "interrupt"}')
    assert "byte order mark" not in str(other.value)


def test_a_field_named_like_msgspecs_words_is_not_taken_for_a_surrogate() -> None:
    with pytest.raises(BadRequest) as refused:
        fr.decode_client('{"type": "execute", "id": "c1", "truncated": 1, "code": "\\ud800"}')
    assert "unknown field `truncated`" in str(refused.value)


@pytest.mark.parametrize("size", [fr.LENIENT_ID_CHARS, 6 * 1024 * 1024])
def test_a_refused_frame_is_parsed_again_only_when_small(
        monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """A refused frame's id is looked for with Python's json (which takes a lone surrogate
    escape) only up to LENIENT_ID_CHARS: a 6 MiB frame parsed again held the service's loop
    for most of a second (a review). Its message is told from msgspec's words alone."""
    parsed: list[int] = []
    real = json.loads

    def counting(data: str | bytes) -> object:
        parsed.append(len(data))
        return real(data)

    monkeypatch.setattr(json, "loads", counting)  # the module frames uses
    head = '{"type": "execute", "id": "c1", "code": "\\ud800", "pad": ['
    frame = head + "[]," * ((size - len(head) - 4) // 3) + "[]]}"
    frame += " " * (size - len(frame))
    assert len(frame) == size
    with pytest.raises(BadRequest) as refused:
        fr.decode_client(frame)
    assert "half of a UTF-16 surrogate pair" in str(refused.value)
    small = size <= fr.LENIENT_ID_CHARS
    assert fr.cell_id_of(frame) == ("c1" if small else None)
    assert parsed == ([size] if small else [])
