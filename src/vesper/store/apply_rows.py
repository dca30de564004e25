"""The rows one apply transaction writes, held back and written together at its end.

A catch-up batch or a backlog of small changesets costs, per changeset, three inserts
and a select: one ``execute`` or ``executemany`` per row, each about as dear as the
row's own B-tree work. Held here, they go out as three ``executemany`` calls per
transaction instead. Readers of the transaction's own writes look here first: a
later changeset of the batch that touches an object already written takes its state
from ``objects``; a changeset compared against its held copy needs the rows in the
database, so the store flushes before it compares.
"""

from __future__ import annotations

from typing import Any

ObjectRow = tuple[str, int, str, str, int]
"""``objects`` columns: id, live, doc, state, conflicted."""
WRITE_OBJECTS = (
    "INSERT OR REPLACE INTO objects(id, live, doc, state, conflicted) VALUES (?, ?, ?, ?, ?)"
)
WRITE_OBJECT_CHANGES = "INSERT INTO object_changes(obj, seq) VALUES (?, ?)"


class ApplyRows:
    def __init__(self, next_seq: int) -> None:
        self.objects: dict[str, ObjectRow] = {}
        self._changesets: list[tuple[int, str, int, str]] = []
        self._object_changes: list[tuple[str, int]] = []
        self._next_seq = next_seq

    def add_changeset(self, origin: str, counter: int, text: str, object_ids: list[str]) -> None:
        """Hold a changeset row and its object index, under the seq SQLite would give it
        (the next after the largest stored)."""
        seq = self._next_seq
        self._next_seq += 1
        self._changesets.append((seq, origin, counter, text))
        self._object_changes.extend((obj_id, seq) for obj_id in object_ids)

    def flush(self, conn: Any) -> None:
        """Write what is held, in the caller's transaction, and hold nothing."""
        if self.objects:
            conn.executemany(WRITE_OBJECTS, list(self.objects.values()))
            self.objects.clear()
        if self._changesets:
            conn.executemany(
                "INSERT INTO changesets(seq, origin, counter, body) VALUES (?, ?, ?, ?)",
                self._changesets,
            )
            conn.executemany(WRITE_OBJECT_CHANGES, self._object_changes)
            self._changesets, self._object_changes = [], []
