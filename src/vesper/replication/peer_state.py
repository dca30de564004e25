"""Where a peer stands against this node, from its announcements.

A peer announces its revision every few seconds. Compared with this node's revision
that gives two differences: ``behind_us``, the changesets this node has that the peer
lacks, and ``ahead_of_us``, the converse. Each is followed with a mark: the moment it
appeared and the revision that must be reached for that difference to be gone. A mark
that gets covered moves on (the difference of then is gone, perhaps replaced by newer
changesets), which is progress; so is a difference that got smaller, or catch-up
traffic with the peer. From that:

- ``in_sync``: no difference, or only changesets in flight (a difference that arose
  while in sync, or after the peer covered the previous one within ``SYNC_GRACE_S``,
  and is younger than that; never one the peer missed while it was quiet);
- ``catching_up``: a difference older than that, which made progress within
  ``STUCK_AFTER_S``;
- ``stuck``: a difference that made no progress for ``STUCK_AFTER_S``;
- ``gone``: nothing heard for ``replication_peer_gone_after`` seconds.

Everything here costs O(entries of the two revisions) per peer, never a walk of the
history: the one store read, the time of the oldest changeset a peer lacks, is one
point lookup per origin, cached (a changeset never changes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vesper.history.hlc import wall_ms_of
from vesper.history.revision import dominates

IN_SYNC = "in_sync"
CATCHING_UP = "catching_up"
STUCK = "stuck"
GONE = "gone"
STATES = (IN_SYNC, CATCHING_UP, STUCK, GONE)

SYNC_GRACE_S = 10.0
"""A difference younger than this is in flight: idle nodes announce every 5 s and
changesets usually arrive before the announcement that names them is compared."""
STUCK_AFTER_S = 30.0
"""A difference that has not shrunk, and no catch-up batch moved, for this long."""
BIG_GAP = 1_000
"""A difference this large is logged when it appears (a node returning from far
behind); smaller ones are in the catch-up lines anyway."""


def difference(mine: dict[str, int], theirs: dict[str, int]) -> int:
    """Changesets in ``mine`` that ``theirs`` lacks."""
    return sum(c - theirs.get(o, 0) for o, c in mine.items() if c > theirs.get(o, 0))


@dataclass
class Mark:
    since: float
    """Monotonic time the difference was first seen."""
    covers: dict[str, int]
    """The revision that, once reached by the side that lacks, clears that difference."""
    in_flight: bool
    """It arose while the two were in sync, or from a mark covered soon enough, so for
    a while it is taken for changesets on their way; a difference seen at first sight
    of the peer, or while it was quiet, is not."""
    missed: bool = False
    """The peer was quiet while it was outstanding: it is being caught up, and the mark
    that follows it once covered is not in flight either (the one after that is, if
    the peer covers it within the grace)."""


@dataclass
class Standing:
    """One peer's differences with this node, followed over time."""

    behind_us: int = 0
    ahead_of_us: int = 0
    behind: Mark | None = None
    """Follows ``behind_us``: ``covers`` is this node's revision, which the peer must
    reach."""
    ahead: Mark | None = None
    """Follows ``ahead_of_us``: ``covers`` is the peer's revision, which this node must
    reach."""
    progress_at: float = 0.0
    """Monotonic time of the last progress, or of the difference appearing (the stuck
    clock starts there)."""
    gap_logged: bool = False
    """A difference over BIG_GAP was logged; cleared once back in sync."""
    seen_once: bool = False
    compared_at: float = float("-inf")
    """Monotonic time of the last comparison."""

    def update(
        self, mine: dict[str, int], theirs: dict[str, int], now: float, quiet: bool = False
    ) -> None:
        """Compare the two revisions (the dicts are kept, never changed: pass fresh
        ones, as the store and each announcement give). ``quiet``: the peer has not
        been heard for a while, so nothing is in flight to or from it: what it lacks
        now it will have to catch up, also after it is back."""
        behind, ahead = difference(mine, theirs), difference(theirs, mine)
        if behind < self.behind_us or ahead < self.ahead_of_us:
            self.progress_at = now
        first = not self.seen_once
        self.seen_once = True
        self.compared_at = now
        self.behind, moved_b = _follow(self.behind, behind, theirs, mine, now, first)
        self.ahead, moved_a = _follow(self.ahead, ahead, mine, theirs, now, first)
        if moved_b or moved_a or first:
            self.progress_at = now
        if quiet:
            for mark in (self.behind, self.ahead):
                if mark is not None:
                    mark.in_flight, mark.missed = False, True
        self.behind_us, self.ahead_of_us = behind, ahead
        if behind == 0 and ahead == 0:
            self.gap_logged = False

    def moved(self, now: float) -> None:
        """Catch-up traffic with the peer moved (a batch applied or acknowledged)."""
        self.progress_at = now

    def big_gap(self, heard_since_compared: bool) -> bool:
        """True once per episode, when a difference over BIG_GAP is seen in an
        announcement newer than the last comparison: a silent peer's revision is old
        news, and this node moving away from it says nothing about the peer."""
        if not heard_since_compared:
            return False
        if self.gap_logged or max(self.behind_us, self.ahead_of_us) < BIG_GAP:
            return False
        self.gap_logged = True
        return True

    def state(self, now: float, silent_s: float, gone_after_s: float) -> str:
        if silent_s >= gone_after_s:
            return GONE
        marks = [m for m in (self.behind, self.ahead) if m is not None]
        if all(m.in_flight and now - m.since < SYNC_GRACE_S for m in marks):
            return IN_SYNC
        if now - self.progress_at < STUCK_AFTER_S:
            return CATCHING_UP
        return STUCK

    def ahead_seconds(self, now: float) -> float | None:
        """How long this node has lacked changesets the peer has: at least since the
        oldest of its announcements whose changesets are still missing here."""
        return None if self.ahead is None else round(now - self.ahead.since, 1)


