"""How long something that should keep moving has not: the readiness of replication.

``/ready`` turns 503 when replication has been disconnected from every broker, or
stuck, for longer than ``replication_ready_timeout``. Disconnection and a batch that
does not finish are timed where they happen; the pending set is sampled (every tick of
the supervisor, and whenever readiness is asked) with a Drain.
"""

from __future__ import annotations


class Drain:
    """A count that should fall back to zero (changesets pending for a predecessor):
    the time since it was last zero or last fell."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._last = 0

    def observe(self, value: int, now: float) -> None:
        if value <= 0:
            self._since = None
        elif self._since is None or value < self._last:
            self._since = now
        self._last = value

    def blocked_s(self, now: float) -> float:
        """Seconds above zero without falling (0 while it is zero)."""
        return 0.0 if self._since is None else now - self._since
