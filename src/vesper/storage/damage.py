"""Telling a damaged SQLite file from a failing one, and SQLite's own checks of a file.

A full disk, a locked database or an I/O error may pass, so those stay retryable
StorageErrors. SQLite reporting its file as corrupt (SQLITE_CORRUPT, or SQLITE_NOTADB
for a damaged header) never passes by retrying: that is StoreDamaged.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
MAX_PROBLEM_CHARS = 300
"""A problem is quoted in one log or error line: SQLite's texts can be long."""


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying the file itself is damaged."""
    code = getattr(exc, "sqlite_errorcode", None)
    # Extended codes (SQLITE_CORRUPT_INDEX, ...) keep the primary code in the low byte.
    return isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def one_line(text: str) -> str:
    """``text`` flattened and bounded, for a single line of a log or an error."""
    flat = " ".join(text.split())
    if len(flat) > MAX_PROBLEM_CHARS:
        flat = flat[: MAX_PROBLEM_CHARS - 3] + "..."
    return flat


def file_problems(conn: sqlite3.Connection, full: bool, limit: int = 100) -> list[str]:
    """SQLite's findings about the file: ``quick_check`` (every page and record format,
    in one pass: fast enough for each open) or the full ``integrity_check`` (also that
    every index matches its table). Empty when the file is sound; may raise
    sqlite3.DatabaseError when the file is too damaged to be checked at all."""
    pragma = "integrity_check" if full else "quick_check"
    rows = conn.execute(f"PRAGMA {pragma}({int(limit)})").fetchall()
    problems = [str(row[0]) for row in rows]
    return [] if problems == ["ok"] else problems


def connect_read_only(path: str) -> sqlite3.Connection:
    """A connection that can never write to ``path``: a checker must not change a
    damaged file (nor a live node's). Works beside a running node (WAL mode)."""
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
