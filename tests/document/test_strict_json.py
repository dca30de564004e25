"""``strict_json.loads``: what orjson accepts silently is refused, naming the property."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vesper.document import strict_json
from vesper.document.strict_json import INT_MAX, INT_MIN, loads
from vesper.errors import InvalidDocument


def refused(text: bytes | str) -> str:
    with pytest.raises(InvalidDocument) as info:
        loads(text, "request body")
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (b'{"a": 1, "a": 2}', "key 'a' appears twice"),
        (b'{"a": 1, "\\u0061": 2}', "key 'a' appears twice"),  # the same key, escaped
        (b'{"\\u00e9": 1, "\xc3\xa9": 2}', "key 'é' appears twice"),
        (b'{"a": {"b": 1}, "a": {"b": 1}}', "key 'a' appears twice"),  # equal values too
        (b'{"x": {"b": [{"a": 1, "a": 2}]}}', "key 'a' appears twice in the object at x.b[0]"),
        (b'[{"k": 1}, {"k": 1, "k": 2}]', "key 'k' appears twice in the object at [1]"),
        (b'{"a b": {"c": {"d": 0, "d": 0}}}', 'twice in the object at ["a b"].c'),
        # A ":" that orjson writes unescaped must not hide a dropped key.
        (b'{"a": "\\u003a", "a": 2}', "key 'a' appears twice"),
        (b'{"a": "\\u003A\\u003a", "b": 1, "b": 2}', "key 'b' appears twice"),
        (b'{"a": 1, "a": 2, "b": "x:y"}', "key 'a' appears twice"),
        (b'{"" : 1, "": 2}', "key '' appears twice"),
    ],
)
def test_duplicate_keys_are_refused_naming_the_object(text: bytes, where: str) -> None:
    message = refused(text)
    assert message.startswith("request body: ") and where in message


@pytest.mark.parametrize(
    ("number", "where"),
    [
        (2**70, "n: "),
        (2**63, "n: "),
        (2**64 - 1, "n: "),  # orjson reads it as an int: still out of the signed range
        (2**64, "n: "),
        (-(2**63) - 1, "n: "),
        (-(10**40), "n: "),
    ],
)
def test_integers_outside_the_signed_64_bit_range_are_refused(number: int, where: str) -> None:
    message = refused(b'{"n": ' + str(number).encode() + b"}")
    assert f"{where}integer {number} is outside the signed 64-bit range" in message


def test_the_path_to_a_big_integer_is_named() -> None:
    text = b'{"items": [{"n": 1}, {"n": 99999999999999999999}]}'
    assert "items[1].n: integer 99999999999999999999" in refused(text)
    assert refused(b"[1, 2, 36893488147419103232]").startswith(
        "request body: [2]: integer 36893488147419103232"
    )
    assert refused(b"-9223372036854775809").startswith("request body: integer -9223")


def test_the_limits_themselves_and_lookalikes_are_accepted() -> None:
    text = b'{"max": 9223372036854775807, "min": -9223372036854775808}'
    assert loads(text, "x") == {"max": INT_MAX, "min": INT_MIN}
    value = loads(
        b'{"s": "123456789012345678901234567890", "f": 12345678901234567890.5, '
        b'"e": 1e30, "g": 12345678901234567890e0, "h": -0.12345678901234567890123, '
        b'"k": "\\u0031234567890123456789012345"}',
        "x",
    )
    assert value["s"] == "123456789012345678901234567890"
    assert value["f"] == 12345678901234567890.5 and value["e"] == 1e30
    assert type(value["g"]) is float and value["h"] < 0
    # Keys that only look alike are different keys.
    lookalikes = b'{"a": 1, "A": 2, "a ": 3, "\\u00e9": 4, "e\\u0301": 5}'
    assert loads(lookalikes, "x") == {"a": 1, "A": 2, "a ": 3, "\u00e9": 4, "e\u0301": 5}
    # A backslash before "u003a" is not an escaped colon; still nothing repeated.
    assert loads(b'{"a": "\\\\u003a", "b": "\\\\u003A:"}', "x") == {
        "a": "\\u003a", "b": "\\u003A:",
    }  # fmt: skip


def test_what_is_not_json_is_refused_with_what_it_was() -> None:
    assert refused(b"") == "request body is empty: expected JSON"
    assert refused(b" \n ") == "request body is empty: expected JSON"
    assert refused(b"{nope").startswith("request body is not valid JSON: ")
    assert refused(b'{"a": NaN}').startswith("request body is not valid JSON: ")
    assert refused(b"\xff").startswith("request body is not valid JSON: ")
    assert "lone surrogate" in refused("\ud800")


def test_str_and_bytes_like_input() -> None:
    assert loads('{"é": 1}', "x") == {"é": 1}
    assert loads(bytearray(b"[1]"), "x") == [1]
    assert loads(memoryview(b'{"a": 2}'), "x") == {"a": 2}
    with pytest.raises(InvalidDocument, match="query parameter 'where': key 'a'"):
        loads('{"a": 1, "a": 1}', "query parameter 'where'")


def test_deep_nesting_is_handled_without_orjson_writing_it() -> None:
    # orjson reads 1024 levels but writes only 254: the slow path takes over.
    assert loads(b"[" * 300 + b"]" * 300, "x") is not None
    assert "twice" in refused(b"[" * 300 + b'{"a": 1, "a": 2}' + b"]" * 300)
    assert "deep" in refused(b"[" * 2000 + b"]" * 2000) or "JSON" in refused(
        b"[" * 2000 + b"]" * 2000
    )


keys = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(values, st.booleans())
def test_any_valid_json_reads_as_orjson_reads_it(value: Any, ascii_escapes: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_escapes).encode()
    assert loads(text, "x") == orjson.loads(text)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, min_size=1, max_size=4), st.data(), st.booleans())
def test_any_repeated_key_is_found(obj: dict[str, Any], data: Any, ascii_escapes: bool) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    pairs = [*obj.items(), (key, data.draw(values))]
    encoded = ", ".join(
        f"{json.dumps(k, ensure_ascii=ascii_escapes)}: {json.dumps(v, ensure_ascii=ascii_escapes)}"
        for k, v in data.draw(st.permutations(pairs))
    )
    wrapped = data.draw(st.sampled_from(["{}", '{{"outer": {}}}', "[1, {}]"]))
    assert "appears twice" in refused(wrapped.format("{" + encoded + "}").encode())


@settings(max_examples=200, deadline=None)
@given(st.integers(INT_MAX + 1, 2**200) | st.integers(-(2**200), INT_MIN - 1), values)
def test_any_integer_out_of_range_is_found(number: int, other: Any) -> None:
    text = json.dumps({"other": other, "n": number}).encode()
    assert f"integer {number} is outside" in refused(text)


digit_runs = st.lists(
    st.sampled_from(["1234567890123456789", "98765432109876543210", "0", "7", "-", "+"])
    | st.sampled_from([".", "e", "E", '"', "a", ":", ",", "[", "]", "}", " ", "\n", "é"]),
    max_size=12,
).map("".join)
long_ints = st.integers(-(2**80), 2**80) | st.integers(10**18, 10**21)
json_values = st.recursive(
    long_ints | st.floats(allow_nan=False, allow_infinity=False) | digit_runs,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(digit_runs, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(json_values, st.sampled_from([None, 0, 2]), st.booleans())
def test_the_long_integer_scan_finds_every_long_integer_of_valid_json(
    value: Any, indent: int | None, compact: bool
) -> None:
    separators = (",", ":") if compact else None
    raw = json.dumps(value, indent=indent, separators=separators, ensure_ascii=False).encode()
    zeros = raw.translate(strict_json._DIGITS_AS_ZEROS)
    integers = strict_json._LONG_INT.findall(strict_json._STRING.sub(b"", raw))
    found = strict_json._long_int_literals(raw, zeros)
    assert all(literal in found for literal in integers)


def test_digit_runs_beside_letters_or_quotes_are_not_taken_for_integers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A catch-up batch of hex hashes with 20-digit runs: read without the slow search.
    def no_slow_search(*_: Any) -> None:
        raise AssertionError("the text was searched again without its strings")

    monkeypatch.setattr(strict_json, "_out_of_range", lambda found: bool(found))
    monkeypatch.setattr(strict_json, "_find_problem", no_slow_search)
    text = orjson.dumps(
        [
            {"prev": "ab12345678901234567890cd", "n": 1},
            {"hash": "12345678901234567890123ef"},
            {"note": "-98765432109876543210x", "phone": "+12345678901234567890"},
        ]
    )
    assert loads(text, "x") == orjson.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        b"99999999999999999999",
        b"-99999999999999999999",
        b" 99999999999999999999\n",
        b"[99999999999999999999]",
        b'{"n":99999999999999999999}',
        b'{"n": -99999999999999999999 }',
        b"[1,\t99999999999999999999,2]",
        b"[1,\r\n-99999999999999999999]",
        # Beside a string holding a digit run that is ruled out, and one that is not.
        b'["ab99999999999999999999", 99999999999999999999]',
        b'["x, 99999999999999999999 ,", {"k": 99999999999999999999}]',
    ],
)
def test_an_integer_out_of_range_between_any_delimiters_is_refused(text: bytes) -> None:
    assert "integer -99999999999999999999 is outside" in refused(text) or (
        "integer 99999999999999999999 is outside" in refused(text)
    )


@pytest.mark.parametrize(
    "text",
    [
        # Nineteen digits and more in strings, in fractions and exponents: all accepted.
        b'{"prev": "ab99999999999999999999999cd", "n": 1}',
        b'["99999999999999999999"]',
        b"[0.99999999999999999999, 99999999999999999999.5, 1e-99999999999999999999]",
        b"[9223372036854775807, -9223372036854775808]",
    ],
)
def test_long_runs_of_digits_that_are_no_integer_out_of_range_are_accepted(text: bytes) -> None:
    assert loads(text, "x") == orjson.loads(text)


def test_an_integer_out_of_range_beside_a_long_run_in_a_string_is_refused() -> None:
    text = b'{"prev": "ab99999999999999999999999cd", "n": -9223372036854775809}'
    assert "integer -9223372036854775809 is outside" in refused(text)


def test_a_string_of_a_million_digits_is_accepted() -> None:
    # More digits than int() converts: the range check must not try.
    text = orjson.dumps({"s": "7" * 1_000_000, "t": "-" + "0" * 30 + "1"})
    assert loads(text, "x") == orjson.loads(text)
