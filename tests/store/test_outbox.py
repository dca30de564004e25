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


# -- the in-memory tail: the sender's reads, answered without the table ----------------


def table(store: object, after_seq: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
    """What the outbox table holds (read on the writer's connection, not as peeks read)."""
    return store.db.fetch(  # type: ignore[attr-defined]
        "SELECT o.seq, c.body FROM outbox o JOIN changesets c ON c.seq = o.seq "
        "WHERE o.seq > ? ORDER BY o.seq LIMIT ?",
        (after_seq, limit),
    )


def test_peeks_answer_what_the_table_holds_as_a_sender_moves_and_reconnects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    store = open_store(url, "A", save_history=True, outbox=True)
    store.create({"id": "before"})
    store.close()
    store = open_store(url, "A", save_history=True, outbox=True)  # a row from before
    reads: list[object] = []
    real_read = store.db.read
    monkeypatch.setattr(store.db, "read", lambda *a: reads.append(a) or real_read(*a))

    assert store.outbox_peek(10, 0) == table(store)  # the old row: from the table
    assert len(reads) == 1
    sent = store.outbox_peek(10, 0)[-1][0]
    for i in range(5):
        store.create({"id": f"o{i}", "n": i})
    reads.clear()
    first = store.outbox_peek(2, sent)
    assert first == table(store, sent, 2) and not reads  # fresh rows: from memory
    rest = store.outbox_peek(10, first[-1][0])
    assert rest == table(store, first[-1][0]) and len(rest) == 3 and not reads
    assert store.outbox_peek(10, rest[-1][0]) == [] and not reads

    # A reconnect: everything unconfirmed again, rows handed out before included.
    store.outbox_confirm([first[0][0]])
    assert store.outbox_peek(100, 0) == table(store) and len(table(store)) == 5
    assert reads
    store.close()


def test_rows_beyond_the_tail_or_queued_behind_its_back_come_from_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vesper.store import outbox_tail

    monkeypatch.setattr(outbox_tail, "MAX_ROWS", 3)
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", "A", save_history=True, outbox=True)
    for i in range(6):
        store.create({"id": f"o{i}"})
    assert store.outbox_peek(100, 0) == table(store) and len(table(store)) == 6
    sent = table(store)[-1][0]
    assert store.outbox_peek(100, sent) == []

    # Rows put in the outbox by other means than a commit: memory no longer answers.
    store.outbox_confirm([seq for seq, _ in table(store)])
    store.db.conn.execute("DELETE FROM meta WHERE key = 'own_signed'")
    assert store.queue_unsigned_own() == 6
    assert store.outbox_peek(100, sent) == table(store, sent) == []
    assert store.outbox_peek(100, 0) == table(store) and len(table(store)) == 6
    store.close()


def test_a_failed_commit_hands_nothing_to_the_sender(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", "A", save_history=True, outbox=True)
    store.create({"id": "kept"})
    sent = store.outbox_peek(10, 0)[-1][0]
    store.db.conn.execute(
        "CREATE TRIGGER no_more BEFORE INSERT ON meta BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    store.db.conn.execute(
        "CREATE TRIGGER no_update BEFORE UPDATE ON meta BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    with pytest.raises((VesperError, sqlite3.DatabaseError)):
        store.create({"id": "refused"})
    assert store.outbox_peek(10, sent) == table(store, sent) == []
    store.close()


def test_a_new_store_resends_everything_unconfirmed_after_a_reconnect(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", "A", save_history=True, outbox=True)
    for i in range(3):
        store.create({"id": f"o{i}"})
    handed = store.outbox_peek(10, 0)
    assert handed == table(store) and len(handed) == 3
    assert store.outbox_peek(10, handed[-1][0]) == []  # sent, not yet confirmed
    assert store.outbox_peek(10, 0) == handed  # the connection was lost: all again
    store.close()
