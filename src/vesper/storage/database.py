"""The SQLite database behind a store: connections, schema, locking, durability.

One writer connection does every write, serialised by a lock; each write is one
``BEGIN IMMEDIATE`` transaction. WAL mode lets readers run beside it: a streaming query
takes a pooled reader connection and keeps one read transaction open, so it sees one
consistent snapshot however long the caller takes. An in-memory store has a single
connection, so its queries page through it under the lock instead.

Durability: with ``synchronous=NORMAL`` (the default) a committed transaction is in the
WAL file before ``commit`` returns, so it survives the process being killed (kill -9);
an operating-system crash or power loss may lose the last transactions, never corrupt
the file. ``synchronous=FULL`` fsyncs every commit and survives power loss too.

Damage: every open runs SQLite's ``quick_check``, and any statement that finds the file
corrupt (or stored JSON that no longer parses) puts the database in the failed state
(``failure``): one ERROR line, and from then on StoreDamaged for every write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from vesper.errors import StorageError, StoreClosed, StoreDamaged
from vesper.storage.damage import file_problems, is_damage, one_line
from vesper.storage.url import StorageLocation

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
READER_POOL_SIZE = 4
WRITER_CACHE_KIB = 32 * 1024
READER_CACHE_KIB = 8 * 1024
WAL_BACKSTOP_PAGES = 100_000
CHECKPOINT_INTERVAL_S = 0.5

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY,
    live INTEGER NOT NULL,          -- 1 when the object exists (its existence winner)
    doc TEXT NOT NULL,              -- visible properties, JSON, with "id"
    state TEXT NOT NULL,            -- merge registers: dots and losing values
    conflicted INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_conflicted ON objects(id) WHERE conflicted = 1;
CREATE TABLE IF NOT EXISTS changesets (
    seq INTEGER PRIMARY KEY,        -- local apply order: a causal order
    origin TEXT NOT NULL,
    counter INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS changesets_dot ON changesets(origin, counter);
CREATE TABLE IF NOT EXISTS object_changes (
    obj TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (obj, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    origin TEXT NOT NULL,
    counter INTEGER NOT NULL,
    base TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (origin, counter)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS key_pins (   -- trust on first use: branch -> its first key
    branch TEXT PRIMARY KEY, key TEXT NOT NULL, pinned TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS digest_buckets ( -- LtHash state of each bucket of objects
    bucket INTEGER PRIMARY KEY,     -- 0..255: first byte of the SHA-256 of the id
    state BLOB NOT NULL             -- 1024 little-endian 16-bit lanes
);
CREATE TABLE IF NOT EXISTS quarantine ( -- rejected messages, newest kept
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    headers TEXT NOT NULL,
    excerpt TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS indexes (   -- property indexes declared, and their build
    path TEXT PRIMARY KEY,
    state TEXT NOT NULL,            -- building or ready
    built_upto TEXT NOT NULL        -- the last object id the build has entered
);
CREATE TABLE IF NOT EXISTS property_index ( -- one row per indexed path and object
    path TEXT NOT NULL,
    rank INTEGER NOT NULL,          -- 1 null, 2 boolean, 3 number, 4 string
    num REAL,
    txt TEXT,
    id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS property_index_num ON property_index(path, rank, num);
CREATE INDEX IF NOT EXISTS property_index_txt ON property_index(path, rank, txt);
CREATE INDEX IF NOT EXISTS property_index_id ON property_index(id);
CREATE TABLE IF NOT EXISTS idempotency_keys ( -- retried writes get the first answer
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,      -- SHA-256 of method, path and body
    time REAL NOT NULL,
    answer TEXT NOT NULL            -- JSON: revision, ids, changeset
);
CREATE INDEX IF NOT EXISTS idempotency_keys_time ON idempotency_keys(time);
CREATE TABLE IF NOT EXISTS message_parts ( -- parts of messages too large for one frame
    set_id TEXT NOT NULL,           -- SHA-256 of the whole message
    idx INTEGER NOT NULL,
    count INTEGER NOT NULL,
    received REAL NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (set_id, idx)
);
"""