def _follow(
    mark: Mark | None,
    count: int,
    holder: dict[str, int],
    current: dict[str, int],
    now: float,
    first: bool,
) -> tuple[Mark | None, bool]:
    """The mark after a comparison, and whether the stuck clock starts again (the
    difference was cleared, appeared, or moved on). ``holder`` is the revision of the
    side that lacks, ``current`` that of the side that has."""
    if count == 0:
        return None, mark is not None
    if mark is None:
        return Mark(now, current, in_flight=not first), True
    if dominates(holder, mark.covers):
        # Covered: what is left is in flight if the peer keeps up (the old mark was, or
        # it was covered within the grace); a peer being caught up is not.
        kept_up = mark.in_flight or (not mark.missed and now - mark.since < SYNC_GRACE_S)
        return Mark(now, current, in_flight=kept_up), True
    return mark, False


class ChangesetTimes:
    """Wall-clock times of changesets by origin and counter, read once each.

    ``lookup(id)`` returns a stored changeset's body (or None). Peers that lack the same
    changesets (all of them, after a burst of writes) share the entries; the cache is
    emptied when it reaches ``size``.
    """

    def __init__(self, lookup: Callable[[str], dict[str, Any] | None], size: int = 4096) -> None:
        self._lookup = lookup
        self._size = size
        self._times: dict[tuple[str, int], int | None] = {}

    def oldest_lacking_ms(
        self, mine: dict[str, int], theirs: dict[str, int], budget: list[int]
    ) -> int | None:
        """Wall-clock ms of the oldest changeset in ``mine`` that ``theirs`` lacks: the
        first missing one of each origin. ``budget[0]`` bounds the store reads (shared by
        the calls of one status); None when out of budget or nothing is lacking."""
        oldest: int | None = None
        for origin, counter in mine.items():
            first = theirs.get(origin, 0) + 1
            if counter < first:
                continue
            key = (origin, first)
            if key not in self._times:
                if budget[0] <= 0:
                    return None
                budget[0] -= 1
                if len(self._times) >= self._size:
                    self._times.clear()
                self._times[key] = self._read(f"{origin}.{first}")
            when = self._times[key]
            if when is not None and (oldest is None or when < oldest):
                oldest = when
        return oldest

    def _read(self, changeset_id: str) -> int | None:
        try:
            body = self._lookup(changeset_id)
        except Exception:
            return None  # a store that fails says so elsewhere; an age is not worth it
        hlc = body.get("hlc") if body else None
        return wall_ms_of(hlc) if type(hlc) is int else None
