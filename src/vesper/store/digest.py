"""The store's digest, kept up to date by every write: an LtHash of its live objects.

Each live object ``o`` (as ``GET /api/objects/{id}`` returns it, ``id`` included)
counts by the LtHash element of its RFC 8785 canonical JSON (``vesper.trust.canonical``:
the bytes of the ``rfc8785`` package wherever that is defined; an integer beyond 2**53,
which JCS has no form for, is written as its exact decimal digits). Objects fall in 256
buckets by the first byte of the SHA-256 of their id; each bucket has its own state,
and the store's state is the lane-wise sum of the 256. Two stores with the same objects
have the same digest, and the bucket digests say where two that differ differ.

The bucket states live in the ``digest_buckets`` table, written in the transaction of
the write that changed them, so the file never holds a digest of other objects than
its own. The state in ``meta`` says the table is kept (``digest_buckets: true``): a
version that did not keep it rewrites that state without the mark, so a store written
by it, even after one that kept the table, computes the table again when opened.

Readers take the published ``DigestSnapshot``, replaced whole after each commit, so
the status and ``/api/digest`` never wait for a write, nor see half of one.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from typing import Any, Protocol

import orjson

from vesper.document import lthash
from vesper.document.lthash import LaneSum
from vesper.storage.database import Database
from vesper.store.digest_worker import DigestWorker, Items, WorkerGone, add_elements
from vesper.trust.canonical import canonical

log = logging.getLogger(__name__)

BUCKETS = 256
KEPT_MARK = "digest_buckets"
"""Key in the stored state: true when the digest_buckets table is kept up to date."""
_PAGE_ROWS = 1000
_WRITE_BUCKET = "INSERT OR REPLACE INTO digest_buckets(bucket, state) VALUES (?, ?)"
_ZERO_BLOB = bytes(lthash.STATE_BYTES)
MEMO_SIZE = 2048
"""Elements of recently written documents kept by their JSON text (~2 KiB each): an
update then takes the replaced document's element from here instead of computing its
canonical form and SHAKE128 again (about half of what an update costs the digest)."""
CHUNK = 1000
"""Objects a transaction collects before handing them to the digest worker process;
a transaction smaller than this is computed in the writer, at the end."""
WORKER_QUEUE = 2
"""Chunks the worker has at most: one it works on and the next."""


def bucket_of(obj_id: str) -> int:
    """The bucket of an object: the first byte of the SHA-256 of its id (UTF-8)."""
    return hashlib.sha256(obj_id.encode("utf-8")).digest()[0]


def object_element(doc: Any) -> int:
    """The LtHash element of one object (a parsed document, ``id`` included)."""
    return lthash.element(canonical(doc))


class DigestSnapshot:
    """The digest of one committed revision; immutable once published."""

    __slots__ = ("_digest", "blobs", "revision", "total")

    def __init__(self, revision: str, total: int, blobs: list[bytes]) -> None:
        self.revision = revision
        self.total = total
        """The store's state (the sum of the bucket states)."""
        self.blobs = blobs
        """Each bucket's state as its 2048 bytes (a list never changed once published:
        the next commit copies it)."""
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        # Computed on the first read, not in the commit: most revisions are never read.
        if self._digest is None:
            self._digest = lthash.hexdigest(lthash.to_bytes(self.total))
        return self._digest

    def bucket_digests(self) -> list[str]:
        return [_bucket_digest(blob) for blob in self.blobs]


@functools.lru_cache(maxsize=2 * BUCKETS)
def _bucket_digest(blob: bytes) -> str:
    # A commit replaces the blobs of the buckets it changed and keeps the others, and a
    # bytes object keeps its hash: unchanged buckets cost a dictionary look-up each.
    return lthash.hexdigest(blob)


