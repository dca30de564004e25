"""Idempotency keys: a client that retries a write after losing the answer gets the
first answer again instead of a second commit.

A key and the commit it names are written in the same transaction, so a node killed
at any moment has either both or neither. A key is this node's: a retry must go to the
node that took the first attempt. Keys are kept ``KEEP_S`` (a day), the window in which a
retry is expected; the request's fingerprint (method, path, body) must match, or the key
is refused as reused.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import orjson

from vesper.errors import IdempotencyKeyReused

KEEP_S = 24 * 3600.0
MAX_KEY_CHARS = 255


def earlier(conn: sqlite3.Connection, key: str, fingerprint: str) -> dict[str, Any] | None:
    """The answer a commit with this key gave (``revision``, ``ids``, ``changeset``), or
    None if there was none within ``KEEP_S``."""
    row = conn.execute(
        "SELECT fingerprint, answer FROM idempotency_keys WHERE key = ? AND time >= ?",
        (key, time.time() - KEEP_S),
    ).fetchone()
    if row is None:
        return None
    if row[0] != fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key[:80]!r} was used for another request; use a new key per request"
        )
    return orjson.loads(row[1])


def remember(
    conn: sqlite3.Connection,
    key: str,
    fingerprint: str,
    revision: str,
    ids: list[str],
    changeset: str,
) -> None:
    now = time.time()
    conn.execute("DELETE FROM idempotency_keys WHERE time < ?", (now - KEEP_S,))
    conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys(key, fingerprint, time, answer)"
        " VALUES (?, ?, ?, ?)",
        (
            key,
            fingerprint,
            now,
            orjson.dumps({"revision": revision, "ids": ids, "changeset": changeset}).decode(),
        ),
    )
