"""The SQLite store on its own: group commit, cancellation, loads, retry after failure."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest

from vesper.broker import BrokerConfigError, persistence
from vesper.broker.message import Entry, Message
from vesper.broker.persistence import SqliteStore


def entry(store: SqliteStore, body: bytes) -> Entry:
    key = store.next_key()
    return Entry(key, Message(f"id-{key}", "/queue/q", (("h", "v"),), body))


def rows(path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        query = "SELECT id, mailbox, body, redelivered FROM entries ORDER BY id"
        return db.execute(query).fetchall()


def run(coro):
    return asyncio.run(coro)


def test_receipt_callbacks_fire_after_commit_and_acked_puts_never_hit_disk(tmp_path) -> None:
    async def scenario():
        store = SqliteStore(tmp_path, 1 << 20)
        assert await store.open() == []
        box = store.create_mailbox("queue", "/queue/q", "/queue/q")
        kept, acked = entry(store, b"kept"), entry(store, b"acked")
        store.put(box, kept)
        store.put(box, acked)
        store.delete(acked.key)  # consumed before its batch was written
        store.mark_redelivered(kept.key)
        seen = []
        store.after_writes(lambda: seen.append(rows(store.path)))
        await store.close()
        return box, kept, seen

    box, kept, seen = run(scenario())
    assert seen == [[(kept.key, box, b"kept", 1)]]


def test_reopen_recovers_mailboxes_counts_and_keys(tmp_path) -> None:
    async def first():
        store = SqliteStore(tmp_path, 1 << 20)
        await store.open()
        a = store.create_mailbox("durable", "activemq:c:n", "/topic/t")
        b = store.create_mailbox("queue", "/queue/q", "/queue/q")
        for i in range(3):
            store.put(a, entry(store, b"a%d" % i))
        store.put(b, entry(store, b"b"))
        gone = store.create_mailbox("queue", "/queue/gone", "/queue/gone")
        store.put(gone, entry(store, b"x"))
        await store.close()
        store = SqliteStore(tmp_path, 1 << 20)
        await store.open()
        store.delete_mailbox(gone)
        await store.close()

    async def second():
        store = SqliteStore(tmp_path, 1 << 20)
        stored = await store.open()
        loaded = []
        store.load(stored[0].id, 1, 10, loaded.append)
        await store.close()
        return stored, store.next_key(), loaded

    run(first())
    stored, next_key, loaded = run(second())
    assert [(s.kind, s.name, s.destination, s.count) for s in stored] == [
        ("durable", "activemq:c:n", "/topic/t", 3),
        ("queue", "/queue/q", "/queue/q", 1),
    ]
    assert next_key == 5  # the highest surviving key + 1
    assert [r[3] for r in loaded[0]] == [b"a1", b"a2"]  # after key 1, in order


def test_a_failed_commit_is_retried_before_later_writes(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(persistence, "RETRY_DELAY_S", 0.01)

    async def scenario():
        store = SqliteStore(tmp_path, 1 << 20)
        await store.open()
        box = store.create_mailbox("queue", "/queue/q", "/queue/q")
        real_write = store._write
        failures = []

        def flaky(batch):
            if not failures:
                failures.append(1)
                raise sqlite3.OperationalError("disk I/O error")
            return real_write(batch)

        store._write = flaky
        first = entry(store, b"1")
        store.put(box, first)
        order = []
        store.after_writes(lambda: order.append("first"))
        await asyncio.sleep(0)
        store.put(box, entry(store, b"2"))
        store.after_writes(lambda: order.append("second"))
        await store.close()
        return order

    assert run(scenario()) == ["first", "second"]
    assert "retrying" in caplog.text
    caplog.clear()
    assert [r[2] for r in rows(tmp_path / persistence.DB_FILENAME)] == [b"1", b"2"]


@pytest.mark.parametrize("limit", [1000])
def test_backlog_limit_and_drain_callback(tmp_path, limit) -> None:
    async def scenario():
        store = SqliteStore(tmp_path, limit)
        await store.open()
        box = store.create_mailbox("queue", "/queue/q", "/queue/q")
        for _ in range(5):
            store.put(box, entry(store, b"z" * 500))
        over = store.over_limit()
        drained = asyncio.Event()
        store.when_drained(drained.set)
        await asyncio.wait_for(drained.wait(), 10)
        await store.close()
        return over, store.over_limit()

    assert run(scenario()) == (True, False)


def test_a_corrupt_database_is_a_clear_error(tmp_path) -> None:
    (tmp_path / persistence.DB_FILENAME).write_bytes(b"this is not sqlite" * 100)

    async def scenario():
        store = SqliteStore(tmp_path, 1 << 20)
        try:
            await store.open()
        finally:
            await store.close()

    with pytest.raises(BrokerConfigError, match="not a usable broker database"):
        run(scenario())


def test_owner_and_last_activity_survive_a_restart(tmp_path) -> None:
    async def first():
        store = SqliteStore(tmp_path, 1 << 20)
        await store.open()
        box = store.create_mailbox("durable", "rabbitmq:a@/topic/t", "/topic/t", "node-a", 100.0)
        await store.close()
        store = SqliteStore(tmp_path, 1 << 20)
        await store.open()
        store.touch(box, 200.0)
        await store.close()

    async def second():
        store = SqliteStore(tmp_path, 1 << 20)
        stored = await store.open()
        await store.close()
        return stored

    run(first())
    (s,) = run(second())
    assert (s.owner, s.last_active) == ("node-a", 200.0)


def test_a_database_from_before_owners_is_migrated(tmp_path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / persistence.DB_FILENAME)) as db:
        db.executescript(
            "CREATE TABLE mailboxes (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
            " name TEXT NOT NULL, destination TEXT NOT NULL);"
            "CREATE TABLE entries (id INTEGER PRIMARY KEY, mailbox INTEGER NOT NULL,"
            " message_id TEXT NOT NULL, headers BLOB NOT NULL, body BLOB NOT NULL,"
            " redelivered INTEGER NOT NULL);"
            "INSERT INTO mailboxes VALUES (1, 'durable', 'activemq:c:n', '/topic/t');"
        )

    async def scenario():
        store = SqliteStore(tmp_path, 1 << 20)
        stored = await store.open()
        await store.close()
        return stored

    import time

    (s,) = run(scenario())
    assert s.owner == ""  # made by an anonymous client, as every one was then
    assert abs(s.last_active - time.time()) < 60  # the expiry clock starts now, not in 1970
