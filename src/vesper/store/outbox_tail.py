"""The newest outbox rows, kept in memory so the sender need not read them back.

Every local commit writes its changeset and an outbox row in its transaction; the
replication sender then wants exactly those rows, moments later. Reading them back
(a read transaction, a join, the body text) cost the sender ~90 µs per message, on a
thread that competes with the committers for the GIL. So each commit also hands its row
here, and ``peek`` answers from memory whenever it can prove that memory holds every
outbox row the caller asks for; otherwise (after a reconnect, a restart, or rows queued
by other means) the caller reads the table, which stays the durable record.

The proof is ``floor``: every outbox row with a seq above it is in ``rows``. It starts at
the highest seq in the store when it opens (every later outbox row comes from a commit),
and rises past any row dropped: rows handed out (the sender moved past them), rows over
``MAX_ROWS`` (a broker away for long), and everything when rows are queued behind its
back.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque

MAX_ROWS = 10_000
"""Rows kept (about 3 MB of typical changesets); older ones are read from the table."""


class OutboxTail:
    def __init__(self, floor: int) -> None:
        self._rows: deque[tuple[int, str]] = deque()
        self._floor = floor
        self._lock = threading.Lock()

    def append(self, seq: int, body: str) -> None:
        """A committed outbox row (commits call this in seq order, under the store's
        lock, after their transaction committed)."""
        with self._lock:
            self._rows.append((seq, body))
            if len(self._rows) > MAX_ROWS:
                self._floor = self._rows.popleft()[0]

    def forget(self, floor: int) -> None:
        """Rows up to ``floor`` were put in the outbox some other way: nothing below it
        may be answered from memory."""
        with self._lock:
            self._floor = max(self._floor, floor)
            while self._rows and self._rows[0][0] <= self._floor:
                self._rows.popleft()

    def peek(self, limit: int, after_seq: int) -> list[tuple[int, str]] | None:
        """Up to ``limit`` outbox rows after ``after_seq``, or None when memory cannot
        tell (read the table then). Rows up to ``after_seq`` are dropped: a caller asks
        again from below only after a reconnect, and then reads the table."""
        with self._lock:
            if after_seq < self._floor:
                return None
            rows = self._rows
            while rows and rows[0][0] <= after_seq:
                self._floor = rows.popleft()[0]
            self._floor = max(self._floor, after_seq)
            return list(itertools.islice(rows, limit))
