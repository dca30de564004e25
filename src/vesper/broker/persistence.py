"""Where queues and durable subscriptions keep their messages: memory or SQLite.

The SQLite store is an outbox in front of one writer thread. Calls made on the event
loop only append to the open batch; the writer commits one batch at a time (group
commit), so while a commit runs the next batch fills up. ``after_writes`` callbacks
(the RECEIPTs) run once every write submitted before them is committed. An entry put
and deleted before its batch is written (a message acknowledged quickly) never
touches the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import fcntl
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from vesper.broker.errors import BrokerConfigError
from vesper.broker.message import Entry

log = logging.getLogger("vesper.broker")

DB_FILENAME = "broker.sqlite3"
LOCK_FILENAME = "broker.lock"
#: Wait between retries of a failed commit (disk full, file locked).
RETRY_DELAY_S = 1.0
#: How long stop() waits for the last batch before giving up on it.
CLOSE_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mailboxes (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, destination TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '', last_active REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY, mailbox INTEGER NOT NULL, message_id TEXT NOT NULL,
    headers BLOB NOT NULL, body BLOB NOT NULL, redelivered INTEGER NOT NULL,
    expires INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_mailbox ON entries (mailbox);
"""
# Made after the migration, which may have to add the column first.
_EXPIRES_INDEX = (
    "CREATE INDEX IF NOT EXISTS entries_expires ON entries (mailbox, expires) WHERE expires > 0"
)

#: A stored entry as loaded: (key, message_id, headers blob, body, redelivered, expires).
Row = tuple[int, str, bytes, bytes, int, int]
LoadCallback = Callable[[list[Row]], None]
ExpireCallback = Callable[[int], None]


@dataclasses.dataclass(frozen=True)
class StoredMailbox:
    """A queue or durable subscription found in the store at start."""

    id: int
    kind: str
    """``queue`` or ``durable``."""
    name: str
    destination: str
    count: int
    """Entries it holds on disk."""
    owner: str = ""
    """The login that created it ('' = an anonymous client)."""
    last_active: float = 0.0
    """Unix time it last had a consumer (or was created)."""


class Store(Protocol):
    """What a mailbox needs from its storage; every method runs on the event loop."""

    persistent: bool

    async def open(self) -> list[StoredMailbox]: ...
    async def close(self) -> None: ...
    def next_key(self) -> int: ...
    def create_mailbox(
        self,
        kind: str,
        name: str,
        destination: str,
        owner: str = "",
        last_active: float | None = None,
    ) -> int: ...
    def delete_mailbox(self, mailbox_id: int) -> None: ...
    def touch(self, mailbox_id: int, last_active: float) -> None: ...
    def put(self, mailbox_id: int, entry: Entry) -> None: ...
    def delete(self, key: int) -> None: ...
    def mark_redelivered(self, key: int) -> None: ...
    def load(self, mailbox_id: int, after_key: int, limit: int, done: LoadCallback) -> None: ...
    def expire(self, mailbox_id: int, after_key: int, now_ms: int, done: ExpireCallback) -> None:
        """Delete the mailbox's entries after ``after_key`` that expired by ``now_ms``;
        ``done`` gets how many."""
        ...

    def after_writes(self, callback: Callable[[], None]) -> None: ...
    def over_limit(self) -> bool: ...
    def when_drained(self, callback: Callable[[], None]) -> None: ...


class MemoryStore:
    """No storage at all: mailboxes live and die with the broker process."""

    persistent = False

    def __init__(self) -> None:
        self._key = 0
        self._mailbox = 0

    async def open(self) -> list[StoredMailbox]:
        return []

    async def close(self) -> None:
        pass

    def next_key(self) -> int:
        self._key += 1
        return self._key

    def create_mailbox(
        self,
        kind: str,
        name: str,
        destination: str,
        owner: str = "",
        last_active: float | None = None,
    ) -> int:
        self._mailbox += 1
        return self._mailbox

    def delete_mailbox(self, mailbox_id: int) -> None:
        pass

    def touch(self, mailbox_id: int, last_active: float) -> None:
        pass

    def put(self, mailbox_id: int, entry: Entry) -> None:
        pass

    def delete(self, key: int) -> None:
        pass

    def mark_redelivered(self, key: int) -> None:
        pass

    def load(self, mailbox_id: int, after_key: int, limit: int, done: LoadCallback) -> None:
        done([])

    def expire(self, mailbox_id: int, after_key: int, now_ms: int, done: ExpireCallback) -> None:
        done(0)

    def after_writes(self, callback: Callable[[], None]) -> None:
        callback()

    def over_limit(self) -> bool:
        return False

    def when_drained(self, callback: Callable[[], None]) -> None:
        callback()


