"""Ways to damage a store file, for the tests that check damage is found.

Each works on the file directly, behind the store's back, the way a failing disk, a
stray ``dd`` or a hand edit with the ``sqlite3`` shell would. Random bytes come from a
seeded generator, so a failure reproduces.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from vesper.store.chain import CHECKPOINT_KEY
from vesper.trust.signing import content_hash

PAGE_SIZE = 4096


def noise(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def overwrite(path: str | Path, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` (negative: from the end) without truncating."""
    with open(path, "r+b") as f:
        f.seek(offset, 2 if offset < 0 else 0)
        f.write(data)


def overwrite_tail(path: str | Path, size: int = 8192) -> None:
    overwrite(path, -size, noise(size))


def overwrite_header(path: str | Path) -> None:
    overwrite(path, 0, noise(100))


def connect(path: str | Path) -> sqlite3.Connection:
    """A plain connection beside the store's own (WAL mode lets both in)."""
    return sqlite3.connect(str(path), isolation_level=None, timeout=10)


def leaf_pages(path: str | Path, table: str) -> list[int]:
    """The page numbers of ``table``'s B-tree leaves, in order."""
    with connect(path) as conn:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,),
        ).fetchall()
    return [r[0] for r in rows]


def damage_middle_page(path: str | Path, table: str) -> int:
    """Overwrite the middle leaf page of ``table`` with random bytes; its number."""
    pages = leaf_pages(path, table)
    page = pages[len(pages) // 2]
    overwrite(path, (page - 1) * PAGE_SIZE, noise(PAGE_SIZE, seed=page))
    return page


def flush_wal(path: str | Path, timeout_s: float = 20.0) -> None:
    """Copy the whole WAL into the database file, so that damage written there is what
    every later read of those pages finds. A checkpoint that a reader or the store's
    own checkpointer holds back reports itself busy: then it is tried again."""
    deadline = time.monotonic() + timeout_s
    with connect(path) as conn:
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"the WAL of {path} could not be checkpointed")
            time.sleep(0.01)


def body_of(path: str | Path, changeset_id: str) -> dict[str, Any]:
    origin, counter = changeset_id.rsplit(".", 1)
    with connect(path) as conn:
        row = conn.execute(
            "SELECT body FROM changesets WHERE origin = ? AND counter = ?", (origin, int(counter))
        ).fetchone()
    return orjson.loads(row[0])


def set_body(path: str | Path, changeset_id: str, body: dict[str, Any]) -> None:
    origin, counter = changeset_id.rsplit(".", 1)
    with connect(path) as conn:
        conn.execute(
            "UPDATE changesets SET body = ? WHERE origin = ? AND counter = ?",
            (orjson.dumps(body).decode(), origin, int(counter)),
        )


def alter(
    path: str | Path, changeset_id: str, change: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Change a stored changeset's content (by default a value it sets); the new body."""
    body = body_of(path, changeset_id)
    if change is None:
        body["changes"][0].setdefault("set", {})["altered"] = True
    else:
        change(body)
    set_body(path, changeset_id, body)
    return body


def hash_of(path: str | Path, changeset_id: str) -> str:
    return content_hash(body_of(path, changeset_id))


def meta(path: str | Path, key: str) -> str | None:
    with connect(path) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def set_meta(path: str | Path, key: str, value: str | None) -> None:
    with connect(path) as conn:
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def forget_checkpoint(path: str | Path) -> None:
    """As in a store written before checkpoints: the next open verifies everything."""
    set_meta(path, CHECKPOINT_KEY, None)
