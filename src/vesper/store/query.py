"""Object queries: streamed in id order, or sorted and projected; keyset paging."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from vesper.errors import InvalidDocument
from vesper.history.revision import format_revision
from vesper.merge.register import ObjectState
from vesper.query.expression import EVERYTHING, Condition, Expr, conjuncts, parse
from vesper.query.order import SortKey, cursor, order_key, project, read_cursor, sort_values
from vesper.query.planner import Planner
from vesper.storage.database import Database, Reader

PAGE_ROWS = 500


def parse_where(where: Mapping[str, Any] | None) -> Expr:
    """The expression of a ``where`` object (docs/queries.md); None: everything."""
    return EVERYTHING if where is None else parse(where)


def _prefilter(where: Expr) -> tuple[str, list[Any]]:
    """SQL conditions that narrow the scan (equality on a path, told apart by JSON type
    because SQLite's json_extract reads true as 1); the exact test runs in Python."""
    sql: list[str] = []
    params: list[Any] = []
    for term in conjuncts(where):
        if not isinstance(term, Condition) or term.op != "$eq":
            continue
        if any('"' in name or "\\" in name for name in term.path):
            continue
        path = "$" + "".join(f'."{name}"' for name in term.path)
        value = term.operand
        if type(value) is bool:
            sql.append("json_type(doc, ?) = ?")
            params += [path, "true" if value else "false"]
        elif value is None:
            sql.append("json_type(doc, ?) = 'null'")
            params.append(path)
        elif type(value) is int and not -(2**63) <= value < 2**63:
            continue  # beyond SQLite's INTEGER: compared in Python only
        elif type(value) is str:
            sql.append("json_type(doc, ?) = 'text' AND json_extract(doc, ?) = ?")
            params += [path, path, value]
        elif type(value) in (int, float):
            sql.append("json_type(doc, ?) IN ('integer', 'real') AND json_extract(doc, ?) = ?")
            params += [path, path, value]
    return "".join(f" AND {c}" for c in sql), params


def iter_objects(
    db: Database,
    where: Expr,
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
    found = _conflicts_of(obj_id, doc, state, conflicted)
    return orjson.dumps({"object": orjson.Fragment(doc), "conflicts": found}).decode()


def _conflicts_of(obj_id: str, doc: str, state: str, conflicted: int) -> list[dict[str, Any]]:
    return ObjectState.load(obj_id, doc, state).conflicts() if conflicted else []


def _revision(reader: Reader) -> str:
    """The store's revision as this snapshot sees it."""
    state = reader.fetch("SELECT value FROM meta WHERE key = 'state'")
    return format_revision(orjson.loads(state[0][0])["vv"]) if state else ""


def _rows(
    reader: Reader, where: Expr, conflicted: bool, after: str = ""
) -> Iterator[tuple[str, str, str, int]]:
    """``(id, doc, state, conflicted)`` of the live objects after ``after`` in id order,
    a page at a time, narrowed by SQL where it can be (``_prefilter``)."""
    extra_sql, extra_params = _prefilter(where)
    if conflicted:
        extra_sql += " AND conflicted = 1"
    sql = (
        f"SELECT id, doc, state, conflicted FROM objects WHERE live = 1 AND id > ?{extra_sql} "
        f"ORDER BY id LIMIT {PAGE_ROWS}"
    )
    while True:
        rows = reader.fetch(sql, [after, *extra_params])
        yield from rows
        if len(rows) < PAGE_ROWS:
            return
        after = rows[-1][0]


def _iter(
    db: Database,
    where: Expr,
    limit: int | None,
    after: str,
    conflicted: bool,
    with_conflicts: bool,
) -> Iterator[str]:
    with db.snapshot() as reader:
        yield _revision(reader)
        remaining = limit
        if remaining == 0:
            return
        for obj_id, doc, state, has_conflict in _rows(reader, where, conflicted, after):
            if where is not EVERYTHING and not where.matches(orjson.loads(doc)):
                continue
            yield with_conflicts_json(obj_id, doc, state, has_conflict) if with_conflicts else doc
            if remaining is not None:
                remaining -= 1
                if remaining == 0:
                    return


@dataclass(frozen=True, slots=True)
class Query:
    """A listing that is not streamed in id order: sorted, projected, counted or
    explained (docs/queries.md)."""

    where: Expr = EVERYTHING
    sort: tuple[SortKey, ...] = ()
    fields: tuple[tuple[str, ...], ...] | None = None
    limit: int = 1_000
    after: str | None = None
    """The last id of the previous page, or with ``sort`` its ``next`` cursor."""
    count: bool = False
    explain: bool = False
    conflicted: bool = False
    with_conflicts: bool = False


def run_query(db: Database, query: Query, planner: Planner | None = None) -> dict[str, Any]:
    """``{"results", "revision", "next"}`` (or ``{"count", "revision"}``), from one
    snapshot, plus ``explain``: which index served it and how many objects were read."""
    keys = query.sort
    after_key: tuple[Any, ...] | None = None
    if query.after is not None:
        if keys:
            values, obj_id = read_cursor(query.after, keys)
            after_key = order_key(values, keys, obj_id)
        else:
            after_key = (query.after,)
    chosen: list[tuple[tuple[Any, ...], str, str, str, int]] = []
    matched = read = 0
    with db.snapshot() as reader:
        revision = _revision(reader)
        plan = planner.plan(reader, query.where) if planner is not None else None
        rows = (
            plan.rows(reader) if plan is not None else _rows(reader, query.where, query.conflicted)
        )
        for obj_id, text, obj_state, has_conflict in rows:
            read += 1
            if query.conflicted and not has_conflict:
                continue
            doc = orjson.loads(text)
            if not query.where.matches(doc):
                continue
            matched += 1
            if query.count:
                continue
            key = order_key(sort_values(doc, keys), keys, obj_id) if keys else (obj_id,)
            if after_key is not None and key <= after_key:
                continue
            chosen.append((key, obj_id, text, obj_state, has_conflict))
            if len(chosen) > 2 * query.limit:  # bounded memory: keep the best so far
                chosen = heapq.nsmallest(query.limit + 1, chosen, key=lambda c: c[0])
    answer: dict[str, Any]
    if query.count:
        answer = {"count": matched, "revision": revision}
    else:
        page = heapq.nsmallest(query.limit + 1, chosen, key=lambda c: c[0])
        more = len(page) > query.limit
        page = page[: query.limit]
        results = [_shape(query, *item[1:]) for item in page]
        last = page[-1] if page and more else None
        answer = {"results": results, "revision": revision, "next": _next(last, keys)}
    if query.explain:
        answer["explain"] = {
            "index": plan.describe() if plan is not None else None,
            "read": read,
            "matched": matched,
        }
    return answer


def _shape(query: Query, obj_id: str, text: str, state: str, has_conflict: int) -> Any:
    doc: Any = orjson.Fragment(text)
    if query.fields is not None:
        doc = project(orjson.loads(text), query.fields)
    if query.with_conflicts:
        return {"object": doc, "conflicts": _conflicts_of(obj_id, text, state, has_conflict)}
    return doc


def _next(
    last: tuple[tuple[Any, ...], str, str, str, int] | None, keys: tuple[SortKey, ...]
) -> str | None:
    if last is None:
        return None
    if not keys:
        return last[1]
    return cursor(sort_values(orjson.loads(last[2]), keys), last[1])
