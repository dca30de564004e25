"""JSON text to Python values, refusing what orjson accepts silently.

orjson keeps the last of two equal keys in an object and turns an integer beyond the
64-bit range into a float; either way the value stored would not be the one sent.
``loads`` refuses both: integers outside the signed 64-bit range (the range every
node's codec round-trips) and objects with a key given twice (after unescaping, so
``"a"`` and ``"\\u0061"`` are the same key).

The fast path is orjson plus a few C-speed scans of the text, so valid input costs
little more than ``orjson.loads``. Only when a scan finds something suspicious is the
text parsed again with the standard library, slowly, to name the property at fault.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from vesper.errors import InvalidDocument

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

#: Every digit mapped to "0", so one substring search finds nineteen digits in a row:
#: the shortest run that can spell an integer out of range (2**63 has 19 digits). It
#: also finds digits in strings and fractions; the exact check sorts those out. (Six
#: times faster than searching for ``[0-9]{19}`` with a regular expression.)
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_ZEROS = b"0" * 19
#: A JSON string literal, escapes included.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
#: An integer literal of 19 or more digits, once strings are removed: not part of a
#: fraction or an exponent, and not followed by one.
_LONG_INT = re.compile(rb"(?<![0-9.eE+-])-?[0-9]{19,}(?![0-9.eE])")
#: What stands before and after a number in JSON text: structure or whitespace. A run
#: of digits with anything else beside it (a letter of a hex hash, a quote, a fraction's
#: point, an exponent) is in a string or no integer.
_BEFORE_NUMBER = frozenset(b"[:, \t\n\r")
_AFTER_NUMBER = frozenset(b",]} \t\n\r")
#: In the text with every digit a "0": where a run of digits ends (a megabyte of digits
#: in a string must not cost a Python loop over each).
_NOT_A_DIGIT = re.compile(rb"[^0]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def loads(data: bytes | bytearray | memoryview | str, what: str) -> Any:
    """The value of the JSON text ``data``; InvalidDocument naming the problem if it is
    not JSON, has a duplicate key or an integer outside -2**63 .. 2**63-1.

    ``what`` names the text in messages: ``"request body"``, ``"query parameter 'where'"``.
    """
    raw = data if type(data) is bytes else _as_bytes(data, what)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if not raw.strip():
            raise InvalidDocument(f"{what} is empty: expected JSON") from None
        raise InvalidDocument(f"{what} is not valid JSON: {exc}") from None
    # Duplicate keys. Outside strings a ":" appears once per key; orjson writes one per
    # key it kept and never escapes a ":" in a string, so the counts match unless a key
    # was dropped. The one difference without a dropped key: a "\u003a" in the input
    # comes out as ":", so those are counted in. ("\\u003a", a backslash and "u003a",
    # is counted too: that can only send a valid text to the slow path, never hide a
    # duplicate.)
    colons = raw.count(b":")
    if colons:
        if b"\\" in raw:
            colons += raw.count(b"\\u003a") + raw.count(b"\\u003A")
        try:
            suspicious = orjson.dumps(value).count(b":") != colons
        except orjson.JSONEncodeError:
            suspicious = True  # nested deeper than orjson writes: the slow path decides
        if suspicious:
            _find_problem(raw, what)
    # Integers out of range: orjson reads them as floats (or, up to 2**64-1, as ints).
    zeros = raw.translate(_DIGITS_AS_ZEROS)
    if _NINETEEN_ZEROS in zeros and _has_long_int_out_of_range(raw, zeros):
        _find_problem(raw, what)
    return value


def _as_bytes(data: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidDocument(f"{what} is not valid Unicode (a lone surrogate)") from None
    return bytes(data)


def _out_of_range(literals: list[bytes]) -> bool:
    # By length first: int() refuses more than 4,300 digits, which a string may hold.
    for text in literals:
        digits = len(text.lstrip(b"-").lstrip(b"0"))
        if digits > 19 or (digits == 19 and not INT_MIN <= int(text) <= INT_MAX):
            return True
    return False


def _long_int_literals(raw: bytes, zeros: bytes) -> list[bytes]:
    """The runs of nineteen digits or more in ``raw`` that can be integers of valid JSON
    text (which orjson has accepted), from the runs that ``zeros`` (``raw`` with every
    digit a "0") shows: those standing between structure or whitespace, as every number
    does. Most texts with such a run have one or two, in strings (a changeset's hex
    hashes hold one about once in 150), and their neighbours rule them out: a few
    ``find`` calls, where the regular expression tries every position of a large
    catch-up batch (a fifth of its apply time), and no search without the strings
    unless a run could be a number out of range."""
    found = []
    at = zeros.find(_NINETEEN_ZEROS)
    while at >= 0:
        other = _NOT_A_DIGIT.search(zeros, at + 19)
        end = len(zeros) if other is None else other.start()
        start = at - 1 if at and raw[at - 1] == 0x2D else at  # a minus sign
        if (not start or raw[start - 1] in _BEFORE_NUMBER) and (
            end == len(raw) or raw[end] in _AFTER_NUMBER
        ):
            found.append(raw[start:end])
        at = zeros.find(_NINETEEN_ZEROS, end)
    return found


def _has_long_int_out_of_range(raw: bytes, zeros: bytes) -> bool:
    # In valid JSON a number never touches a string (a ":" or "," is between them), so
    # searching the raw text finds every long integer, and maybe digits in strings;
    # only if one of those is out of range are the strings removed to look again.
    if not _out_of_range(_long_int_literals(raw, zeros)):
        return False
    return b'"' not in raw or _out_of_range(_LONG_INT.findall(_STRING.sub(b"", raw)))


class _Repeated(dict):  # type: ignore[type-arg]
    """An object in which ``key`` was given more than once."""

    key: str


class _OutOfRange(int):
    """An integer literal outside the signed 64-bit range."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    repeated = _Repeated(obj)
    for key, _ in pairs:
        if key in seen:
            repeated.key = key
            break
        seen.add(key)
    return repeated


