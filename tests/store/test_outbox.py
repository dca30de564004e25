"""The outbox: committed changesets waiting for the broker's confirmation, and its count,
which status reads on every call and so is kept in memory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vesper.errors import VesperError
from vesper.store import open_store


def rows(store: object) -> int:
    return store.db.read("SELECT count(*) FROM outbox")[0][0]  # type: ignore[attr-defined]


def test_the_count_follows_commits_confirmations_failures_and_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    store = open_store(url, "A", save_history=True, outbox=True)
    for i in range(5):
        store.create({"id": f"o{i}"})
    assert store.outbox_count == rows(store) == 5
    seqs = [seq for seq, _ in store.outbox_peek(limit=10)]
    store.outbox_confirm(seqs[:2])
    store.outbox_confirm(seqs[:3])  # two of them confirmed already
    assert store.outbox_count == rows(store) == 2

    # A commit that fails at the database leaves the count as it was.
    store.db.conn.execute(
        "CREATE TRIGGER no_more BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises((VesperError, sqlite3.DatabaseError)):
        store.create({"id": "refused"})
    assert store.outbox_count == rows(store) == 2
    store.db.conn.execute("DROP TRIGGER no_more")
    store.create({"id": "o5"})
    assert store.outbox_count == rows(store) == 3
    store.close()

    again = open_store(url, "A", save_history=True, outbox=True)
    assert again.outbox_count == rows(again) == 3
    again.close()