class _Batch:
    __slots__ = (
        "callbacks",
        "creates",
        "deletes",
        "drops",
        "expiries",
        "loads",
        "put_bytes",
        "puts",
        "redelivered",
        "touches",
    )

    def __init__(self) -> None:
        self.creates: dict[int, tuple[int, str, str, str, str, float]] = {}
        self.touches: dict[int, float] = {}
        self.drops: list[int] = []
        self.puts: dict[int, tuple[int, int, str, bytes, bytes, int, int]] = {}
        self.redelivered: list[int] = []
        self.deletes: list[int] = []
        self.loads: list[tuple[int, int, int, LoadCallback]] = []
        self.expiries: list[tuple[int, int, int, ExpireCallback]] = []
        self.callbacks: list[Callable[[], None]] = []
        self.put_bytes = 0

    def has_db_work(self) -> bool:
        return bool(
            self.creates or self.drops or self.puts or self.redelivered or self.deletes
        ) or bool(self.loads or self.touches or self.expiries)

    def absorb(self, later: _Batch) -> None:
        """Append a later batch (used to retry a failed one without reordering)."""
        self.creates.update(later.creates)
        self.touches.update(later.touches)
        self.drops.extend(later.drops)
        self.puts.update(later.puts)
        self.redelivered.extend(later.redelivered)
        self.deletes.extend(later.deletes)
        self.loads.extend(later.loads)
        self.expiries.extend(later.expiries)
        self.callbacks.extend(later.callbacks)
        self.put_bytes += later.put_bytes


