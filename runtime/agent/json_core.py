"""JSON for the agent and the Python worker, through json's C core (``_json``).

Both processes start with every sandbox. ``import json`` costs each of them milliseconds of CPU
(it imports re, which imports enum, functools and collections); the C scanner and encoder
that json itself uses cost nothing to load. :func:`dumps` and :func:`loads` behave as
``json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)`` and
``json.loads`` with NaN and the infinities refused (tests/unit/test_agent_startup.py holds
them to that). Standard library only; runs on Debian bookworm's python3.11.
"""

from __future__ import annotations

from _json import encode_basestring, encode_basestring_ascii, make_encoder, make_scanner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _unserializable(obj: object) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


class _ScanContext:
    """What ``_json.make_scanner`` reads: the settings of ``json.loads`` with NaN and the
    infinities refused."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_reject_constant)


_scan = make_scanner(_ScanContext())  # type: ignore[arg-type]
_encode = make_encoder(None, _unserializable, encode_basestring, None, ":", ",", False, False,
                       False)
_encode_ascii = make_encoder(None, _unserializable, encode_basestring_ascii, None, ":", ",",
                             False, False, False)
_JSON_SPACE = " \t\n\r"


def dumps(obj: dict[str, Any]) -> str:
    """``json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)``.

    Raises:
        ValueError: For NaN or an infinity.
        TypeError: For a value JSON has no type for.
    """
    return "".join(_encode(obj, 0))


def dumps_ascii(obj: dict[str, Any]) -> str:
    """Like :func:`dumps`, with every non-ASCII character escaped (lone surrogates too)."""
    return "".join(_encode_ascii(obj, 0))


def loads(text: str) -> Any:
    """``json.loads(text)`` that refuses NaN and the infinities.

    Raises:
        ValueError: If ``text`` is not one JSON value (``json.JSONDecodeError`` for errors
            inside it).
        RecursionError: If it nests too deeply.
    """
    text = text.strip(_JSON_SPACE)
    try:
        try:
            obj, end = _scan(text, 0)
        except SystemError:
            # _json raises json.decoder's JSONDecodeError, which it looks up in sys.modules
            # without importing it (SystemError when absent): load it and scan again. Only
            # malformed JSON pays for the import.
            import json.decoder  # noqa: F401

            obj, end = _scan(text, 0)
    except StopIteration as exc:
        raise ValueError(f"expecting a JSON value at character {exc.value}") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return obj
