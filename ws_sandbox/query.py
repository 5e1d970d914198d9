"""Query strings: an endpoint takes the parameters it names, each once, and nothing else.

A misspelt parameter was ignored: ``?lang=javascript`` opened a Python session, and
``?stauts=error`` listed every execution (a review). Frames refuse the fields they do not
name (protocol/spec.md); so do the query strings of the endpoints that take one. Whole
numbers are ASCII digits alone, as settings are: ``int()`` also took ``+3``, ``3_0`` and
other scripts' digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ws_sandbox.exceptions import BadRequest, quoted

_DIGITS = re.compile(r"[0-9]+")
MAX_DIGITS = 18


#: Taken by every endpoint that checks its parameters, and ignored: a browser's cache
#: buster (jQuery's ``cache: false`` adds ``_=<time>``).
IGNORED = ("_",)


def check_params(items: Iterable[tuple[str, str]], allowed: tuple[str, ...]) -> None:
    """Refuse a parameter that is not one of ``allowed`` (nor :data:`IGNORED`), or one of
    them given twice.

    Raises:
        BadRequest: naming the parameter and the ones this endpoint takes.
    """
    seen: set[str] = set()
    for name, _ in items:
        if name in IGNORED:
            continue
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "none"
            raise BadRequest(f"unknown query parameter {quoted(name)}; this endpoint takes"
                             f" {takes}")
        if name in seen:
            raise BadRequest(f"query parameter {quoted(name)} is given twice")
        seen.add(name)


def whole_number(name: str, raw: str) -> int:
    """``raw`` as a whole number of ASCII digits.

    Raises:
        BadRequest: naming the parameter and what it was.
    """
    if not _DIGITS.fullmatch(raw):
        raise BadRequest(f"{name} must be a whole number, not {quoted(raw)}")
    if len(raw.lstrip("0")) > MAX_DIGITS:  # int() refuses past 4,300 digits; no bound is near
        raise BadRequest(f"{name} must be a whole number of at most {MAX_DIGITS} digits, not"
                         f" {quoted(raw)}")
    return int(raw)
