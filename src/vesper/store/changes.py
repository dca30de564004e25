"""The changes feed's reads: changesets in this node's apply order after a position.

A changeset's position is its ``seq`` in the ``changesets`` table: assigned when it is
committed or applied, never reused (changesets are never deleted) and kept across
restarts, so it is a resume token that misses nothing and repeats nothing. Apply order
is causal: a changeset comes after everything it depends on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from vesper.errors import InvalidOperation
from vesper.history.revision import parse_revision
from vesper.storage.database import Database, Reader

PAGE_ROWS = 500


@dataclass(frozen=True, slots=True)
class Change:
    """One changeset as the feed shows it."""

    seq: int
    id: str
    origin: str
    time: str
    revision: str
    """The changeset's own revision (its origin's version vector after it)."""
    objects: list[tuple[str, bool]]
    """(object id, deleted) for each object it wrote, in its order."""


def last_seq(reader: Database | Reader) -> int:
    return reader.fetch("SELECT coalesce(max(seq), 0) FROM changesets")[0][0]


def start_of(db: Database, since: str) -> tuple[int, dict[str, int] | None]:
    """Where a feed given ``since`` starts: ``(after_seq, skip)``, ``skip`` being the
    version vector whose changesets are left out on the way (for a revision), or None.

    ``since`` is ``now``, a position (``0`` or empty: from the start), or a revision:
    then the feed holds every changeset the revision does not contain, which is how a
    client moves to another node without missing anything.
    """
    with db.snapshot() as reader:
        top = last_seq(reader)
        if since == "now":
            return top, None
        if since == "" or since.isdigit():
            after = int(since or 0)
            if after > top:
                raise InvalidOperation(
                    f"since={after} is past this node's last change ({top}): a position "
                    "belongs to the node that gave it (was the store restored from an "
                    "older copy?); resume with a revision instead"
                )
            return after, None
        vector = parse_revision(since)
        starts = [
            rows[0][0]
            for origin, counter in _heads(reader).items()
            if counter > vector.get(origin, 0)
            and (
                rows := reader.fetch(
                    "SELECT seq FROM changesets WHERE origin = ? AND counter > ? "
                    "ORDER BY counter LIMIT 1",
                    (origin, vector.get(origin, 0)),
                )
            )
        ]
        return (min(starts) - 1 if starts else top), vector


def _heads(reader: Reader) -> dict[str, int]:
    return dict(reader.fetch("SELECT origin, max(counter) FROM changesets GROUP BY origin"))


def changes_after(
    db: Database, after_seq: int, limit: int, skip: Mapping[str, int] | None = None
) -> list[Change]:
    """Up to ``limit`` changes after position ``after_seq``, leaving out those ``skip``
    contains."""
    out: list[Change] = []
    while len(out) < limit:
        # Pages of at least PAGE_ROWS: after a revision, many rows may be left out.
        page = max(limit - len(out), PAGE_ROWS) if skip else limit - len(out)
        rows = db.read(
            "SELECT seq, origin, counter, body FROM changesets WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, page),
        )
        for seq, origin, counter, text in rows:
            if len(out) == limit:
                break
            if skip is None or counter > skip.get(origin, 0):
                out.append(_change(seq, origin, orjson.loads(text)))
        if len(rows) < page:
            break
        after_seq = rows[-1][0]
    return out


def _change(seq: int, origin: str, body: dict[str, Any]) -> Change:
    return Change(
        seq,
        body["id"],
        origin,
        body.get("time", ""),
        body.get("revision", ""),
        [(c["id"], c.get("exists") is False) for c in body.get("changes", ())],
    )


def change_at(db: Database, seq: int) -> Change | None:
    rows = db.read("SELECT origin, body FROM changesets WHERE seq = ?", (seq,))
    return _change(seq, rows[0][0], orjson.loads(rows[0][1])) if rows else None
