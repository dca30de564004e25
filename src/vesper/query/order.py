"""Sorting by properties, keyset cursors and field projection for queries.

Values of different types sort in one total order: missing, null, booleans, numbers,
strings, then arrays and objects (by their JSON text); numbers numerically, strings by
code point. Ties are broken by id, so the order is total and a cursor (the sort values
and id of the last object of a page) picks up exactly after it: objects inserted or
deleted meanwhile never shift the others, as an offset would.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from vesper.errors import InvalidDocument
from vesper.query.expression import ABSENT, resolve

MAX_SORT_KEYS = 8
MAX_FIELDS = 100
_ABSENT_MARK = {"$absent": True}


@dataclass(frozen=True, slots=True)
class SortKey:
    path: tuple[str, ...]
    descending: bool


def parse_sort(text: str) -> tuple[SortKey, ...]:
    """``price,-name``: ascending by price, then descending by name."""
    keys = []
    for part in text.split(","):
        descending = part.startswith("-")
        name = part[1:] if descending else part
        path = tuple(name.split("."))
        if not name or any(not p for p in path):
            raise InvalidDocument(f"sort: {part!r} is not a property path (a.b, -a for descending)")
        keys.append(SortKey(path, descending))
    if len(keys) > MAX_SORT_KEYS:
        raise InvalidDocument(f"sort: at most {MAX_SORT_KEYS} keys")
    return tuple(keys)


def rank(value: Any) -> tuple[Any, ...]:
    """A value's place in the total order."""
    if value is ABSENT:
        return (0,)
    kind = type(value)
    if value is None:
        return (1,)
    if kind is bool:
        return (2, value)
    if kind in (int, float):
        return (3, value)
    if kind is str:
        return (4, value)
    return (5, orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


@functools.total_ordering
class _Reversed:
    __slots__ = ("key",)

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.key == other.key

    def __lt__(self, other: _Reversed) -> bool:
        return other.key < self.key

    def __hash__(self) -> int:
        return hash(self.key)


def order_key(values: list[Any], keys: tuple[SortKey, ...], obj_id: str) -> tuple[Any, ...]:
    ranked = (rank(v) for v in values)
    return (
        *(_Reversed(r) if k.descending else r for r, k in zip(ranked, keys, strict=True)),
        obj_id,
    )


def sort_values(doc: Mapping[str, Any], keys: tuple[SortKey, ...]) -> list[Any]:
    return [resolve(doc, k.path) for k in keys]


def cursor(values: list[Any], obj_id: str) -> str:
    """The opaque token naming a place in a sorted listing."""
    plain = [_ABSENT_MARK if v is ABSENT else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps([plain, obj_id])).decode().rstrip("=")


def read_cursor(token: str, keys: tuple[SortKey, ...]) -> tuple[list[Any], str]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        values, obj_id = data
        if type(values) is not list or len(values) != len(keys) or type(obj_id) is not str:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidDocument(
            "after: not a cursor of this sort (pass the 'next' of the previous page)"
        ) from None
    return [ABSENT if v == _ABSENT_MARK else v for v in values], obj_id


def parse_fields(text: str) -> tuple[tuple[str, ...], ...]:
    fields = []
    for name in text.split(","):
        path = tuple(name.split("."))
        if not name or any(not p for p in path):
            raise InvalidDocument(f"fields: {name!r} is not a property path")
        fields.append(path)
    if len(fields) > MAX_FIELDS:
        raise InvalidDocument(f"fields: at most {MAX_FIELDS}")
    return tuple(fields)


def project(doc: Mapping[str, Any], fields: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """``doc`` with only ``id`` and these paths (nested objects kept as far as needed)."""
    out: dict[str, Any] = {"id": doc["id"]}
    for path in fields:
        value = resolve(doc, path)
        if value is ABSENT:
            continue
        target = out
        for name in path[:-1]:
            target = target.setdefault(name, {})
            if type(target) is not dict:
                break  # a shorter path in the fields has the whole value already
        else:
            target[path[-1]] = value
    return out
