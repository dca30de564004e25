"""Expiry of durable subscriptions nobody resumes (``--durable-expiry``).

A durable subscription keeps every message published to its topic while its
subscriber is away, forever unless someone deletes it. A node that is gone for good
(or a client that made thousands of them and left) would keep them all on disk. So
one that has had no consumer for ``durable_expiry`` seconds is deleted with its
messages, and a WARNING names it. Its last use is stored with it, so the clock keeps
running across broker restarts; the check runs at start and then periodically.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vesper.broker.destinations import Router

log = logging.getLogger("vesper.broker")

#: The longest wait between two checks; shorter expiries are checked more often.
MAX_CHECK_INTERVAL_S = 60.0
MIN_CHECK_INTERVAL_S = 0.05
#: While a durable subscription has a consumer, its last use is written this often at
#: most (it is also written whenever a consumer comes or goes).
TOUCH_INTERVAL_S = 3600.0


class DurableExpiry:
    """Finds and deletes durable subscriptions inactive for longer than ``expiry``."""

    def __init__(self, router: Router, expiry: float) -> None:
        self.router = router
        self.expiry = expiry
        self.removed = 0
        """Durable subscriptions deleted so far."""

    @property
    def enabled(self) -> bool:
        return self.expiry > 0

    @property
    def interval(self) -> float:
        """Seconds between checks: a quarter of the expiry, within bounds."""
        return min(MAX_CHECK_INTERVAL_S, max(MIN_CHECK_INTERVAL_S, self.expiry / 4))

    def check(self, now: float | None = None) -> list[str]:
        """Delete what has expired; returns the names deleted."""
        if not self.enabled:
            return []
        now = time.time() if now is None else now
        removed = []
        touch_every = min(TOUCH_INTERVAL_S, self.expiry / 4)
        for name, box in list(self.router.durables.items()):
            if box.consumers:
                if now - box.last_active >= touch_every:
                    box.touch()  # still in use: keep the stored time fresh
                continue
            idle = now - box.last_active
            if idle <= self.expiry:
                continue
            log.warning(
                "broker: durable subscription %r on %s (owner %s) had no consumer for"
                " %.0f s, over --durable-expiry %.0f s: deleted with its %d messages",
                name,
                box.destination,
                repr(box.owner) if box.owner else "anonymous",
                idle,
                self.expiry,
                box.depth,
            )
            self.router.delete_durable(name)
            removed.append(name)
        self.removed += len(removed)
        return removed
