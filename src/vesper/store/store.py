"""The Vesper store: documents, transactions, history and remote changesets.

Every public method is thread-safe. Writes are serialised on one SQLite connection;
each commit, local or remote, is one SQLite transaction that writes the objects, the
changeset, the per-object history index, the outbox row and the new version vector
together, so a crash leaves either all of it or none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from vesper.document.values import normalize_numbers
from vesper.errors import (
    HistoryDisabled,
    InvalidChangeset,
    InvalidOperation,
    PreconditionFailed,
    StorageError,
    StoreDamaged,
    WritesRefused,
)
from vesper.history.changeset import (
    FORMAT_VERSION,
    MAX_CHANGESET_BYTES,
    Changeset,
    iso_time,
    parse_changeset,
)
from vesper.history.hlc import HybridClock, wall_ms_of
from vesper.history.revision import (
    dominates,
    format_revision,
    is_valid_branch_id,
    parse_revision,
)
from vesper.merge.register import ObjectState, new_object_row, new_object_version
from vesper.query.planner import Planner
from vesper.storage.database import Database
from vesper.storage.url import parse_storage_url
from vesper.store import changes as change_queries
from vesper.store import history as history_queries
from vesper.store import idempotency as idempotency_keys
from vesper.store.apply_rows import WRITE_OBJECT_CHANGES, WRITE_OBJECTS, ApplyRows, ObjectRow
from vesper.store.changes import Change
from vesper.store.digest import KEPT_MARK, DigestIndex
from vesper.store.digest_worker import DigestWorker
from vesper.store.indexes import PropertyIndexes
from vesper.store.integrity import ChainWatch, verify_on_open
from vesper.store.ops import Op, check_version, fold, object_op, parse_op, update_op
from vesper.store.outbox_tail import OutboxTail
from vesper.store.pending import PendingIndex
from vesper.store.query import Query, iter_objects, parse_where, run_query
from vesper.trust.signing import content_hash

if TYPE_CHECKING:
    from vesper.config import Settings

log = logging.getLogger(__name__)

VERSIONED_OPS = 100
"""Commits of at most this many operations report their objects' new versions."""
_IN_CHUNK = 500
_NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 FROM changesets"


GC_PAUSE_OBJECTS = 1_000
DEFAULT_MAX_PENDING = 100_000
MAX_PENDING_BYTES = 512 * 1024 * 1024
PENDING_SHARE = 4
"""One origin may hold at most 1/PENDING_SHARE of the pending set."""


