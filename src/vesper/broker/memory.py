"""The broker's memory budget (``--max-memory``), kept in byte counters of its own.

Two kinds of memory can be made to grow by clients, and both are counted here:

- ``partial``: the bytes of frames still arriving, held in each connection's parser;
- ``held``: messages the broker holds in memory for queues and subscriptions,
  undelivered or delivered and not yet acknowledged (a message fanned out to several
  subscriptions is counted once for each: an upper bound).

The budget is checked after every socket read. When ``partial + held`` is over the
limit, the connections with the largest unfinished frames get ERROR and are closed,
largest first, until it fits again: a client trickling in a huge frame is refused,
everybody else goes on. Held messages may use half of the budget; beyond that,
queues and durable subscriptions with a data folder keep new messages on disk only,
plain topic subscriptions that are behind are disconnected as slow consumers, and
connections that only publish into memory-only queues are paused until the held
bytes drain to three quarters of that half. It is not the process's RSS (Python
objects, socket buffers and SQLite's cache come on top), but it bounds everything a
client can make the broker keep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from vesper.broker.units import format_size

log = logging.getLogger("vesper.broker")


class PartialHolder(Protocol):
    """A connection, as far as the budget is concerned."""

    partial: int

    def evict_for_memory(self, used: int, limit: int) -> None: ...


class PausedPublisher(Protocol):
    def unblock(self, blocker: object) -> None: ...


class MemoryBudget:
    """Byte counters for partial frames and held messages, with the limit on both."""

    def __init__(self, limit: int, on_relief: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.held_limit = limit // 2
        """Held messages beyond this spill to disk, or pause or drop their clients."""
        self.partial = 0
        self.held = 0
        self.peak = 0
        """Highest ``used`` seen after a read was accounted for."""
        self.evicted = 0
        """Connections closed because their unfinished frames broke the budget."""
        self._holders: set[PartialHolder] = set()
        self._paused: set[PausedPublisher] = set()
        self._pressure = False
        self._evicting = False
        self._on_relief = on_relief
        self._logged_level = 0

    @property
    def used(self) -> int:
        return self.partial + self.held

    def stats(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "used": self.used,
            "partial_frames": self.partial,
            "held_messages": self.held,
            "peak": self.peak,
            "evicted_connections": self.evicted,
            "paused_publishers": len(self._paused),
        }

    # -- held messages -------------------------------------------------------------------

    def take(self, size: int) -> None:
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
        if self._pressure and self.held <= self.held_limit * 3 // 4:
            self._relieve()

    def held_full(self) -> bool:
        """True while held messages are over their half of the budget."""
        if self.held > self.held_limit:
            if not self._pressure:
                self._pressure = True
                log.info(
                    "broker memory: held messages at %s of %s: spilling to disk and"
                    " pausing publishers to memory-only queues",
                    format_size(self.held),
                    format_size(self.held_limit),
                )
            return True
        return False

    def pause(self, publisher: PausedPublisher) -> None:
        self._paused.add(publisher)

    def forget(self, publisher: PausedPublisher) -> None:
        self._paused.discard(publisher)

    def _relieve(self) -> None:
        self._pressure = False
        log.info("broker memory: held messages down to %s", format_size(self.held))
        paused, self._paused = self._paused, set()
        for publisher in paused:
            publisher.unblock(self)
        if self._on_relief is not None:
            self._on_relief()

    # -- partial frames ------------------------------------------------------------------

    def set_partial(self, holder: PartialHolder, size: int) -> None:
        """Record that ``holder`` now buffers ``size`` bytes of unfinished frames, and
        close the largest holders if that breaks the budget."""
        self.partial += size - holder.partial
        holder.partial = size
        if size:
            self._holders.add(holder)
        else:
            self._holders.discard(holder)
        if self.used > self.limit and not self._evicting:
            self._evict()
        used = self.used
        if used > self.peak:
            self.peak = used
        level = used * 4 // self.limit if self.limit else 0
        if level != self._logged_level:
            self._logged_level = level
            if level:
                log.info(
                    "broker memory: %s of %s in use (%s unfinished frames, %s messages)",
                    format_size(used),
                    format_size(self.limit),
                    format_size(self.partial),
                    format_size(self.held),
                )

    def _evict(self) -> None:
        self._evicting = True
        try:
            for holder in sorted(self._holders, key=lambda h: h.partial, reverse=True):
                if self.used <= self.limit:
                    break
                self.evicted += 1
                holder.evict_for_memory(self.used, self.limit)
                if holder.partial:  # it did not let go: forget it anyway
                    self.set_partial(holder, 0)
        finally:
            self._evicting = False
