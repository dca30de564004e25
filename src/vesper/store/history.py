"""History queries: changesets since a revision, one object's history, time travel.

Past states are rebuilt by replaying changesets through the same merge registers the
live store uses, in this node's apply order (a causal order), so a replay reproduces
exactly what the node showed at that revision.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from vesper.history.revision import parse_changeset_id, parse_revision
from vesper.merge.register import ObjectState
from vesper.storage.database import Database, Reader

PAGE_ROWS = 500


def changesets_since(
    db: Database, have: Mapping[str, int], since: Mapping[str, int], limit: int | None
) -> Iterator[dict[str, Any]]:
    missing = [o for o, c in have.items() if c > since.get(o, 0)]
    if not missing or limit == 0:
        return iter(())
    return _since(db, missing, since, limit)


def _since(
    db: Database, missing: list[str], since: Mapping[str, int], limit: int | None
) -> Iterator[dict[str, Any]]:
    with db.snapshot() as reader:
        starts = []
        for origin in missing:
            rows = reader.fetch(
                "SELECT seq FROM changesets WHERE origin = ? AND counter > ? "
                "ORDER BY counter LIMIT 1",
                (origin, since.get(origin, 0)),
            )
            if rows:
                starts.append(rows[0][0])
        if not starts:
            return
        sent = 0
        for _seq, origin, counter, body in _scan(reader, min(starts) - 1):
            if counter > since.get(origin, 0):
                yield orjson.loads(body)
                sent += 1
                if limit is not None and sent >= limit:
                    return


def _scan(reader: Reader, after_seq: int) -> Iterator[tuple[int, str, int, str]]:
    """Changesets ``(seq, origin, counter, body)`` after ``after_seq`` in apply order,
    a page at a time."""
    while True:
        rows = reader.fetch(
            "SELECT seq, origin, counter, body FROM changesets WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, PAGE_ROWS),
        )
        yield from rows
        if len(rows) < PAGE_ROWS:
            return
        after_seq = rows[-1][0]


def changeset_by_id(db: Database, changeset_id: str) -> dict[str, Any] | None:
    origin, counter = parse_changeset_id(changeset_id)
    rows = db.read(
        "SELECT body FROM changesets WHERE origin = ? AND counter = ?", (origin, counter)
    )
    return orjson.loads(rows[0][0]) if rows else None


def _object_changesets(db: Database, obj_id: str) -> list[dict[str, Any]]:
    rows = db.read(
        "SELECT c.body FROM object_changes oc JOIN changesets c ON c.seq = oc.seq "
        "WHERE oc.obj = ? ORDER BY oc.seq",
        (obj_id,),
    )
    return [orjson.loads(body) for (body,) in rows]


def _replay(state: ObjectState, body: dict[str, Any]) -> dict[str, Any] | None:
    for change in body["changes"]:
        if change["id"] == state.id:
            origin, counter = parse_changeset_id(body["id"])
            state.apply(change, origin, counter, body["hlc"], parse_revision(body["base_revision"]))
            return change
    return None


def object_history(db: Database, obj_id: str) -> list[dict[str, Any]]:
    state = ObjectState(obj_id)
    out = []
    for body in _object_changesets(db, obj_id):
        change = _replay(state, body)
        if change is None:
            continue
        out.append(
            {
                "changeset": body["id"],
                "origin": body["origin"],
                "revision": body["revision"],
                "time": body.get("time"),
                "op": change["op"],
                "object": state.document(),
            }
        )
    return out


def _contained(body: Mapping[str, Any], revision: Mapping[str, int]) -> bool:
    origin, counter = parse_changeset_id(body["id"])
    return revision.get(origin, 0) >= counter


def object_at(db: Database, obj_id: str, revision: Mapping[str, int]) -> dict[str, Any] | None:
    state = ObjectState(obj_id)
    for body in _object_changesets(db, obj_id):
        if _contained(body, revision):
            _replay(state, body)
    return state.document()


def objects_at(db: Database, revision: Mapping[str, int]) -> list[dict[str, Any]]:
    states: dict[str, ObjectState] = {}
    with db.snapshot() as reader:
        for _seq, origin, counter, body_text in _scan(reader, 0):
            if revision.get(origin, 0) < counter:
                continue
            body = orjson.loads(body_text)
            base = parse_revision(body["base_revision"])
            for change in body["changes"]:
                state = states.get(change["id"])
                if state is None:
                    state = states[change["id"]] = ObjectState(change["id"])
                state.apply(change, origin, counter, body["hlc"], base)
    docs = (states[k].document() for k in sorted(states))
    return [d for d in docs if d is not None]
