"""What a user may do, as glob patterns on destinations.

Three rights, in the spirit of RabbitMQ's configure/write/read regexes and ActiveMQ's
authorization plugin:

- ``read``: SUBSCRIBE to a destination (and so resume a durable subscription on it);
- ``write``: SEND to it;
- ``admin``: delete other users' durable subscriptions on it, and use the
  ``/vesper-control/...`` destinations it matches (fault injection, broker status).

A pattern matches the whole destination. ``*`` matches any run of characters except
``/``; ``**`` matches any run including ``/``; every other character stands for
itself (``.`` and ``?`` included). So ``/topic/orders.*`` matches
``/topic/orders.sync`` but not ``/topic/orders`` itself; ``/topic/*`` matches every
topic; ``/**`` matches every destination.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from vesper.broker.errors import BrokerConfigError

READ = "read"
WRITE = "write"
ADMIN = "admin"
RIGHTS = (READ, WRITE, ADMIN)
#: Answers kept per user and right; destinations repeat, so this stays small.
_CACHE_MAX = 4096


def compile_patterns(patterns: Iterable[str], where: str = "") -> re.Pattern[str] | None:
    """One regex matching any of ``patterns``; None when there are none."""
    alternatives = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise BrokerConfigError(
                f"{where}destination pattern {pattern!r} must be a string starting with /,"
                " e.g. /topic/orders or /queue/orders.*"
            )
        parts = re.split(r"(\*\*|\*)", pattern)
        regex = "".join(".*" if p == "**" else "[^/]*" if p == "*" else re.escape(p) for p in parts)
        alternatives.append(f"(?:{regex})")
    if not alternatives:
        return None
    return re.compile("|".join(alternatives), re.DOTALL)


@dataclasses.dataclass
class Permissions:
    """The destination patterns of one user, per right."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()
    everything: bool = False
    """True for the anonymous user of ``--allow-anonymous``: every right everywhere."""

    def __post_init__(self) -> None:
        self._regex = {right: compile_patterns(getattr(self, right)) for right in RIGHTS}
        self._cache: dict[tuple[str, str], bool] = {}

    def allows(self, right: str, destination: str) -> bool:
        """True when ``right`` (read, write or admin) is granted on ``destination``."""
        if self.everything:
            return True
        key = (right, destination)
        answer = self._cache.get(key)
        if answer is None:
            regex = self._regex[right]
            answer = regex is not None and regex.fullmatch(destination) is not None
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = answer
        return answer


ALL = Permissions(everything=True)
