"""One Vesper node: its settings, its store and its replication service, started and
closed together.

Front ends (the HTTP API, ``vesper serve``) hold a Node and ask it for the store and
the status; they never open stores or read configuration themselves.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

from vesper.config import Settings, parse_storage_url
from vesper.errors import StoreClosed, StoreDamaged
from vesper.replication.quarantine import Quarantine
from vesper.store import Store, open_store_from_settings
from vesper.trust.keys import NodeKey

log = logging.getLogger(__name__)


class ReplicationService(Protocol):
    """What a Node needs from its replication service (``ready_problems`` is
    optional: a service without it never makes the node unready)."""

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Node:
    """A node: ``start()`` opens the store, ``close()`` closes everything it opened.

    ``replication`` is None while replication is off (or not built yet); the status
    then reports the disabled shape, which has the same keys as the enabled one.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replication: ReplicationService | None = None
        self._store: Store | None = None
        self._lock = threading.Lock()

    @property
    def branch_id(self) -> str:
        # Settings turns a missing branch_id into trunk_id, so this is always a string.
        return self.settings.branch_id or self.settings.trunk_id

    @property
    def store(self) -> Store:
        store = self._store
        if store is None:
            raise StoreClosed(f"node {self.branch_id} is not running")
        return store

    @property
    def running(self) -> bool:
        return self._store is not None

    def start(self) -> Node:
        """Open the store (creating it if needed); raises VesperError if it cannot."""
        with self._lock:
            if self._store is None:
                try:
                    self._store = open_store_from_settings(self.settings)
                except StoreDamaged as exc:
                    raise StoreDamaged(f"{exc}; {self._restore_advice()}") from None
                log.debug("node %s opened %s", self.branch_id, self.settings.effective_storage_url)
            if self.replication is None and self.settings.replication_hosts:
                # Imported here: a node without replication never loads stomp.py.
                from vesper.replication.service import ReplicationConfig
                from vesper.replication.service import ReplicationService as Service

                key = self._load_key()
                service = Service(self._store, ReplicationConfig.from_settings(self.settings, key))
                service.start()
                try:
                    service.wait_started()
                except BaseException:
                    service.close()
                    self._store.close()
                    self._store = None
                    raise
                self.replication = service
        return self

    def _restore_advice(self) -> str:
        """What to do with a damaged store, for the one line that reports it."""
        path = parse_storage_url(self.settings.effective_storage_url).path
        if not self.settings.replication_hosts:
            return (
                f"this node does not replicate, so restore {path} from a backup "
                f"('vesper check {path}' lists every problem)"
            )
        return (
            f"restore it from a peer: move {path} and its -wal and -shm files aside and "
            f"start this node again with an empty store and its key "
            f"({self.settings.effective_key_file}): catch-up fetches its whole history "
            f"from its peers ('vesper check {path}' lists every problem; docs/integrity.md)"
        )

    def _load_key(self) -> NodeKey:
        path = Path(self.settings.effective_key_file)
        key, created = NodeKey.load_or_create(
            path, create=self.settings.replication_key_file is None
        )
        log.info(
            "node %s public key %s (%s %s)",
            self.branch_id,
            key.public,
            "new key written to" if created else "read from",
            path,
        )
        return key

    def close(self) -> None:
        """Stop replication, then close the store. Safe to call more than once."""
        with self._lock:
            replication, self.replication = self.replication, None
            store, self._store = self._store, None
        if replication is not None:
            replication.close()
        if store is not None:
            store.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready_reasons(self) -> list[str]:
        """Why this node should not get traffic now (``GET /ready``); empty when ready.

        Liveness is another matter (``/health``): a node with a damaged store keeps
        running, so it can say so, but it must not be sent writes.
        """
        store = self._store
        if store is None:
            return [f"node {self.branch_id} is not running"]
        reasons = []
        if store.failure is not None:
            reasons.append(f"store failed: {store.failure}")
        if store.writes_refused is not None:
            reasons.append(f"local writes refused: {store.writes_refused}")
        problems = getattr(self.replication, "ready_problems", None)
        if problems is not None:
            reasons.extend(problems())
        return reasons

    def quarantine(self, limit: int = 100, reason: str | None = None) -> list[dict[str, Any]]:
        """Rejected messages, newest first (``GET /api/quarantine``)."""
        return Quarantine(self.store.db).entries(limit, reason)

    def status(self) -> dict[str, Any]:
        """The ``GET /api/status`` document (docs/http-api.md).

        Asks the replication service, which takes locks that commits hold, so callers
        on an event loop run it in a thread.
        """
        store = self.store
        revision, digest, objects, outbox, pending = store_summary(store)
        if self.replication is not None:
            replication = self.replication.status()
            # The replication part reads them a moment later: one state throughout.
            replication.update(outbox=outbox, pending=pending)
        else:
            replication = disabled_replication_status(outbox, pending)
        return {
            "branch_id": self.branch_id,
            "public_key": replication.pop("public_key", None),
            "revision": revision,
            "digest": digest,
            "objects": objects,
            "pending": pending,
            "outbox": outbox,
            "replication": replication,
        }


SUMMARY_TRIES = 3
"""Unlocked reads of the summary before it is read under the store's lock."""


def store_summary(store: Store) -> tuple[str, str, int, int, int]:
    """The revision, the digest, the number of objects, the outbox and the pending
    counts of one and the same state.

    ``revision_and_digest`` reads one snapshot, and the object count is the store's
    in-memory one, which commits change under the store's lock: read under that lock,
    it belongs to the revision read with it (so do the outbox and pending counts,
    kept in memory under the same lock). The count belongs to the digest's state
    when the two revisions agree (a revision names exactly one set of changesets, and
    so one state). Commits may move the revision between the two reads, so after a few
    tries the digest is read under the lock too, which holds commits back meanwhile.
    """
    lock = store.db.lock
    for _ in range(SUMMARY_TRIES):
        revision, digest = store.revision_and_digest()
        with lock:
            if store.revision == revision:
                return revision, digest, store.count, store.outbox_count, store.pending_count
    with lock:
        revision, digest = store.revision_and_digest()
        return revision, digest, store.count, store.outbox_count, store.pending_count


def disabled_replication_status(outbox: int = 0, pending: int = 0) -> dict[str, Any]:
    """The ``replication`` part of the status of a node that does not replicate."""
    return {
        "enabled": False,
        "connected": None,
        "channel": None,
        "broker": None,
        "messages_sent": 0,
        "messages_received": 0,
        "send_errors": 0,
        "receive_errors": 0,
        "outbox": outbox,
        "pending": pending,
        "last_message_received": None,
        "peers": {},
        "forks": 0,
        "quarantined": {},
    }
