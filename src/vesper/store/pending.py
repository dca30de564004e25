"""Changesets that arrived before their predecessors.

They wait in the ``pending`` table, written in the same transaction that received
them, so a restart loses none. This index mirrors the table in memory (origin ->
counter -> causal context) so that checking what became deliverable after each apply
costs one dictionary look-up per origin, not a scan.
"""

from __future__ import annotations

from typing import Any

import orjson

from vesper.history.changeset import Changeset, parse_changeset
from vesper.history.revision import dominates, format_revision, parse_revision
from vesper.storage.database import Database


class PendingIndex:
    def __init__(self) -> None:
        self._by_origin: dict[str, dict[int, dict[str, int]]] = {}
        self._size = 0
        self.bytes = 0
        """Body bytes held (approximate after a restart: counted from the table)."""
        self._journal: list[tuple[bool, str, int, dict[str, int]]] = []

    @classmethod
    def load(cls, db: Database) -> PendingIndex:
        index = cls()
        for origin, counter, base, size in db.fetch(
            "SELECT origin, counter, base, length(body) FROM pending"
        ):
            index._by_origin.setdefault(origin, {})[counter] = parse_revision(base)
            index._size += 1
            index.bytes += size
        return index

    def count(self, origin: str) -> int:
        return len(self._by_origin.get(origin, ()))

    def __len__(self) -> int:
        return self._size

    def has(self, cs: Changeset) -> bool:
        return cs.counter in self._by_origin.get(cs.origin, ())

    def add(self, conn: Any, cs: Changeset) -> None:
        body = orjson.dumps(cs.body).decode()
        conn.execute(
            "INSERT INTO pending(origin, counter, base, body) VALUES (?, ?, ?, ?)",
            (cs.origin, cs.counter, format_revision(cs.base), body),
        )
        self.bytes += len(body)
        self._put(cs.origin, cs.counter, cs.base)
        self._journal.append((True, cs.origin, cs.counter, cs.base))

    def ready(self, conn: Any, vv: dict[str, int]) -> list[Changeset]:
        """Remove and return the pending changesets deliverable against ``vv``."""
        out: list[Changeset] = []
        for origin in list(self._by_origin):
            waiting = self._by_origin[origin]
            have = vv.get(origin, 0)
            for stale in [c for c in waiting if c <= have]:
                self._take(conn, origin, stale)  # arrived meanwhile by another path
            base = waiting.get(have + 1)
            if base is not None and dominates(vv, base):
                body = self._take(conn, origin, have + 1)
                out.append(parse_changeset(body))
        return out

    def _take(self, conn: Any, origin: str, counter: int) -> str:
        row = conn.execute(
            "DELETE FROM pending WHERE origin = ? AND counter = ? RETURNING body", (origin, counter)
        ).fetchone()
        base = self._drop(origin, counter)
        self._journal.append((False, origin, counter, base))
        self.bytes = max(0, self.bytes - len(row[0]))
        return row[0]

    def _put(self, origin: str, counter: int, base: dict[str, int]) -> None:
        self._by_origin.setdefault(origin, {})[counter] = base
        self._size += 1

    def _drop(self, origin: str, counter: int) -> dict[str, int]:
        waiting = self._by_origin[origin]
        base = waiting.pop(counter)
        if not waiting:
            del self._by_origin[origin]
        self._size -= 1
        return base

    def commit(self) -> None:
        self._journal.clear()

    def rollback(self) -> None:
        """Undo the in-memory changes of a transaction that rolled back."""
        for added, origin, counter, base in reversed(self._journal):
            if added:
                self._drop(origin, counter)
            else:
                self._put(origin, counter, base)
        self._journal.clear()

    def lowest(self, origin: str) -> tuple[int, dict[str, int]] | None:
        """The lowest waiting counter of ``origin`` and its causal context."""
        waiting = self._by_origin.get(origin)
        if not waiting:
            return None
        counter = min(waiting)
        return counter, waiting[counter]

    def summary(self) -> dict[str, list[int]]:
        """Per origin, the lowest waiting counter and how many wait (for status)."""
        return {o: [min(w), len(w)] for o, w in sorted(self._by_origin.items())}