class DigestIndex:
    """The bucket states, the changes of the transaction under way, and the snapshot.

    ``change`` collects the objects a transaction replaces; ``stage`` (inside the
    transaction) computes the new bucket states and writes them; ``commit`` (after
    COMMIT) publishes them, ``rollback`` forgets them. Called with the store's write
    lock held.

    ``change`` only collects texts; their elements are computed in chunks of CHUNK
    objects by the ``worker`` process while the transaction goes on, and what is left
    (or every chunk, without a worker or when it fails) in the writer by ``stage``.
    """

    def __init__(
        self,
        states: list[int],
        revision: str,
        stale: bool = False,
        worker: DigestWorker | None = None,
    ) -> None:
        self._states = states
        self._worker = worker
        total = lthash.EMPTY_STATE
        for state in states:
            total = lthash.add(total, state)
        self._total = total
        self._added: dict[int, LaneSum] = {}
        self._removed: dict[int, LaneSum] = {}
        self._new: list[tuple[int, str, Any]] = []
        """(bucket, text, parsed or None) of objects the transaction made live."""
        self._gone: list[tuple[int, str]] = []
        """(bucket, text) of replaced objects whose element is not in the memo."""
        self._handed: list[tuple[Items, Items]] = []
        """Chunks given to the worker, kept until it answers, should it fail."""
        self._leased = False
        """Whether this transaction has the worker."""
        self._dirty: set[int] = set(range(BUCKETS)) if stale else set()
        """Buckets whose rows the next ``stage`` writes even if nothing changed them."""
        self._staged: tuple[dict[int, tuple[int, bytes]], int, str] | None = None
        self._memo: dict[str, int] = {}
        """Stored document text -> its element: a pure function, so a rolled-back
        write leaves nothing wrong in it."""
        blobs = [_ZERO_BLOB if s == 0 else lthash.to_bytes(s) for s in states]
        self.snapshot = DigestSnapshot(revision, total, blobs)
        """What readers see: the digest of the last committed revision."""

    @property
    def stale(self) -> bool:
        """True until the computed table is written (a store that did not keep it)."""
        return len(self._dirty) == BUCKETS

    @classmethod
    def load(
        cls, db: Database, revision: str, kept: bool, worker: DigestWorker | None = None
    ) -> DigestIndex:
        """The stored bucket states, or, when the table was not kept (a store written by
        an older version) or is not whole, the states computed from the objects."""
        if kept:
            states = stored_states(db)
            if states is not None:
                return cls(states, revision, worker=worker)
        started = time.monotonic()
        states, objects = _computed_states(db)
        if objects:
            log.info(
                "%s: digest of %d objects computed in %.1f s (the store did not keep it)",
                db.name,
                objects,
                time.monotonic() - started,
            )
        return cls(states, revision, stale=True, worker=worker)

    # -- writes --------------------------------------------------------------------

    def change(self, obj_id: str, old: str | None, new: str | None, new_doc: Any = None) -> None:
        """Object ``obj_id`` goes from stored JSON text ``old`` to ``new`` (None: not
        live); ``new_doc``, when given, is ``new`` parsed. The same text both sides (a
        write that lost to a concurrent one) changes nothing."""
        if old == new:
            return
        bucket = bucket_of(obj_id)
        if old is not None:
            found = self._memo.get(old)
            if found is not None:
                self._sum(self._removed, bucket).add(found)
            else:
                self._gone.append((bucket, old))
        if new is not None:
            self._new.append((bucket, new, new_doc))
        if len(self._new) + len(self._gone) >= CHUNK:
            self._hand_over_or_compute()

    def _hand_over_or_compute(self) -> None:
        """A chunk is full: the worker takes it, unless it has WORKER_QUEUE to do
        already (it is slower per object than the writer, which then shares the work
        rather than waiting at the end) or another store's transaction has it."""
        new, gone, self._new, self._gone = self._new, self._gone, [], []
        worker = self._worker
        if worker is not None and (self._leased or worker.acquire()):
            self._leased = True
            try:
                if worker.backlog() < WORKER_QUEUE:
                    # The canonical form of a parsed document costs the writer less
                    # than parsing its text would cost the worker, the busier of the two.
                    added = [
                        (b, text, False) if doc is None else (b, canonical(doc).decode(), True)
                        for b, text, doc in new
                    ]
                    removed = [(b, text, False) for b, text in gone]
                    worker.send(added, removed)
                    # What was sent, not the parsed documents: smaller, and enough.
                    self._handed.append((added, removed))
                    return
            except WorkerGone:
                self._without_worker()
        self._compute(new, gone)

    def _compute(self, new: list[tuple[int, str, Any]], gone: list[tuple[int, str]]) -> None:
        for bucket, text, doc in new:
            self._sum(self._added, bucket).add(self._element(text, doc))
        for bucket, text in gone:
            self._sum(self._removed, bucket).add(self._element(text, None))

    def _collect(self) -> None:
        """Compute what is left in the writer, then add in what the worker computed
        meanwhile."""
        self._compute(self._new, self._gone)
        self._new, self._gone = [], []
        if not self._leased:
            return
        assert self._worker is not None
        try:
            added, removed = self._worker.finish()
        except WorkerGone:
            self._leased = False
            self._without_worker()
            return
        self._leased = False
        self._handed = []
        for bucket, state in added.items():
            self._sum(self._added, bucket).add(state)
        for bucket, state in removed.items():
            self._sum(self._removed, bucket).add(state)

    def _without_worker(self) -> None:
        """The worker failed: compute what it was given, and let it go."""
        handed, self._handed = self._handed, []
        for added, removed in handed:
            add_elements(self._added, added)
            add_elements(self._removed, removed)
        if self._leased:
            self._leased = False
            assert self._worker is not None
            self._worker.abandon()

    def _forget(self) -> None:
        """Drop the transaction's collected changes and let the worker go."""
        self._added.clear()
        self._removed.clear()
        self._new, self._gone, self._handed = [], [], []
        if self._leased:
            self._leased = False
            assert self._worker is not None
            self._worker.abandon()

    def _element(self, text: str, doc: Any) -> int:
        memo = self._memo
        found = memo.get(text)
        if found is not None:
            return found
        found = memo[text] = object_element(orjson.loads(text) if doc is None else doc)
        if len(memo) > MEMO_SIZE:
            del memo[next(iter(memo))]  # the oldest: dicts keep insertion order
        return found

    @staticmethod
    def _sum(sums: dict[int, LaneSum], bucket: int) -> LaneSum:
        found = sums.get(bucket)
        if found is None:
            found = sums[bucket] = LaneSum()
        return found

    def stage(self, conn: Any, revision: str) -> None:
        """Write the bucket states the transaction changed; ``revision`` is the one it
        commits."""
        self._collect()
        if self._staged is not None:
            changed, total, _ = self._staged
        else:
            changed, total = {}, self._total
        touched = self._dirty | self._added.keys() | self._removed.keys()
        for bucket in touched:
            state = changed[bucket][0] if bucket in changed else self._states[bucket]
            # One delta for the bucket and the total: each lane operation costs ~1 µs.
            added, removed = self._added.get(bucket), self._removed.get(bucket)
            if added is not None and removed is not None:
                delta = lthash.subtract(added.value(), removed.value())
                state, total = lthash.add(state, delta), lthash.add(total, delta)
            elif added is not None:
                delta = added.value()
                state, total = lthash.add(state, delta), lthash.add(total, delta)
            elif removed is not None:
                delta = removed.value()
                state, total = lthash.subtract(state, delta), lthash.subtract(total, delta)
            changed[bucket] = (state, lthash.to_bytes(state))
        self._added.clear()
        self._removed.clear()
        if touched:
            conn.executemany(_WRITE_BUCKET, [(b, changed[b][1]) for b in sorted(touched)])
        self._staged = (changed, total, revision)

    def commit(self) -> None:
        """The transaction committed: publish what it staged."""
        staged, self._staged = self._staged, None
        self._forget()
        if staged is None:
            return
        changed, total, revision = staged
        blobs = list(self.snapshot.blobs)
        for bucket, (state, blob) in changed.items():
            self._states[bucket] = state
            blobs[bucket] = blob
        self._total = total
        self._dirty.clear()
        self.snapshot = DigestSnapshot(revision, total, blobs)

    def rollback(self) -> None:
        """The transaction rolled back: the states stay those of the last commit."""
        self._staged = None
        self._forget()


