"""``ws_sandbox.frames``: what a malformed client frame raises."""

from __future__ import annotations

import pytest

from ws_sandbox import frames as fr
from ws_sandbox.exceptions import BadRequest


@pytest.mark.parametrize(("data", "words"), [
    ("not json", "invalid frame: JSON is malformed"),
    ('{"type": "execute", "id": "c1"}', "missing required field `code`"),
    # msgspec raises RecursionError, not DecodeError, for JSON nested about 1,000 deep
    ('{"type": "interrupt", "x": ' + "[" * 2000 + "]" * 2000 + "}",
     "invalid frame: maximum recursion depth exceeded"),
    # a binary frame: msgspec raises UnicodeDecodeError for bad UTF-8 inside a string
    (b'{"type": "execute", "id": "c1", "code": "print(1)#\xff"}',
     "invalid frame: 'utf-8' codec can't decode byte 0xff"),
])
def test_a_malformed_client_frame_is_a_bad_request(data: str | bytes, words: str) -> None:
    with pytest.raises(BadRequest) as refused:
        fr.decode_client(data)
    assert words in str(refused.value)
