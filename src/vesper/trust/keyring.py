"""Which key may speak for which branch.

With ``replication_trusted_keys`` the answer is that table and nothing else. Without it,
trust on first use: the first key that validly signs something for a branch is pinned
in the store (table ``key_pins``), and any other key for that branch is refused from
then on. No key but this node's own may speak for this node's branch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from vesper.storage.database import Database

MAX_PINS = 100_000
"""Branches pinned on first use at most: invented branches must not grow the store
without bound."""

MAX_REFUSALS = 32
"""Branch/key pairs remembered as refused, for announcements (oldest dropped)."""
REFUSAL_MEMORY_S = 3600.0

UNTRUSTED_KEY = "untrusted_key"
KEY_MISMATCH = "key_mismatch"
TOO_MANY_BRANCHES = "too_many_branches"


class Keyring:
    def __init__(
        self,
        db: Database,
        own_branch: str,
        own_key: str,
        configured: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self._db = db
        self._own_branch = own_branch
        self._own_key = own_key
        self._configured = dict(configured) if configured else None
        self._lock = threading.Lock()
        self._pins: dict[str, str] = dict(db.fetch("SELECT branch, key FROM key_pins"))
        self._refused: dict[tuple[str, str], float] = {}
        self.on_own_branch_claimed: Callable[[str], None] = lambda key: None
        """Called with the key when something validly signed claims this node's branch
        under another key: another node with this branch id, or an impostor."""

    @property
    def own_key(self) -> str:
        return self._own_key

    @property
    def trust_on_first_use(self) -> bool:
        return self._configured is None

    def check(self, branch: str, key: str, pin: bool = True) -> str | None:
        """None if ``key`` may sign for ``branch`` (pinning it on first use unless
        ``pin`` is False), else the reason it may not. Call only once the signature
        verified under ``key``."""
        if branch == self._own_branch:
            if key == self._own_key:
                return None
            self.on_own_branch_claimed(key)
            return KEY_MISMATCH
        if self._configured is not None:
            if key in self._configured.get(branch, ()):
                return None
            self._note_refusal(branch, key)
            return UNTRUSTED_KEY
        with self._lock:
            pinned = self._pins.get(branch)
            if pinned is not None:
                if pinned == key:
                    return None
                self._note_refusal(branch, key)
                return KEY_MISMATCH
            if not pin:
                return None
            if len(self._pins) >= MAX_PINS:
                return TOO_MANY_BRANCHES
            with self._db.write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO key_pins(branch, key, pinned) VALUES (?, ?, ?)",
                    (branch, key, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                )
            self._pins[branch] = key
            return None

    def refuses(self, branch: str, key: str) -> str | None:
        """The reason ``key`` is refused for ``branch`` if a message validly signed by
        it was refused before (then its signature need not be checked again), else
        None. Records nothing."""
        if (branch, key) not in self._refused:
            return None
        return KEY_MISMATCH if self._configured is None else UNTRUSTED_KEY

    def _note_refusal(self, branch: str, key: str) -> None:
        self._refused[(branch, key)] = time.monotonic()
        if len(self._refused) > MAX_REFUSALS:
            del self._refused[min(self._refused, key=self._refused.__getitem__)]

    def refusals(self) -> dict[str, list[str]]:
        """Branch -> keys refused for it lately: announced, so that a node whose key its
        peers refuse (another node with its branch id) learns it."""
        now = time.monotonic()
        out: dict[str, list[str]] = {}
        for (branch, key), when in list(self._refused.items()):
            if now - when <= REFUSAL_MEMORY_S:
                out.setdefault(branch, []).append(key)
        return out

    def pinned(self, branch: str) -> str | None:
        if self._configured is not None:
            keys = self._configured.get(branch)
            return keys[-1] if keys else None
        return self._pins.get(branch)

    def known(self, branch: str) -> bool:
        """Whether ``branch`` has a trusted key (pinned or configured)."""
        return self.pinned(branch) is not None
