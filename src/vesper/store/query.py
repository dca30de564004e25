"""Streaming object queries: sorted by id, equality filters, keyset paging."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from vesper.document.values import check_value, json_equal
from vesper.errors import InvalidDocument
from vesper.history.revision import format_revision
from vesper.merge.register import ObjectState
from vesper.storage.database import Database

PAGE_ROWS = 500


@dataclass(frozen=True, slots=True)
class Where:
    """Top-level property equality tests, all of which must hold."""

    items: tuple[tuple[str, Any], ...] = ()

    def matches(self, doc: Mapping[str, Any]) -> bool:
        return all(k in doc and json_equal(doc[k], v) for k, v in self.items)


def parse_where(where: Mapping[str, Any] | None) -> Where:
    if where is None:
        return Where()
    if not isinstance(where, Mapping):
        raise InvalidDocument(f"where must be a JSON object, got {type(where).__name__}")
    for key, value in where.items():
        if type(key) is not str:
            raise InvalidDocument(f"where: property name {key!r} is not a string")
        check_value(value, f"where.{key}", 1)
    return Where(tuple(where.items()))


def _prefilter(where: Where) -> tuple[str, list[Any]]:
    """SQL conditions that narrow the scan; the exact JSON comparison runs in Python."""
    sql: list[str] = []
    params: list[Any] = []
    for key, value in where.items:
        if '"' in key or "\\" in key:
            continue
        path = f'$."{key}"'
        if type(value) is bool:
            sql.append("json_type(doc, ?) = ?")
            params += [path, "true" if value else "false"]
        elif value is None:
            sql.append("json_type(doc, ?) = 'null'")
            params.append(path)
        elif type(value) is int and not -(2**63) <= value < 2**63:
            continue  # beyond SQLite's INTEGER: compared in Python only
        elif type(value) in (str, int, float):
            sql.append("json_extract(doc, ?) = ?")
            params += [path, value]
    return "".join(f" AND {c}" for c in sql), params


def iter_objects(
    db: Database,
    where: Where,
    limit: int | None = None,
    after: str | None = None,
    conflicted: bool = False,
    with_conflicts: bool = False,
) -> tuple[str, Iterator[str]]:
    """The revision of one snapshot, and its live objects' JSON text in id order, a page
    at a time. The snapshot (a read transaction) is open from this call until the
    iterator is exhausted or closed. ``conflicted``: only objects with a conflict;
    ``with_conflicts``: each as ``{"object", "conflicts"}`` (``ObjectState.conflicts``)."""
    if limit is not None and (type(limit) is not int or limit < 0):
        raise InvalidDocument(f"limit must be a non-negative integer, got {limit!r}")
    if after is not None and not isinstance(after, str):
        raise InvalidDocument(f"after must be a string id, got {type(after).__name__}")
    rows = _iter(db, where, limit, after or "", conflicted, with_conflicts)
    revision = next(rows)
    return revision, rows


def with_conflicts_json(obj_id: str, doc: str, state: str, conflicted: int) -> str:
    """``{"object": <doc>, "conflicts": [...]}`` as JSON text."""
    found = ObjectState.load(obj_id, doc, state).conflicts() if conflicted else []
    return orjson.dumps({"object": orjson.Fragment(doc), "conflicts": found}).decode()


def _iter(
    db: Database,
    where: Where,
    limit: int | None,
    after: str,
    conflicted: bool,
    with_conflicts: bool,
) -> Iterator[str]:
    extra_sql, extra_params = _prefilter(where)
    if conflicted:
        extra_sql += " AND conflicted = 1"
    sql = (
        f"SELECT id, doc, state, conflicted FROM objects WHERE live = 1 AND id > ?{extra_sql} "
        f"ORDER BY id LIMIT {PAGE_ROWS}"
    )
    with db.snapshot() as reader:
        state = reader.fetch("SELECT value FROM meta WHERE key = 'state'")
        yield format_revision(orjson.loads(state[0][0])["vv"]) if state else ""
        remaining = limit
        if remaining == 0:
            return
        while True:
            rows = reader.fetch(sql, [after, *extra_params])
            for obj_id, doc, state, has_conflict in rows:
                if where.items and not where.matches(orjson.loads(doc)):
                    continue
                yield (
                    with_conflicts_json(obj_id, doc, state, has_conflict) if with_conflicts else doc
                )
                if remaining is not None:
                    remaining -= 1
                    if remaining == 0:
                        return
            if len(rows) < PAGE_ROWS:
                return
            after = rows[-1][0]