@contextlib.contextmanager
def _gc_paused(objects: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while a large commit builds its rows.

    A 100,000-object transaction allocates millions of containers that are all alive
    until it ends; generation-2 collections over them took half its time. Pausing is
    process-wide but short, and nothing a commit allocates forms reference cycles.
    """
    if objects < GC_PAUSE_OBJECTS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What a local commit answers."""

    revision: str
    """The store's revision after the commit."""
    ids: list[str]
    """The ids of the objects the commit touched, in operation order."""
    changeset: str
    """The new changeset's id ``<branch_id>.<counter>``."""
    versions: dict[str, str | None] = field(default_factory=dict)
    """Each touched object's version after the commit (None: it does not exist), for
    commits of at most VERSIONED_OPS operations."""
    replayed: bool = False
    """The answer of an earlier commit with the same idempotency key: nothing new."""


@dataclass(frozen=True, slots=True)
class Fork:
    """Two different changesets of one origin where its history allows only one."""

    changeset: Changeset
    """The one received, which is not applied."""
    ours: str
    """Content hash this node holds: of the same id, or of its predecessor."""
    theirs: str
    """The received changeset's hash, or the predecessor hash its ``prev`` names."""
    reason: str
    """``fork`` (same id, other content) or ``broken_chain`` (``prev`` is not the hash
    of the predecessor this node holds)."""

    def describe(self) -> str:
        cs = self.changeset
        if self.reason == "fork":
            return (
                f"fork of origin {cs.origin}: {cs.id} here has hash {self.ours}, "
                f"the one received has {self.theirs}"
            )
        return (
            f"broken chain of origin {cs.origin}: {cs.id} names predecessor hash "
            f"{self.theirs}, but {cs.origin}.{cs.counter - 1} here has {self.ours}"
        )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``apply_many`` did with each changeset it was given."""

    applied: list[str]
    """Ids applied now, given ones and released pending ones, in apply order."""
    pending: list[str]
    """Ids stored as pending: a predecessor is missing."""
    duplicates: list[str]
    """Ids the store already had (no-ops)."""
    forks: list[Fork] = field(default_factory=list)
    """Changesets refused because they contradict the history held (never applied)."""
    adopted: list[str] = field(default_factory=list)
    """Ids of held changesets that arrived signed where the held copy was not: the
    signature was kept (a store written before signing becomes servable)."""
    dropped: list[Changeset] = field(default_factory=list)
    """Changesets not kept because the pending set is full for their origin (catch-up
    fetches them again once their predecessors are here)."""


class Store:
    """A Vesper datastore. Use :func:`open_store` to make one."""

    def __init__(
        self,
        storage_url: str = "mem://",
        branch_id: str = "0A",
        save_history: bool = True,
        outbox: bool = False,
        max_pending: int = DEFAULT_MAX_PENDING,
        indexes: Sequence[str] = (),
    ) -> None:
        if not is_valid_branch_id(branch_id):
            raise ValueError(f"branch_id must be 1-64 of A-Za-z0-9_-, got {branch_id!r}")
        self.branch_id = branch_id
        self.save_history = save_history
        self.outbox_enabled = outbox and save_history
        self.max_pending = max_pending
        self.db = Database(parse_storage_url(storage_url))
        self._watch: ChainWatch | None = None
        try:
            self._load_meta()
            if not self.db.location.in_memory:
                # A damaged history must not be served nor built on: verified before
                # anything else runs, then kept verified while the store runs.
                checkpoint = verify_on_open(self.db, self.branch_id)
                self._watch = ChainWatch(self.db, self.branch_id, checkpoint)
            self._open_digest()
            self.indexes = PropertyIndexes(self.db)
            for path in indexes:
                self.indexes.add(path)
        except BaseException:
            self.db.close()
            raise
        self._commit_listeners: list[Callable[[CommitResult], None]] = []
        self._change_listeners: list[Callable[[], None]] = []
        self.writes_refused: str | None = None
        """Why local writes are refused (None: they are taken); see ``refuse_writes``."""
        if self._watch is not None:
            self._watch.start()
        self.indexes.start()

    # -- lifecycle -----------------------------------------------------------------

    def _load_meta(self) -> None:
        rows = dict(self.db.fetch("SELECT key, value FROM meta"))
        stored = rows.get("branch_id")
        if stored is None:
            self.db.fetch("INSERT INTO meta VALUES ('branch_id', ?)", (self.branch_id,))
        elif stored != self.branch_id:
            raise StorageError(
                f"this store belongs to branch {stored!r}, not "
                f"{self.branch_id!r}; a branch id never changes"
            )
        try:
            state = orjson.loads(rows.get("state", '{"vv": {}, "hlc": 0, "live": 0}'))
            self._vv: dict[str, int] = state["vv"]
            self._clock = HybridClock(state["hlc"])
            self._live = state["live"]
            heads = state.get("heads")
            self._digest_kept = state.get(KEPT_MARK) is True
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise StoreDamaged(
                f"{self.db.name} is damaged (its state in meta does not parse)"
            ) from None
        # A store written before changesets were chained has no heads: compute them
        # once from the last changeset of each origin.
        self._heads: dict[str, str] = self._compute_heads() if heads is None else heads
        self._pending = PendingIndex.load(self.db)
        self._outbox: int = self.db.fetch("SELECT count(*) FROM outbox")[0][0]
        self._tail = OutboxTail(self.db.fetch("SELECT coalesce(max(seq), 0) FROM changesets")[0][0])

    def _open_digest(self) -> None:
        self._digest = DigestIndex.load(
            self.db, format_revision(self._vv), self._digest_kept, DigestWorker.shared()
        )
        if self._digest.stale:
            # Written at once, with the mark, so the next open reads it instead.
            with self.db.lock, self._rollback_memory_on_error(), self.db.write() as conn:
                self._save_state(conn)

    def _compute_heads(self) -> dict[str, str]:
        heads = {}
        for origin, counter in self._vv.items():
            rows = self.db.fetch(
                "SELECT body FROM changesets WHERE origin = ? AND counter = ?", (origin, counter)
            )
            if rows:
                heads[origin] = content_hash(orjson.loads(rows[0][0]))
        return heads

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        self.indexes.stop()
        self.db.close()

    @property
    def failure(self) -> str | None:
        """Why this store failed (damage found while it ran), or None. A failed store
        takes no local writes and no changesets (StoreDamaged); reads go on while they
        succeed."""
        return self.db.failure

    def verify_chain(self) -> None:
        """Hash and chain now every changeset stored since the last verification (the
        store does this in the background about once a second); StoreDamaged if any
        is damaged, and the store has failed then."""
        if self._watch is not None and self.db.failure is None:
            self._watch.verify(None)
        if self.db.failure is not None:
            raise self.db.damaged()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- local writes --------------------------------------------------------------

    def create(
        self,
        doc: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        idempotency: tuple[str, str] | None = None,
    ) -> CommitResult:
        """Create one object, or several in one changeset; ``id`` is generated if absent.
        With ``idempotency`` (key, request fingerprint), a repeat of a commit made with
        that key answers as it did, committing nothing (``store.idempotency``)."""
        docs = list(doc) if isinstance(doc, list | tuple) else [doc]
        if not docs:
            raise InvalidOperation("create needs at least one object")
        with _gc_paused(len(docs)):
            many = len(docs) > 1
            return self._commit(
                [
                    object_op("create", d, where=f"object {i}" if many else "object")
                    for i, d in enumerate(docs)
                ],
                idempotency,
            )

    def replace(
        self,
        doc: Mapping[str, Any],
        obj_id: str | None = None,
        *,
        if_version: str | None = None,
        if_absent: bool = False,
    ) -> CommitResult:
        """Replace a whole object (creating it if absent). With ``if_version``, only if
        the object is at that version; with ``if_absent``, only if it does not exist
        (PreconditionFailed otherwise)."""
        return self._commit(
            [_conditional(object_op("replace", doc, obj_id), if_version, if_absent)]
        )

    def update(
        self, obj_id: str, patch: Mapping[str, Any], *, if_version: str | None = None
    ) -> CommitResult:
        """Apply a JSON Merge Patch (RFC 7396) to an existing object."""
        return self._commit([_conditional(update_op(obj_id, patch), if_version, False)])

    def delete(self, obj_id: str, *, if_version: str | None = None) -> CommitResult:
        op = parse_op({"op": "delete", "id": obj_id})
        return self._commit([_conditional(op, if_version, False)])

    def transaction(
        self, ops: Sequence[Mapping[str, Any]], *, idempotency: tuple[str, str] | None = None
    ) -> CommitResult:
        """Several operations committed as one changeset, or not at all. An op's
        ``if_version`` is checked against the object as stored before the transaction."""
        if isinstance(ops, str | bytes | Mapping) or not isinstance(ops, Sequence):
            raise InvalidOperation("ops must be a list of operations")
        if not ops:
            raise InvalidOperation("a transaction needs at least one operation")
        with _gc_paused(len(ops)):
            parsed = [parse_op(op, f"ops[{i}]") for i, op in enumerate(ops)]
            return self._commit(parsed, idempotency)

    def version(self, obj_id: str) -> tuple[str, str] | None:
        """``(document JSON, version)`` of a live object, read together, or None."""
        found = self._live_state(obj_id)
        return None if found is None else (found[0], found[1].version())

    def _live_state(self, obj_id: str) -> tuple[str, ObjectState] | None:
        rows = self.db.read("SELECT doc, state FROM objects WHERE id = ? AND live = 1", (obj_id,))
        if not rows:
            return None
        doc, state = rows[0]
        return doc, ObjectState.load(obj_id, doc, state)

    def refuse_writes(self, reason: str | None) -> None:
        """Refuse local writes with ``reason`` (None takes them again). Replication does
        this while this node's own history may be ahead elsewhere, or when its peers
        refuse its key: a commit then could reuse a changeset id that means something
        else on the other nodes."""
        self.writes_refused = reason

    def _commit(self, ops: list[Op], idempotency: tuple[str, str] | None = None) -> CommitResult:
        if self.db.failure is not None:
            raise self.db.damaged()  # before a refusal: its cure does not cure this
        if self.writes_refused is not None:
            raise WritesRefused(self.writes_refused)
        with self.db.lock:
            with self._rollback_memory_on_error(), self.db.write() as conn:
                if idempotency is not None:
                    earlier = idempotency_keys.earlier(conn, *idempotency)
                    if earlier is not None:
                        return CommitResult(**earlier, replayed=True)
                live_docs: dict[str, str] = {}
                states = self._load_states(conn, {op.id for op in ops}, live_docs)
                _check_conditions(ops, states)
                changes = [_normalized(c) for c in fold(ops, states.get)]
                counter = self._vv.get(self.branch_id, 0) + 1
                hlc = self._clock.tick()
                base = dict(self._vv)
                self._vv[self.branch_id] = counter
                body = {
                    "v": FORMAT_VERSION,
                    "id": f"{self.branch_id}.{counter}",
                    "origin": self.branch_id,
                    "revision": format_revision(self._vv),
                    "base_revision": format_revision(base),
                    "prev": self._heads.get(self.branch_id, "") if counter > 1 else "",
                    "hlc": hlc,
                    "time": iso_time(wall_ms_of(hlc)),
                    "changes": changes,
                }
                self._heads[self.branch_id] = content_hash(body)
                versions: dict[str, str | None] | None = {} if len(ops) <= VERSIONED_OPS else None
                self._write_changes(
                    conn, states, live_docs, changes, self.branch_id, counter, hlc, base, versions
                )
                queued = None
                if self.save_history:
                    text = orjson.dumps(body).decode()
                    if len(text) > MAX_CHANGESET_BYTES:
                        # Every node refuses a larger one: it could never replicate.
                        raise InvalidOperation(
                            f"this write makes a changeset of {len(text)} bytes, over the"
                            f" limit of {MAX_CHANGESET_BYTES}: split it into several writes"
                        )
                    seq = self._insert_changeset(conn, self.branch_id, counter, body, changes, text)
                    if self.outbox_enabled:
                        conn.execute("INSERT INTO outbox(seq) VALUES (?)", (seq,))
                        self._outbox += 1
                        queued = seq, text
                self._save_state(conn)
                result = CommitResult(
                    body["revision"], [op.id for op in ops], body["id"], versions or {}
                )
                if idempotency is not None:
                    idempotency_keys.remember(
                        conn, *idempotency, result.revision, result.ids, result.changeset
                    )
            if queued is not None:
                self._tail.append(*queued)  # committed; in seq order, under the lock
        for listener in self._commit_listeners:
            listener(result)
        for changed in self._change_listeners:
            changed()
        return result

    def add_commit_listener(self, listener: Callable[[CommitResult], None]) -> None:
        """Call ``listener`` after every local commit (outside the store's lock; it must
        not block: the replication sender uses it to wake up)."""
        self._commit_listeners.append(listener)

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit or apply that stored changesets
        (outside the store's lock, on the thread that wrote; it must not block: the
        changes feed uses it to wake its clients)."""
        self._change_listeners.append(listener)

    # -- remote changesets ---------------------------------------------------------

    def apply(self, changeset: object) -> ApplyResult:
        """Apply one changeset from another node (dict, JSON text or bytes)."""
        return self.apply_many([changeset])

    def apply_many(self, changesets: Iterable[object]) -> ApplyResult:
        """Apply changesets from other nodes in one transaction.

        Each is validated first; if any is malformed, InvalidChangeset is raised and
        nothing changes. Duplicates are no-ops; a changeset whose predecessors are
        missing is kept as pending and applied, in causal order, once they arrive.
        """
        if not self.save_history:
            raise HistoryDisabled("applying remote changesets needs save_history = True")
        parsed = []
        for i, raw in enumerate(changesets):
            try:
                parsed.append(parse_changeset(raw, self.branch_id))
            except InvalidChangeset as exc:
                raise InvalidChangeset(f"changesets[{i}]: {exc}") from None
        return self.apply_parsed(parsed)

    def apply_parsed(self, parsed: Sequence[Changeset]) -> ApplyResult:
        """``apply_many`` for changesets already checked by ``parse_changeset``."""
        applied: list[str] = []
        pending: list[str] = []
        duplicates: list[str] = []
        forks: list[Fork] = []
        dropped: list[Changeset] = []
        adopted: list[str] = []
        size = sum(len(cs.changes) for cs in parsed)
        with (
            _gc_paused(size),
            self.db.lock,
            self._rollback_memory_on_error(),
            self.db.write() as conn,
        ):
            rows = ApplyRows(conn.execute(_NEXT_SEQ).fetchone()[0])
            for cs in parsed:
                # Deliverable first: a copy already waiting as pending (perhaps a bad
                # one with an impossible causal context) must not shadow a good one.
                if self._deliverable(cs):
                    fork = self._chain_break(cs)
                    if fork is not None:
                        forks.append(fork)
                        continue
                    self._apply_one(conn, cs, rows)
                    applied.append(cs.id)
                elif self._vv.get(cs.origin, 0) >= cs.counter or self._pending.has(cs):
                    rows.flush(conn)  # the held copy may be one of this batch
                    fork = self._compare_copy(conn, cs, adopted)
                    if fork is None:
                        duplicates.append(cs.id)
                    else:
                        forks.append(fork)
                elif self._pending_full(cs):
                    dropped.append(cs)
                else:
                    self._pending.add(conn, cs)
                    pending.append(cs.id)
            if applied:
                applied.extend(self._drain_pending(conn, forks, rows))
                rows.flush(conn)
                self._save_state(conn)
        if applied:
            for changed in self._change_listeners:
                changed()
        released = set(applied)
        return ApplyResult(
            applied, [p for p in pending if p not in released], duplicates, forks, adopted, dropped
        )

    def _chain_break(self, cs: Changeset) -> Fork | None:
        """A deliverable changeset whose ``prev`` is not the hash of the predecessor this
        store holds belongs to another history of its origin. Format 1 has no chain."""
        prev = cs.prev
        if prev is None:
            return None
        ours = self._heads.get(cs.origin, "") if cs.counter > 1 else ""
        if prev == ours:
            return None
        return Fork(cs, ours, prev, "broken_chain")

    def _compare_copy(self, conn: Any, cs: Changeset, adopted: list[str]) -> Fork | None:
        """A changeset this store already holds (applied or pending): the same content
        is a duplicate, and a signature the held copy lacks is taken over (so a store
        written before signing becomes servable); other content is a fork."""
        table = "changesets" if self._vv.get(cs.origin, 0) >= cs.counter else "pending"
        row = conn.execute(
            f"SELECT body FROM {table} WHERE origin = ? AND counter = ?", (cs.origin, cs.counter)
        ).fetchone()
        if row is None:
            return None
        held = orjson.loads(row[0])
        ours = content_hash(held)
        if ours != cs.hash:
            return Fork(cs, ours, cs.hash, "fork")
        if cs.signed and "sig" not in held:
            conn.execute(
                f"UPDATE {table} SET body = ? WHERE origin = ? AND counter = ?",
                (orjson.dumps(cs.body).decode(), cs.origin, cs.counter),
            )
            adopted.append(cs.id)
        return None

    def _pending_full(self, cs: Changeset) -> bool:
        """Bounds of the pending set: a changeset further ahead of what this store has
        than one origin's share can never be released within the bounds, so it is not
        kept, nor any past the total, the origin's share or the byte limit."""
        share = max(1, self.max_pending // PENDING_SHARE)
        return (
            cs.counter - self._vv.get(cs.origin, 0) > share
            or len(self._pending) >= self.max_pending
            or self._pending.count(cs.origin) >= share
            or self._pending.bytes >= MAX_PENDING_BYTES
        )

    def _deliverable(self, cs: Changeset) -> bool:
        return self._vv.get(cs.origin, 0) == cs.counter - 1 and dominates(self._vv, cs.base)

    def _apply_one(self, conn: Any, cs: Changeset, rows: ApplyRows) -> None:
        live_docs: dict[str, str] = {}
        ids = [c["id"] for c in cs.changes]
        states = self._load_states(conn, set(ids), live_docs, rows.objects)
        self._clock.observe(cs.hlc)
        self._write_changes(
            conn,
            states,
            live_docs,
            cs.changes,
            cs.origin,
            cs.counter,
            cs.hlc,
            cs.base,
            held=rows.objects,
        )
        rows.add_changeset(cs.origin, cs.counter, orjson.dumps(cs.body).decode(), ids)
        self._vv[cs.origin] = cs.counter
        self._heads[cs.origin] = cs.hash

    def _drain_pending(self, conn: Any, forks: list[Fork], rows: ApplyRows) -> list[str]:
        released: list[str] = []
        progress = True
        while progress and self._pending:
            progress = False
            for cs in self._pending.ready(conn, self._vv):
                fork = self._chain_break(cs)
                if fork is not None:
                    forks.append(fork)  # taken out of pending: it is quarantined
                    continue
                self._apply_one(conn, cs, rows)
                released.append(cs.id)
                progress = True
        return released

    # -- shared write helpers ------------------------------------------------------

    def _load_states(
        self,
        conn: Any,
        ids: set[str],
        live_docs: dict[str, str],
        held: dict[str, ObjectRow] | None = None,
    ) -> dict[str, ObjectState]:
        """The stored states of ``ids``, from ``held`` rows not yet written first; the
        documents of the live ones go to ``live_docs`` (the digest takes them out when
        the write replaces them)."""
        out: dict[str, ObjectState] = {}
        if held:
            for obj_id in ids & held.keys():
                _, live, doc, state, _ = held[obj_id]
                out[obj_id] = ObjectState.load(obj_id, doc, state)
                if live:
                    live_docs[obj_id] = doc
            ids = ids - out.keys()
        id_list = list(ids)
        for start in range(0, len(id_list), _IN_CHUNK):
            chunk = id_list[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for obj_id, live, doc, state in conn.execute(
                f"SELECT id, live, doc, state FROM objects WHERE id IN ({marks})", chunk
            ):
                out[obj_id] = ObjectState.load(obj_id, doc, state)
                if live:
                    live_docs[obj_id] = doc
        return out

    def _write_changes(
        self,
        conn: Any,
        states: dict[str, ObjectState],
        live_docs: dict[str, str],
        changes: list[dict[str, Any]],
        origin: str,
        counter: int,
        hlc: int,
        base: Mapping[str, int],
        versions: dict[str, str | None] | None = None,
        *,
        held: dict[str, ObjectRow] | None = None,
    ) -> None:
        """Merge ``changes`` into the objects' rows (and the digest); the version of
        each object after it goes to ``versions`` when given. The rows are written, or
        kept in ``held`` for the caller to write."""
        rows = []
        live_delta = 0
        digest = self._digest
        indexed = bool(self.indexes.maintained)
        indexed_docs: list[tuple[str, dict[str, Any] | None]] = []
        for change in changes:
            obj_id = change["id"]
            state = states.get(obj_id)
            if state is None and change.get("exists") and not change.get("unset"):
                props = change.get("set", {})
                row = new_object_row(obj_id, props, origin, counter, hlc)
                rows.append((obj_id, *row))
                live_delta += 1
                new_object = {"id": obj_id, **props}
                digest.change(obj_id, None, row[1], new_object)
                if versions is not None:
                    versions[obj_id] = new_object_version(props, origin, counter)
                if indexed:
                    indexed_docs.append((obj_id, new_object))
                continue
            if state is None:
                state = states[obj_id] = ObjectState(obj_id)
            was_live = state.live
            state.apply(change, origin, counter, hlc, base)
            live, doc_text, state_text, conflicted = state.dump()
            live_delta += live - was_live
            rows.append((obj_id, live, doc_text, state_text, conflicted))
            if versions is not None:
                versions[obj_id] = state.version() if live else None
            if indexed:
                indexed_docs.append((obj_id, state.document()))
            new_doc = doc_text if live else None
            digest.change(obj_id, live_docs.pop(obj_id, None), new_doc)
            if new_doc is not None:
                live_docs[obj_id] = new_doc
        if held is not None:
            held.update((row[0], row) for row in rows)
        else:
            conn.executemany(WRITE_OBJECTS, rows)
        if indexed:
            self.indexes.rewrite(conn, indexed_docs)
        self._live += live_delta

    def _insert_changeset(
        self,
        conn: Any,
        origin: str,
        counter: int,
        body: dict[str, Any],
        changes: list[dict[str, Any]],
        text: str | None = None,
    ) -> int:
        """Store a changeset (``text``: ``body`` as JSON, when the caller has it)."""
        cur = conn.execute(
            "INSERT INTO changesets(origin, counter, body) VALUES (?, ?, ?)",
            (origin, counter, orjson.dumps(body).decode() if text is None else text),
        )
        seq = cur.lastrowid
        conn.executemany(WRITE_OBJECT_CHANGES, [(c["id"], seq) for c in changes])
        return seq

    def _save_state(self, conn: Any) -> None:
        """Write the state of the transaction: the vector, clock, count and heads, and
        the digest's bucket states."""
        self._digest.stage(conn, format_revision(self._vv))
        state = orjson.dumps(
            {
                "vv": self._vv,
                "hlc": self._clock.last,
                "live": self._live,
                "heads": self._heads,
                KEPT_MARK: True,
            }
        )
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('state', ?)", (state.decode(),)
        )

    @contextmanager
    def _rollback_memory_on_error(self) -> Iterator[None]:
        """Keep the in-memory vector, clock, counts, pending index and digest equal to
        the database: when a transaction (or its COMMIT) fails, put them back."""
        saved = dict(self._vv), self._clock.last, self._live, dict(self._heads), self._outbox
        try:
            yield
        except BaseException:
            self._vv, self._clock.last, self._live, self._heads, self._outbox = saved
            self._pending.rollback()
            self._digest.rollback()
            raise
        self._pending.commit()
        self._digest.commit()

    # -- reads ---------------------------------------------------------------------

    @property
    def revision(self) -> str:
        """The version vector of everything this store has applied."""
        with self.db.lock:
            return format_revision(self._vv)

    @property
    def version_vector(self) -> dict[str, int]:
        with self.db.lock:
            return dict(self._vv)

    @property
    def count(self) -> int:
        """Number of live objects."""
        return self._live

    def get(self, obj_id: str) -> dict[str, Any] | None:
        raw = self.get_json(obj_id)
        return None if raw is None else orjson.loads(raw)

    def get_json(self, obj_id: str) -> str | None:
        """The object as stored JSON text, or None."""
        rows = self.db.read("SELECT doc FROM objects WHERE id = ? AND live = 1", (obj_id,))
        return rows[0][0] if rows else None

    def query(
        self,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Live objects sorted by id, optionally filtered by top-level equality."""
        for text in self.query_json(where, limit, after):
            yield orjson.loads(text)

    def query_json(
        self,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Iterator[str]:
        """Like :meth:`query`, yielding stored JSON text (no re-encoding)."""
        return self.query_snapshot(where, limit, after)[1]

    def query_snapshot(
        self,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
        after: str | None = None,
        conflicted: bool = False,
        with_conflicts: bool = False,
    ) -> tuple[str, Iterator[str]]:
        """``query_json`` plus the revision its snapshot shows, read in the same read
        transaction (so a listing names exactly the revision of its contents);
        ``conflicted`` and ``with_conflicts`` as for ``store.query.iter_objects``."""
        spec = parse_where(where)
        return iter_objects(self.db, spec, limit, after, conflicted, with_conflicts)

    def run_query(self, query: Query) -> dict[str, Any]:
        """A sorted, projected, counted or explained listing (``store.query.run_query``),
        served by an index where one fits."""
        return run_query(self.db, query, Planner(self.indexes.ready))

    def plans_index(self, where: Mapping[str, Any] | None) -> bool:
        """Whether an index would serve a listing with this ``where``."""
        if where is None or not self.indexes.maintained:
            return False
        with self.db.snapshot() as reader:
            return Planner(self.indexes.ready).plan(reader, parse_where(where)) is not None

    def get_with_conflicts(self, obj_id: str) -> tuple[str, str] | None:
        """``{"object", "conflicts"}`` of a live object as JSON text, and its version; or
        None."""
        found = self._live_state(obj_id)
        if found is None:
            return None
        doc, obj = found
        text = orjson.dumps({"object": orjson.Fragment(doc), "conflicts": obj.conflicts()})
        return text.decode(), obj.version()

    def digest(self) -> str:
        """The LtHash digest of the live objects (docs/http-api.md, ``/api/digest``)."""
        return self._digest.snapshot.digest

    def revision_and_digest(self) -> tuple[str, str]:
        """The revision and the digest of that very revision (one snapshot)."""
        snapshot = self._digest.snapshot
        return snapshot.revision, snapshot.digest

    def digest_buckets(self) -> tuple[str, str, list[str]]:
        """The revision, the digest and the 256 bucket digests, all of that revision.

        Object ``o`` falls in bucket ``sha256(o["id"])[0]``: two stores whose digests
        differ hold different objects exactly in the buckets whose digests differ.
        """
        snapshot = self._digest.snapshot
        return snapshot.revision, snapshot.digest, snapshot.bucket_digests()

    def conflicts(self, obj_id: str | None = None) -> list[dict[str, Any]]:
        """Properties whose concurrent writes disagree, with winner and losers."""
        sql = "SELECT id, doc, state FROM objects WHERE conflicted = 1"
        params: tuple[Any, ...] = ()
        if obj_id is not None:
            sql += " AND id = ?"
            params = (obj_id,)
        out: list[dict[str, Any]] = []
        for oid, doc, state in self.db.read(sql + " ORDER BY id", params):
            out.extend(ObjectState.load(oid, doc, state).conflicts())
        return out

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def pending_explained(self, limit: int = 20) -> list[dict[str, Any]]:
        """Why changesets wait, per origin (at most ``limit``): how many, the first, and
        the changesets it still needs (its predecessor, or what its context names)."""
        out = []
        with self.db.lock:
            for origin, (first, waiting) in list(self._pending.summary().items())[:limit]:
                lowest = self._pending.lowest(origin)
                assert lowest is not None
                counter, base = lowest
                have = self._vv.get(origin, 0)
                if have < counter - 1:
                    missing = [f"{origin}.{have + 1}"]
                else:
                    missing = [
                        f"{k}.{self._vv.get(k, 0) + 1}"
                        for k, c in sorted(base.items())
                        if self._vv.get(k, 0) < c
                    ]
                out.append(
                    {
                        "origin": origin,
                        "waiting": waiting,
                        "first": f"{origin}.{first}",
                        "missing": missing,
                    }
                )
        return out

    def pending_origins(self) -> list[str]:
        """Origins of the changesets waiting for a predecessor."""
        with self.db.lock:
            return list(self._pending.summary())

    # -- history -------------------------------------------------------------------

    def _need_history(self) -> None:
        if not self.save_history:
            raise HistoryDisabled("this store was opened with save_history = False")

    def changesets(
        self, since: str | Mapping[str, int] = "", limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Changesets not contained in ``since``, in this node's (causal) apply order."""
        self._need_history()
        vector = parse_revision(since) if isinstance(since, str) else dict(since)
        return history_queries.changesets_since(self.db, self.version_vector, vector, limit)

    def feed_start(self, since: str) -> tuple[int, dict[str, int] | None]:
        """Where the changes feed given ``since`` starts (``store.changes.start_of``)."""
        self._need_history()
        return change_queries.start_of(self.db, since)

    def changes(
        self, after_seq: int, limit: int, skip: Mapping[str, int] | None = None
    ) -> list[Change]:
        """Up to ``limit`` changesets after position ``after_seq``, in apply order."""
        self._need_history()
        return change_queries.changes_after(self.db, after_seq, limit, skip)

    def change_at(self, seq: int) -> Change | None:
        self._need_history()
        return change_queries.change_at(self.db, seq)

    def changeset(self, changeset_id: str) -> dict[str, Any] | None:
        self._need_history()
        return history_queries.changeset_by_id(self.db, changeset_id)

    def object_history(self, obj_id: str) -> list[dict[str, Any]]:
        """Every revision of one object, oldest first, with the object after each."""
        self._need_history()
        return history_queries.object_history(self.db, obj_id)

    def get_at(self, obj_id: str, revision: str) -> dict[str, Any] | None:
        """The object as it was when the store had exactly ``revision``."""
        self._need_history()
        return history_queries.object_at(self.db, obj_id, parse_revision(revision))

    def objects_at(self, revision: str) -> list[dict[str, Any]]:
        """All live objects, sorted by id, as of ``revision`` (replayed in memory)."""
        self._need_history()
        return history_queries.objects_at(self.db, parse_revision(revision))

    # -- outbox (used by replication) ----------------------------------------------

    def outbox_peek(self, limit: int = 100, after_seq: int = 0) -> list[tuple[int, str]]:
        """Up to ``limit`` unconfirmed changesets ``(seq, body)`` in commit order: from
        memory when it holds them (see OutboxTail), else from the table."""
        fresh = self._tail.peek(limit, after_seq)
        if fresh is not None:
            return fresh
        return self.db.read(
            "SELECT o.seq, c.body FROM outbox o JOIN changesets c ON c.seq = o.seq "
            "WHERE o.seq > ? ORDER BY o.seq LIMIT ?",
            (after_seq, limit),
        )

    def outbox_confirm(self, seqs: Iterable[int]) -> None:
        """The broker confirmed these: they leave the outbox."""
        with self.db.lock:
            with self.db.write() as conn:
                cur = conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._outbox -= cur.rowcount  # committed

    def queue_unsigned_own(self) -> int:
        """Once per store: put this store's own changesets that carry no signature
        (written before signing, or before replication was on) in the outbox, so that
        the sender signs and publishes them and every peer takes the signature over for
        its copy. Returns how many were queued."""
        with self.db.lock:
            with self.db.write() as conn:
                if conn.execute("SELECT 1 FROM meta WHERE key = 'own_signed'").fetchone():
                    return 0
                cur = conn.execute(
                    "INSERT OR IGNORE INTO outbox(seq) SELECT seq FROM changesets "
                    "WHERE origin = ? AND json_extract(body, '$.sig') IS NULL "
                    "AND seq NOT IN (SELECT seq FROM outbox)",
                    (self.branch_id,),
                )
                conn.execute("INSERT INTO meta VALUES ('own_signed', '1')")
                top = conn.execute("SELECT coalesce(max(seq), 0) FROM changesets").fetchone()[0]
            self._outbox += cur.rowcount  # committed
            if cur.rowcount:
                self._tail.forget(top)
            return cur.rowcount

    def own_head(self) -> tuple[int, str]:
        """This store's own counter and the content hash of its latest changeset."""
        with self.db.lock:
            return self._vv.get(self.branch_id, 0), self._heads.get(self.branch_id, "")

    @property
    def outbox_count(self) -> int:
        """Committed changesets the broker has not confirmed (kept in memory: status
        reads it on every call, and a long outage makes the outbox large)."""
        return self._outbox


def _conditional(op: Op, if_version: str | None, if_absent: bool) -> Op:
    if if_version is None and not if_absent:
        return op
    version = check_version(if_version) if if_version is not None else None
    return dataclasses.replace(op, if_version=version, if_absent=if_absent)


def _check_conditions(ops: list[Op], states: Mapping[str, ObjectState]) -> None:
    """Raise PreconditionFailed unless every conditional op finds its object as it
    requires (under the write lock, in the commit's transaction: no write between the
    check and the commit)."""
    for op in ops:
        if op.if_version is None and not op.if_absent:
            continue
        state = states.get(op.id)
        current = state.version() if state is not None and state.live else None
        if op.if_absent and current is not None:
            raise PreconditionFailed(f"object {op.id!r} exists (the write is for a new one)")
        if op.if_version is not None and current != op.if_version:
            found = "does not exist" if current is None else f"is at version {current}"
            raise PreconditionFailed(
                f"object {op.id!r} {found}, not {op.if_version}: it changed since it was "
                "read; read it again"
            )


def _normalized(change: dict[str, Any]) -> dict[str, Any]:
    props = change.get("set")
    if props:
        fixed = normalize_numbers(props)
        if fixed is not props:
            return {**change, "set": fixed}
    return change


def open_store(
    storage_url: str = "mem://",
    branch_id: str = "0A",
    save_history: bool = True,
    outbox: bool = False,
    max_pending: int = DEFAULT_MAX_PENDING,
    indexes: Sequence[str] = (),
) -> Store:
    """Open (creating if needed) a store. ``storage_url``: ``sqlite:///file.db`` or
    ``mem://``. ``indexes``: property paths to index (docs/queries.md); an index not
    there yet is built in the background."""
    return Store(storage_url, branch_id, save_history, outbox, max_pending, indexes)


def open_store_from_settings(settings: Settings) -> Store:
    """Open the store a node's configuration describes (``storage_url``, ``branch_id``,
    ``save_history``; the outbox is kept when replication is configured)."""
    return Store(
        settings.effective_storage_url,
        settings.branch_id or settings.trunk_id,
        settings.save_history,
        outbox=bool(settings.replication_hosts),
        max_pending=settings.replication_max_pending,
        indexes=settings.indexes,
    )
