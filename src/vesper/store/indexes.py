"""Property indexes: for each indexed path, an entry per live object holding a scalar
there, kept in the ``property_index`` table and used by the query planner.

Why not SQLite expression indexes on ``json_extract(doc, ...)``: ``CREATE INDEX`` builds
in one transaction, holding the store's write lock for the whole table (seconds at a
million objects, with every commit and apply waiting), and ``json_extract`` reads
``true`` as ``1``, while queries are type-exact. Here an entry keeps the value's type
rank beside it (``rank``: 1 null, 2 boolean, 3 number, 4 string, as in
``vesper.query.order``), numbers in ``num`` and strings in ``txt``; arrays and objects
are not indexed (such queries scan).

An index added to a store with objects is built by a background thread, 500 objects per
short write transaction, resuming after a restart where it stopped; writes keep the
entries of every index, built or building, in their own transaction. Only a built
(``ready``) index is used.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from vesper.errors import InvalidOperation
from vesper.query.expression import resolve
from vesper.storage.database import Database

log = logging.getLogger(__name__)

BUILD_CHUNK = 500
BUILD_PAUSE_S = 0.005
"""Between two chunks of a build: room for waiting commits."""
MAX_INDEXES = 32
BUILDING = "building"
READY = "ready"


def parse_path(text: object) -> tuple[str, ...]:
    if type(text) is not str or not text or len(text) > 1_000:
        raise InvalidOperation("an index is on a property path: a string like 'price' or 'a.b'")
    path = tuple(text.split("."))
    if any(not part for part in path):
        raise InvalidOperation(f"index path {text!r}: names joined by dots")
    return path


def entry(value: Any) -> tuple[int, float | None, str | None] | None:
    """``(rank, num, txt)`` of a value, or None for one that is not indexed."""
    if value is None:
        return 1, None, None
    kind = type(value)
    if kind is bool:
        return 2, float(value), None
    if kind in (int, float):
        return 3, float(value), None
    if kind is str:
        return 4, None, value
    return None


class PropertyIndexes:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._states: dict[str, str] = dict(db.fetch("SELECT path, state FROM indexes"))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what exists ------------------------------------------------------------------

    @property
    def maintained(self) -> list[str]:
        """Paths whose entries writes keep (built or building)."""
        return list(self._states)

    def ready(self, path: str) -> bool:
        return self._states.get(path) == READY

    def describe(self) -> list[dict[str, Any]]:
        rows = self._db.read("SELECT path, state, built_upto FROM indexes ORDER BY path")
        return [{"path": p, "state": s, "built_upto": b} for p, s, b in rows]

    # -- adding -------------------------------------------------------------------------

    def add(self, text: str) -> bool:
        """Declare an index on ``text``; True if it is new (its build starts)."""
        parse_path(text)
        with self._lock:
            if text in self._states:
                return False
            if len(self._states) >= MAX_INDEXES:
                raise InvalidOperation(f"at most {MAX_INDEXES} indexes")
            with self._db.lock, self._db.write() as conn:
                empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM objects)").fetchone()[0]
                state = READY if empty else BUILDING
                conn.execute(
                    "INSERT INTO indexes(path, state, built_upto) VALUES (?, ?, '')", (text, state)
                )
            self._states[text] = state
        log.info("index on %r added (%s)", text, state)
        self._wake.set()
        return True

    # -- writes keep the entries ---------------------------------------------------------

    def rewrite(
        self, conn: sqlite3.Connection, docs: Iterable[tuple[str, Mapping[str, Any] | None]]
    ) -> None:
        """Replace the entries of these objects (None: not live) in every maintained
        index, in the caller's write transaction."""
        paths = [(text, parse_path(text)) for text in self.maintained]
        if not paths:
            return
        rows = []
        ids = []
        for obj_id, doc in docs:
            ids.append((obj_id,))
            if doc is None:
                continue
            for text, path in paths:
                found = entry(resolve(doc, path))
                if found is not None:
                    rows.append((text, *found, obj_id))
        conn.executemany("DELETE FROM property_index WHERE id = ?", ids)
        conn.executemany(
            "INSERT INTO property_index(path, rank, num, txt, id) VALUES (?, ?, ?, ?, ?)", rows
        )

    # -- building -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vesper-index-build", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            building = [p for p, s in self._states.items() if s == BUILDING]
            if not building:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                self._build(building[0])
            except Exception:
                if self._db.closed or self._db.failure is not None:
                    return
                log.exception("building the index on %r failed; retrying", building[0])
                self._stop.wait(1.0)

    def _build(self, text: str) -> None:
        path = parse_path(text)
        started = last_log = time.monotonic()
        done = 0
        while not self._stop.is_set():
            with self._db.lock, self._db.write() as conn:
                after = conn.execute(
                    "SELECT built_upto FROM indexes WHERE path = ?", (text,)
                ).fetchone()[0]
                rows = conn.execute(
                    "SELECT id, doc FROM objects WHERE live = 1 AND id > ? ORDER BY id LIMIT ?",
                    (after, BUILD_CHUNK),
                ).fetchall()
                conn.executemany(
                    "DELETE FROM property_index WHERE path = ? AND id = ?",
                    [(text, obj_id) for obj_id, _ in rows],
                )
                entries = []
                for obj_id, doc in rows:
                    found = entry(resolve(orjson.loads(doc), path))
                    if found is not None:
                        entries.append((text, *found, obj_id))
                conn.executemany(
                    "INSERT INTO property_index(path, rank, num, txt, id) VALUES (?, ?, ?, ?, ?)",
                    entries,
                )
                finished = len(rows) < BUILD_CHUNK
                conn.execute(
                    "UPDATE indexes SET built_upto = ?, state = ? WHERE path = ?",
                    (rows[-1][0] if rows else after, READY if finished else BUILDING, text),
                )
            done += len(rows)
            if finished:
                self._states[text] = READY
                log.info(
                    "index on %r built: %d objects in %.1f s",
                    text,
                    done,
                    time.monotonic() - started,
                )
                return
            if time.monotonic() - last_log >= 5:
                last_log = time.monotonic()
                log.info("building the index on %r: %d objects so far", text, done)
            self._stop.wait(BUILD_PAUSE_S)