class Database:
    def __init__(self, location: StorageLocation) -> None:
        self.location = location
        self.name = location.path or "mem://"
        self.lock = threading.RLock()
        self._pool_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._lock_file: Any = None
        self._closed = False
        self._failure: str | None = None
        self._failure_lock = threading.Lock()
        self._log_failures = True
        self._checkpointer: _Checkpointer | None = None
        if location.path is not None:
            path = Path(location.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._take_process_lock(path)
        try:
            self.conn = self._connect(WRITER_CACHE_KIB)
            if location.path is not None:
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                # Checkpoints (copying the WAL into the database, with fsyncs) run on a
                # thread of their own, so no commit stalls behind one; the writer's own
                # automatic checkpoint stays only as a backstop far above it.
                self.conn.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
                if mode.lower() != "wal":
                    raise StorageError(f"{location.path}: cannot switch to WAL mode ({mode})")
                # Before anything is written: a damaged file must not be written to.
                self._quick_check()
            self.conn.executescript(SCHEMA)
            self._check_schema()
            if location.path is not None:
                self._checkpointer = _Checkpointer(self._connect(READER_CACHE_KIB))
                self._checkpointer.start()
        except sqlite3.DatabaseError as exc:
            self.close()
            if is_damage(exc):
                raise StoreDamaged(f"{self.name} is damaged ({one_line(str(exc))})") from None
            raise StorageError(f"cannot open {self.name}: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _quick_check(self) -> None:
        """SQLite's one-pass check of every page and record. It reads the whole file:
        0.15 s for 128 MB in the page cache, about 2 s from a cold disk."""
        problems = file_problems(self.conn, full=False, limit=20)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StoreDamaged(
                f"{self.name} is damaged (SQLite quick_check: {one_line(problems[0])}{more})"
            )

    # -- failure -------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """Why this database is in the failed state (damage found), or None."""
        return self._failure

    def fail(self, reason: str) -> None:
        """Enter the failed state: no more writes. Logged once, the first reason kept."""
        with self._failure_lock:
            if self._failure is not None:
                return
            self._failure = one_line(reason)
        if not self._log_failures:
            return
        log.error(
            "store %s is damaged: %s; it takes no more writes or changesets. "
            "Run 'vesper check %s', then restore it from a peer (docs/integrity.md)",
            self.name,
            self._failure,
            self.name,
        )

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Damage found inside this block fails the open, which raises it: not logged."""
        self._log_failures = False
        try:
            yield
        finally:
            self._log_failures = True

    def damaged(self) -> StoreDamaged:
        """The error every write answers once the database has failed."""
        return StoreDamaged(
            f"store {self.name} is damaged and takes no more writes or changesets "
            f"({self._failure}); restore it from a peer (docs/integrity.md)"
        )

    def _translate(self, exc: Exception, what: str) -> StorageError:
        """The Vesper error for ``exc`` raised while doing ``what``; damage fails the
        database, anything else (disk full, locked, I/O) stays a retryable error."""
        if isinstance(exc, json.JSONDecodeError):
            self.fail(f"{what}: stored JSON does not parse ({exc})")
            return self.damaged()
        if is_damage(exc):
            self.fail(f"{what}: {exc}")
            return self.damaged()
        return StorageError(f"{what}: {exc}")

    def _take_process_lock(self, path: Path) -> None:
        # Two processes on one file would each keep their own counters and clocks in
        # memory and hand out the same changeset ids: refuse the second one.
        self._lock_file = open(f"{path}.lock", "a+")  # noqa: SIM115 - held until close
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise StorageError(f"{path} is in use by another Vesper process") from None

    def _connect(self, cache_kib: int) -> sqlite3.Connection:
        target = self.location.path or ":memory:"
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous={self.location.synchronous.upper()}")
        conn.execute(f"PRAGMA cache_size=-{cache_kib}")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _check_schema(self) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.conn.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StorageError(
                f"{self.location.path}: schema version {row[0]} is not "
                f"supported (this Vesper reads {SCHEMA_VERSION})"
            )

    # -- transactions --------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; it commits when the block ends, rolls back on error."""
        with self.lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            if self._failure is not None:
                raise self.damaged()
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise self._translate(exc, "write failed") from exc
            try:
                yield conn
            except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
                # Disk full, I/O error, locked database: nothing was written, and the
                # same call may succeed later (the replication worker retries it).
                # A damaged file fails the database instead: retrying cannot cure it.
                _rollback(conn)
                raise self._translate(exc, "write failed") from exc
            except BaseException:
                _rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                _rollback(conn)
                raise self._translate(exc, "commit failed") from exc

    def fetch(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        """Run one read statement on the writer connection (short reads)."""
        with self.lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._translate(exc, "read failed") from exc

    def read(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        """One read statement on a reader connection, so it does not wait for the
        writer (an in-memory store has only the one connection)."""
        with self.snapshot() as reader:
            return reader.fetch(sql, params)

    @contextmanager
    def snapshot(self) -> Iterator[Reader]:
        """A reader whose statements all see one snapshot (file) or run under the lock.

        Damage met inside the block (a corrupt page, stored JSON that does not parse)
        fails the database and raises StoreDamaged, so a streaming iterator over a
        snapshot raises rather than ending early as if it were complete.
        """
        if self.location.path is None:
            try:
                yield _LockedReader(self)
            except json.JSONDecodeError as exc:
                raise self._translate(exc, "read failed") from exc
            return
        conn = self._checkout_reader()
        try:
            conn.execute("BEGIN")
            try:
                yield Reader(conn)
            finally:
                conn.execute("COMMIT")
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
            conn.close()
            raise self._translate(exc, "read failed") from exc
        except BaseException:
            conn.close()
            raise
        else:
            self._checkin_reader(conn)

    def _checkout_reader(self) -> sqlite3.Connection:
        # The pool has its own lock: a reader must never wait behind a commit.
        with self._pool_lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            if self._readers:
                return self._readers.pop()
        return self._connect(READER_CACHE_KIB)

    def _checkin_reader(self, conn: sqlite3.Connection) -> None:
        with self._pool_lock:
            if not self._closed and len(self._readers) < READER_POOL_SIZE:
                self._readers.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            if self._checkpointer is not None:
                self._checkpointer.stop()
            with self._pool_lock:
                for conn in self._readers:
                    conn.close()
                self._readers.clear()
            conn = getattr(self, "conn", None)
            if conn is not None:
                if self.location.path is not None:
                    # Readers may still be open elsewhere; the WAL is replayed next open.
                    with contextlib.suppress(sqlite3.DatabaseError):
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    @property
    def closed(self) -> bool:
        return self._closed


class Reader:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def fetch(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()


class _LockedReader(Reader):
    def __init__(self, db: Database) -> None:
        self._db = db

    def fetch(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        return self._db.fetch(sql, params)


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls some failed transactions back by itself (I/O errors, a full disk);
    # a second ROLLBACK would then raise and hide the error that matters.
    if conn.in_transaction:
        with suppress(sqlite3.DatabaseError):
            conn.execute("ROLLBACK")


def remove_database_files(path: str) -> None:
    """Delete a database and its WAL side files (tests and tools)."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        with suppress(FileNotFoundError):
            os.unlink(path + suffix)


class _Checkpointer(threading.Thread):
    """Copies committed WAL pages into the database file in the background.

    PASSIVE checkpoints never block the writer or readers; once one has copied every
    frame, the writer starts the WAL over from the beginning at its next commit.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(name="vesper-checkpoint", daemon=True)
        self._conn = conn
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL_S):
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            self._conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)