def _parse_int(text: str) -> int:
    value = int(text)
    return value if INT_MIN <= value <= INT_MAX else _OutOfRange(value)


def _find_problem(raw: bytes, what: str) -> None:
    """Parse again with the standard library and raise InvalidDocument naming the first
    repeated key or out-of-range integer; return if there is none (a false alarm)."""
    try:
        value = json.loads(raw, object_pairs_hook=_pairs, parse_int=_parse_int)
    except RecursionError:
        raise InvalidDocument(f"{what} is nested too deeply") from None
    except ValueError as exc:  # orjson accepted it: this should not happen
        raise InvalidDocument(f"{what} is not valid JSON: {exc}") from None
    try:
        _walk(value, [], what)
    except RecursionError:
        raise InvalidDocument(f"{what} is nested too deeply") from None


def _walk(value: Any, path: list[str | int], what: str) -> None:
    # Depth-first in document order, so the first problem in the text is reported.
    if isinstance(value, dict):
        if isinstance(value, _Repeated):
            where = f" in the object at {_path(path)}" if path else ""
            raise InvalidDocument(f"{what}: key {value.key!r} appears twice{where}")
        for key, item in value.items():
            path.append(key)
            _walk(item, path, what)
            path.pop()
    elif isinstance(value, list):
        for index, item in enumerate(value):
            path.append(index)
            _walk(item, path, what)
            path.pop()
    elif isinstance(value, _OutOfRange):
        where = f"{_path(path)}: " if path else ""
        raise InvalidDocument(
            f"{what}: {where}integer {int(value)} is outside the signed 64-bit range "
            f"({INT_MIN} to {INT_MAX})"
        )


def _path(path: list[str | int]) -> str:
    """``items[0].name``; keys that are not plain names are quoted: ``["a b"]``."""
    parts: list[str] = []
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _IDENTIFIER.fullmatch(step):
            parts.append(f".{step}" if parts else step)
        else:
            parts.append(f"[{json.dumps(step, ensure_ascii=False)}]")
    return "".join(parts)
