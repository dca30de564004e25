"""What a Vesper document may contain, checked before anything is written."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from vesper.errors import InvalidDocument

MAX_ID_BYTES = 1024
MAX_DEPTH = 128
# The signed 64-bit range: what every node's JSON codec reads back as the same integer.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def check_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str):
        raise InvalidDocument(f"{what} must be a string, got {type(value).__name__}")
    if value == "":
        raise InvalidDocument(f"{what} must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidDocument(f"{what} {value[:40]!r} is not valid Unicode") from None
    if size > MAX_ID_BYTES:
        raise InvalidDocument(f"{what} is {size} bytes long; the limit is {MAX_ID_BYTES}")
    return value


def check_value(value: object, where: str, depth: int = 0) -> None:
    """Raise InvalidDocument unless ``value`` is plain JSON (finite numbers, str keys)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            raise InvalidDocument(f"{where}: integer {value} is outside the signed 64-bit range")
        return
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidDocument(f"{where}: {value} is not a JSON number (NaN and infinity)")
        return
    if depth >= MAX_DEPTH:
        raise InvalidDocument(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if t is dict:
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                raise InvalidDocument(f"{where}: object key {k!r} is not a string")
            check_value(v, f"{where}.{k}", depth + 1)
        return
    if t is list:
        for i, v in enumerate(value):  # type: ignore[arg-type]
            check_value(v, f"{where}[{i}]", depth + 1)
        return
    raise InvalidDocument(f"{where}: {t.__name__} is not a JSON value")


def normalize_numbers(value: Any) -> Any:
    """``value`` with every integral float in the 64-bit range turned into an int.

    JSON has one number type and its canonical form (RFC 8785) writes ``10.0`` as
    ``10``: without this, two copies of a changeset that differ only there would hash
    and verify the same yet store different values. After it, the canonical bytes of a
    value read back as exactly that value.
    """
    return map_floats(value, _integral_as_int)


def _integral_as_int(x: float) -> float | int:
    return int(x) if x.is_integer() and _INT_MIN <= x < 2.0**63 else x


def map_floats(value: Any, fn: Callable[[float], Any]) -> Any:
    """``value`` with ``fn`` applied to every float in it. Containers are copied only
    where something changed, so the common case (no float) costs one pass, no copy."""
    kind = type(value)
    if kind is float:
        return fn(value)
    if kind is dict:
        items = value.items()
    elif kind is list:
        items = enumerate(value)
    else:
        return value
    out = None
    for key, item in items:
        if type(item) in _SCALARS:
            continue
        fixed = map_floats(item, fn)
        if fixed is not item:
            if out is None:
                out = dict(value) if kind is dict else list(value)
            out[key] = fixed
    return value if out is None else out


_SCALARS = frozenset({str, int, bool, type(None)})


def check_document(doc: object, what: str = "document") -> dict[str, Any]:
    """Validate a whole document: a JSON object whose ``id`` (if present) is valid."""
    if type(doc) is not dict:
        raise InvalidDocument(f"{what} must be a JSON object, got {_json_type(doc)}")
    if "id" in doc:
        check_id(doc["id"], f"{what} id")
    for k, v in doc.items():
        if type(k) is not str:
            raise InvalidDocument(f"{what}: property name {k!r} is not a string")
        if k != "id":
            check_value(v, k, 1)
    return doc


def json_equal(a: object, b: object) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 and key order does not matter."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in (int, float) and tb in (int, float):
        return a == b
    if ta is not tb:
        return False
    if ta is dict:
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)  # type: ignore[index,attr-defined]
    if ta is list:
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b


def _json_type(value: object) -> str:
    names = {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