class SqliteStore:
    """Messages of queues and durable subscriptions in one SQLite file, group-committed."""

    persistent = True

    def __init__(self, data_dir: Path, max_unwritten_bytes: int) -> None:
        self.path = Path(data_dir) / DB_FILENAME
        self.max_unwritten_bytes = max_unwritten_bytes
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="vesper-broker-sqlite"
        )
        self._db: sqlite3.Connection | None = None
        self._lock: BinaryIO | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch = _Batch()
        self._writing = False
        self._scheduled = False
        self._unwritten = 0
        self._drain_waiters: list[Callable[[], None]] = []
        self._key = 0
        self._mailbox = 0

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> list[StoredMailbox]:
        self._loop = asyncio.get_running_loop()
        return await self._loop.run_in_executor(self._executor, self._open_db)

    def _open_db(self) -> list[StoredMailbox]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path.parent / LOCK_FILENAME, "a+b")  # noqa: SIM115
        except OSError as exc:
            raise BrokerConfigError(f"cannot use data folder {self.path.parent}: {exc}") from exc
        try:
            # Two brokers on one file would fight over it; the lock dies with the process.
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise BrokerConfigError(
                f"data folder {self.path.parent} is in use by another broker"
            ) from None
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a RECEIPT promises the message survives a power cut, not only a crash.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._migrate(db)
            db.execute(_EXPIRES_INDEX)
            self._key = db.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0]
            self._mailbox = db.execute("SELECT coalesce(max(id), 0) FROM mailboxes").fetchone()[0]
            counts = dict(db.execute("SELECT mailbox, count(*) FROM entries GROUP BY mailbox"))
            stored = [
                StoredMailbox(mid, kind, name, dest, counts.get(mid, 0), owner, active)
                for mid, kind, name, dest, owner, active in db.execute(
                    "SELECT id, kind, name, destination, owner, last_active"
                    " FROM mailboxes ORDER BY id"
                )
            ]
        except sqlite3.Error as exc:
            db.close()
            raise BrokerConfigError(f"{self.path} is not a usable broker database: {exc}") from exc
        self._db = db
        return stored

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Add the columns a database made before them lacks (entries kept before
        messages could expire never do)."""
        if "expires" not in {row[1] for row in db.execute("PRAGMA table_info(entries)")}:
            db.execute("ALTER TABLE entries ADD COLUMN expires INTEGER NOT NULL DEFAULT 0")
        columns = {row[1] for row in db.execute("PRAGMA table_info(mailboxes)")}
        if "owner" not in columns:
            db.execute("ALTER TABLE mailboxes ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        if "last_active" not in columns:
            db.execute("ALTER TABLE mailboxes ADD COLUMN last_active REAL NOT NULL DEFAULT 0")
            # Their real last use is unknown: count from now, not from 1970.
            db.execute("UPDATE mailboxes SET last_active = ?", (time.time(),))

    async def close(self) -> None:
        if self._loop is not None and self._db is not None:
            done = self._loop.create_future()
            self.after_writes(lambda: done.done() or done.set_result(None))
            try:
                await asyncio.wait_for(done, CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.error("broker store: last writes to %s did not complete", self.path)
            await self._loop.run_in_executor(self._executor, self._db.close)
            self._db = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
        self._executor.shutdown(wait=True)

    # -- operations (event loop) -----------------------------------------------------

    def next_key(self) -> int:
        self._key += 1
        return self._key

    def create_mailbox(
        self,
        kind: str,
        name: str,
        destination: str,
        owner: str = "",
        last_active: float | None = None,
    ) -> int:
        """A new queue or durable subscription; ``last_active`` defaults to now."""
        self._mailbox += 1
        when = time.time() if last_active is None else last_active
        row = (self._mailbox, kind, name, destination, owner, when)
        self._batch.creates[self._mailbox] = row
        self._schedule()
        return self._mailbox

    def touch(self, mailbox_id: int, last_active: float) -> None:
        batch = self._batch
        row = batch.creates.get(mailbox_id)
        if row is not None:
            batch.creates[mailbox_id] = (*row[:5], last_active)
        else:
            batch.touches[mailbox_id] = last_active
            self._schedule()

    def delete_mailbox(self, mailbox_id: int) -> None:
        batch = self._batch
        for key in [k for k, row in batch.puts.items() if row[1] == mailbox_id]:
            self._cancel_put(key)
        batch.touches.pop(mailbox_id, None)
        if batch.creates.pop(mailbox_id, None) is None:
            batch.drops.append(mailbox_id)
        self._schedule()

    def put(self, mailbox_id: int, entry: Entry) -> None:
        m = entry.message
        blob = m.headers_blob()
        row = (
            entry.key,
            mailbox_id,
            m.message_id,
            blob,
            m.body,
            int(entry.redelivered),
            m.expires,
        )
        self._batch.puts[entry.key] = row
        size = len(blob) + len(m.body)
        self._batch.put_bytes += size
        self._unwritten += size
        self._schedule()

    def _cancel_put(self, key: int) -> None:
        row = self._batch.puts.pop(key)
        size = len(row[3]) + len(row[4])
        self._batch.put_bytes -= size
        self._unwritten -= size

    def delete(self, key: int) -> None:
        if key in self._batch.puts:
            self._cancel_put(key)
        else:
            self._batch.deletes.append(key)
            self._schedule()

    def mark_redelivered(self, key: int) -> None:
        row = self._batch.puts.get(key)
        if row is not None:
            self._batch.puts[key] = (*row[:5], 1, row[6])
        else:
            self._batch.redelivered.append(key)
            self._schedule()

    def load(self, mailbox_id: int, after_key: int, limit: int, done: LoadCallback) -> None:
        self._batch.loads.append((mailbox_id, after_key, limit, done))
        self._schedule()

    def expire(self, mailbox_id: int, after_key: int, now_ms: int, done: ExpireCallback) -> None:
        self._batch.expiries.append((mailbox_id, after_key, now_ms, done))
        self._schedule()

    def after_writes(self, callback: Callable[[], None]) -> None:
        if not self._writing and not self._batch.has_db_work():
            callback()
        else:
            self._batch.callbacks.append(callback)
            self._schedule()

    def over_limit(self) -> bool:
        return self._unwritten > self.max_unwritten_bytes

    def when_drained(self, callback: Callable[[], None]) -> None:
        if self._unwritten <= self.max_unwritten_bytes // 2:
            callback()
        else:
            self._drain_waiters.append(callback)

    # -- the writer ------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled and not self._writing and self._loop is not None:
            self._scheduled = True
            # call_soon: everything the current read produced joins the same batch.
            self._loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._writing:
            return
        batch = self._batch
        if not batch.has_db_work():
            self._batch = _Batch()
            for cb in batch.callbacks:
                cb()
            return
        self._batch = _Batch()
        self._writing = True
        assert self._loop is not None
        fut = self._loop.run_in_executor(self._executor, self._write, batch)
        fut.add_done_callback(lambda f: self._written(batch, f))

    def _written(
        self, batch: _Batch, fut: asyncio.Future[tuple[list[list[Row]], list[int]]]
    ) -> None:
        self._writing = False
        exc = fut.exception()
        if exc is not None:
            log.error("broker store: write to %s failed, retrying: %s", self.path, exc)
            batch.absorb(self._batch)
            self._batch = batch
            assert self._loop is not None
            self._loop.call_later(RETRY_DELAY_S, self._schedule)
            return
        self._unwritten -= batch.put_bytes
        loaded, expired = fut.result()
        for (_, _, _, done), rows in zip(batch.loads, loaded, strict=True):
            done(rows)
        for (_, _, _, gone), count in zip(batch.expiries, expired, strict=True):
            gone(count)
        for cb in batch.callbacks:
            cb()
        if self._drain_waiters and self._unwritten <= self.max_unwritten_bytes // 2:
            waiters, self._drain_waiters = self._drain_waiters, []
            for cb in waiters:
                cb()
        if self._batch.has_db_work() or self._batch.callbacks:
            self._schedule()

    def _write(self, batch: _Batch) -> tuple[list[list[Row]], list[int]]:
        db = self._db
        assert db is not None
        if (
            batch.creates
            or batch.drops
            or batch.puts
            or batch.redelivered
            or batch.deletes
            or batch.touches
        ):
            db.execute("BEGIN")
            try:
                for mid in batch.drops:
                    db.execute("DELETE FROM entries WHERE mailbox = ?", (mid,))
                    db.execute("DELETE FROM mailboxes WHERE id = ?", (mid,))
                if batch.creates:
                    db.executemany(
                        "INSERT INTO mailboxes VALUES (?, ?, ?, ?, ?, ?)", batch.creates.values()
                    )
                if batch.touches:
                    db.executemany(
                        "UPDATE mailboxes SET last_active = ? WHERE id = ?",
                        [(when, mid) for mid, when in batch.touches.items()],
                    )
                if batch.puts:
                    db.executemany(
                        "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", batch.puts.values()
                    )
                if batch.redelivered:
                    db.executemany(
                        "UPDATE entries SET redelivered = 1 WHERE id = ?",
                        [(k,) for k in batch.redelivered],
                    )
                if batch.deletes:
                    db.executemany(
                        "DELETE FROM entries WHERE id = ?", [(k,) for k in batch.deletes]
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            # Committed: should the loads below fail, a retry must not write twice.
            batch.creates, batch.drops, batch.puts = {}, [], {}
            batch.redelivered, batch.deletes, batch.touches = [], [], {}
        # Each expiry is its own statement (autocommit): run again on a retry, it
        # deletes nothing more (a count so lost only leaves ``disk_only`` high, which
        # the next load corrects). They run before the loads, so that no entry is both
        # loaded and counted as expired on disk.
        expired = [
            db.execute(
                "DELETE FROM entries WHERE mailbox = ? AND id > ? AND expires > 0 AND expires <= ?",
                (mid, after, now_ms),
            ).rowcount
            for mid, after, now_ms, _ in batch.expiries
        ]
        loaded = [
            db.execute(
                "SELECT id, message_id, headers, body, redelivered, expires FROM entries"
                " WHERE mailbox = ? AND id > ? ORDER BY id LIMIT ?",
                (mid, after, limit),
            ).fetchall()
            for mid, after, limit, _ in batch.loads
        ]
        return loaded, expired