class Fetcher(Protocol):
    """What reads the tables: a Database (its writer) or a snapshot's Reader."""

    def fetch(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]: ...


def stored_states(reader: Fetcher) -> list[int] | None:
    """The 256 bucket states of the digest_buckets table, or None unless it holds each
    exactly once, well-formed."""
    states: list[int | None] = [None] * BUCKETS
    for bucket, blob in reader.fetch("SELECT bucket, state FROM digest_buckets"):
        if type(bucket) is not int or not 0 <= bucket < BUCKETS or type(blob) is not bytes:
            return None
        try:
            states[bucket] = lthash.from_bytes(blob)
        except ValueError:
            return None
    if any(state is None for state in states):
        return None
    return states  # type: ignore[return-value]


def computed_states(reader: Fetcher) -> tuple[list[int], int]:
    """The bucket states of the live objects, and how many there are (all statements
    on one snapshot: give a Reader)."""
    sums = [LaneSum() for _ in range(BUCKETS)]
    objects = 0
    after = ""
    while True:
        rows = reader.fetch(
            "SELECT id, doc FROM objects WHERE live = 1 AND id > ? ORDER BY id LIMIT ?",
            (after, _PAGE_ROWS),
        )
        for obj_id, doc in rows:
            sums[bucket_of(obj_id)].add(object_element(orjson.loads(doc)))
        objects += len(rows)
        if len(rows) < _PAGE_ROWS:
            break
        after = rows[-1][0]
    return [s.value() for s in sums], objects


def _computed_states(db: Database) -> tuple[list[int], int]:
    with db.snapshot() as reader:
        return computed_states(reader)
