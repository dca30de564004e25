"""Verifying the stored hash chain: on open, and a little at a time while the store runs.

Opening re-hashes only the changesets stored after the checkpoint (``store.chain``), so
it stays fast however large the store is. While the store runs, ``ChainWatch`` verifies
what was committed since, within a small time budget per round, and advances the
checkpoint: a restart then re-hashes only the last second or so of commits, and a
changeset altered after it was written is found while the node runs (the store fails).
"""

from __future__ import annotations

import logging
import threading
import time

from vesper.errors import StoreDamaged, VesperError
from vesper.storage.database import Database, Reader
from vesper.store.chain import (
    CHECKPOINT_KEY,
    ChainWalk,
    Checkpoint,
    Problems,
    load_checkpoint,
    read_state,
    scan,
)

log = logging.getLogger(__name__)

VERIFY_INTERVAL_S = 1.0
"""Seconds between two rounds of the running verification."""
VERIFY_BUDGET_S = 0.05
"""Time one round may spend hashing (it holds the GIL): at most ~5% of a core, some
7,000 changesets a round; what it does not reach waits for the next round."""
ANNOUNCE_ROWS = 100_000
"""An open with more changesets than this to verify says so (it takes seconds)."""


def verify_on_open(db: Database, own_branch: str) -> Checkpoint:
    """Check the checkpoint, then hash and chain every changeset stored after it, and
    advance it. Raises StoreDamaged naming the file and the first problem."""
    problems = Problems(limit=5)
    try:
        with db.opening(), db.snapshot() as reader:
            start = load_checkpoint(reader, problems)
            walk = ChainWalk(start, own_branch, problems)
            if not problems:
                _announce(db, reader, start.seq)
                for page in scan(reader, start.seq):
                    for row in page:
                        walk.feed(*row)
                walk.finish(read_state(reader))
    except StoreDamaged:
        raise StoreDamaged(f"{db.name} is damaged ({db.failure})") from None
    if problems:
        raise StoreDamaged(f"{db.name} is damaged ({problems.summary()})")
    checkpoint = walk.checkpoint()
    if checkpoint != start:
        save_checkpoint(db, checkpoint)
    return checkpoint


def _announce(db: Database, reader: Reader, after_seq: int) -> None:
    rows = reader.fetch("SELECT count(*) FROM changesets WHERE seq > ?", (after_seq,))[0][0]
    if rows > ANNOUNCE_ROWS:
        log.info("store %s: verifying the hash chain of %d changesets", db.name, rows)


def save_checkpoint(db: Database, checkpoint: Checkpoint) -> None:
    with db.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (CHECKPOINT_KEY, checkpoint.encode()),
        )


class ChainWatch:
    """The running verification: a daemon thread, one round every VERIFY_INTERVAL_S."""

    def __init__(self, db: Database, own_branch: str, checkpoint: Checkpoint) -> None:
        self._db = db
        self._own = own_branch
        self._checkpoint = checkpoint
        self._finished = True
        """Whether the last round reached the end (and checked the heads)."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vesper-chain", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def _run(self) -> None:
        while not self._stopping.wait(VERIFY_INTERVAL_S):
            try:
                self.verify(VERIFY_BUDGET_S)
            except VesperError as exc:
                if self._db.failure is not None or self._db.closed:
                    return
                # A full disk or a locked database: the next round tries again.
                log.debug("chain verification of %s skipped a round: %s", self._db.name, exc)
            except Exception:
                # A bug, not damage: say so once and leave the store serving.
                log.exception("chain verification of %s stopped", self._db.name)
                return
            if self._db.failure is not None:
                return

    def verify(self, budget_s: float | None) -> None:
        """One round: hash and chain what was stored after the checkpoint (within
        ``budget_s`` seconds, or all of it), then advance the checkpoint. Damage fails
        the database (``Database.failure``)."""
        with self._lock:
            problems = Problems(limit=1)
            with self._db.snapshot() as reader:
                walk = ChainWalk(self._checkpoint, self._own, problems)
                deadline = None if budget_s is None else time.monotonic() + budget_s
                complete = True
                for page in scan(reader, self._checkpoint.seq):
                    for row in page:
                        walk.feed(*row)
                    if deadline is not None and time.monotonic() > deadline:
                        complete = False
                        break
                if walk.rows == 0 and self._finished:
                    return  # nothing was stored since the last round
                if complete:
                    walk.finish(read_state(reader))
            if problems:
                self._db.fail(f"changeset chain: {problems.items[0]}")
                return
            checkpoint = walk.checkpoint()
            if checkpoint != self._checkpoint:
                save_checkpoint(self._db, checkpoint)
                self._checkpoint = checkpoint
            self._finished = complete
