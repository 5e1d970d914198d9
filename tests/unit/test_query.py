"""ws_sandbox.query: only the parameters an endpoint names, once; whole numbers in digits."""

from __future__ import annotations

import pytest

from ws_sandbox.exceptions import BadRequest
from ws_sandbox.query import check_params, whole_number


def test_the_parameters_an_endpoint_names_pass() -> None:
    check_params([("status", "error"), ("limit", "5")], ("status", "language", "limit"))
    check_params([], ())
    # A browser's cache buster, anywhere, even twice (a review: jQuery's cache: false).
    check_params([("_", "1732838400"), ("status", "error"), ("_", "2")], ("status",))


@pytest.mark.parametrize(("items", "message"), [
    ([("stauts", "error")], "unknown query parameter 'stauts'; this endpoint takes status,"
                            " limit"),
    ([("limit", "1"), ("limit", "2")], "query parameter 'limit' is given twice"),
    ([("", "x")], "unknown query parameter ''"),
])
def test_a_misspelt_or_repeated_parameter_is_refused_by_name(
        items: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_params(items, ("status", "limit"))
    assert str(refused.value.message).startswith(message)


def test_whole_numbers_are_ascii_digits() -> None:
    assert whole_number("limit", "30") == 30
    assert whole_number("limit", "007") == 7
    # int() took all of these: a sign, a space, an underscore, other scripts' digits.
    for raw in ("+3", " 3", "3 ", "3_0", "\uff11", "\u0663", "-1", "", "1e3", "0x10"):
        with pytest.raises(BadRequest, match="limit must be a whole number"):
            whole_number("limit", raw)
    with pytest.raises(BadRequest, match="at most 18 digits"):
        whole_number("limit", "9" * 5000)  # int() refuses past 4,300 digits: no 500
    assert whole_number("limit", "0" * 30 + "1") == 1  # leading zeros are no digits of it
