"""Hybrid logical clock.

A timestamp is one integer: wall-clock milliseconds shifted left by 16 bits plus a
logical counter. ``tick`` never goes backwards and ``observe`` folds in every timestamp
seen from another node, so a write made after seeing another write always carries a
larger timestamp, even when the two nodes' clocks disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LOGICAL_BITS = 16
MAX_AHEAD_MS = 3600 * 1000
"""How far ahead of this node's wall clock an observed timestamp may move its clock.

Supersession does not depend on clocks (a later write names what it saw in its causal
context), so capping loses no causality; timestamps only order concurrent writes. It
keeps a remote timestamp near the top of the range (a bogus clock, or a hostile
origin) from dragging every later local write along and leaving this node unable to
write anything its peers accept."""


def wall_ms_of(hlc: int) -> int:
    return hlc >> LOGICAL_BITS


class HybridClock:
    def __init__(self, last: int = 0, now_ms: Callable[[], int] | None = None) -> None:
        self.last = last
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)

    def tick(self) -> int:
        """A new timestamp for a local event, larger than every one seen before."""
        self.last = max(self._now_ms() << LOGICAL_BITS, self.last + 1)
        return self.last

    def observe(self, remote: int) -> None:
        remote = min(remote, (self._now_ms() + MAX_AHEAD_MS) << LOGICAL_BITS)
        if remote > self.last:
            self.last = remote
