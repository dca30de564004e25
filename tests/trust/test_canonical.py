"""The canonical encoding against the reference implementation, and the hash chain."""

from __future__ import annotations

import math

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from vesper.trust.canonical import canonical, es_number

SAFE = 2**53 - 1

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-SAFE, SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=500)
@given(json_values)
def test_canonical_equals_the_rfc8785_reference(value: object) -> None:
    assert canonical(value) == rfc8785.dumps(value)


@settings(max_examples=300)
@given(json_values)
def test_canonical_form_does_not_depend_on_key_order_or_reencoding(value: object) -> None:
    again = orjson.loads(orjson.dumps(value))
    assert canonical(again) == canonical(value)
    if isinstance(value, dict):
        assert canonical(dict(reversed(list(value.items())))) == canonical(value)


@settings(max_examples=2000)
@given(
    st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=1e-5, max_value=1e17)
    | st.floats(min_value=-1e17, max_value=-1e-5)
    | st.sampled_from([1e-4, 1e16, 9999999999999998.0, 0.00009999999999999999, 2.0, -0.0])
)
def test_floats_written_by_orjson_directly_are_canonical(x: float) -> None:
    """Whole-number floats and those outside 1e-4..1e16 take the slow path; the rest
    are written as orjson writes them, which must be JCS's text."""
    assert canonical(x) == rfc8785.dumps(x)
    assert canonical({"k": [x, {"x": x}]}) == rfc8785.dumps({"k": [x, {"x": x}]})


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_read_back_as_the_same_double(x: float) -> None:
    assert float(es_number(x)) == x or (x == 0 and es_number(x) == b"0")


def test_integers_beyond_2_53_are_written_exactly() -> None:
    # JCS has no form for them (rfc8785 refuses); changesets carry 64-bit clocks.
    assert canonical({"hlc": 2**62 + 1}) == b'{"hlc":%d}' % (2**62 + 1)
    with pytest.raises(rfc8785.IntegerDomainError):
        rfc8785.dumps(2**62 + 1)


def test_keys_sort_by_utf16_code_units() -> None:
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    assert canonical(value) == rfc8785.dumps(value)
    assert canonical(value).index("\U0001f600".encode()) < canonical(value).index("\ue000".encode())


def test_non_finite_numbers_have_no_canonical_form() -> None:
    with pytest.raises(ValueError):
        canonical({"x": math.inf})
