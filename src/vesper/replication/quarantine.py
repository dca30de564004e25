"""Rejected messages, kept durably so an operator can see what was refused and why.

Every message the node refuses (malformed, unsigned, bad signature, untrusted key, fork,
over a limit) leaves a row in the ``quarantine`` table with its reason, headers and an
excerpt of its body, and is then acknowledged so the subscription moves on. The table
keeps the newest ``limit`` rows; counters by reason (since the node started) go to the
status and ``/metrics``.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from vesper.storage.database import Database

DEFAULT_LIMIT = 10_000
EXCERPT_BYTES = 500
HEADER_CHARS = 200


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    detail: str
    headers: dict[str, str]
    body: bytes


class Quarantine:
    def __init__(self, db: Database, limit: int = DEFAULT_LIMIT) -> None:
        self._db = db
        self._limit = limit
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        """Rejections by reason since this node started."""

    def add(self, entries: list[Rejected]) -> None:
        if not entries:
            return
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rows = [
            (
                now,
                e.reason,
                e.detail[:1000],
                orjson.dumps(
                    {str(k)[:HEADER_CHARS]: str(v)[:HEADER_CHARS] for k, v in e.headers.items()}
                ).decode(),
                e.body[:EXCERPT_BYTES].decode(errors="replace"),
            )
            for e in entries
        ]
        with self._lock:
            with self._db.write() as conn:
                conn.executemany(
                    "INSERT INTO quarantine(time, reason, detail, headers, excerpt) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute(
                    "DELETE FROM quarantine WHERE seq <= (SELECT max(seq) FROM quarantine) - ?",
                    (self._limit,),
                )
            self.counts.update(e.reason for e in entries)

    def entries(self, limit: int = 100, reason: str | None = None) -> list[dict[str, Any]]:
        """The newest rejected messages first."""
        sql = "SELECT seq, time, reason, detail, headers, excerpt FROM quarantine"
        params: tuple[Any, ...] = ()
        if reason is not None:
            sql += " WHERE reason = ?"
            params = (reason,)
        rows = self._db.read(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit))
        return [
            {
                "seq": seq,
                "time": time,
                "reason": why,
                "detail": detail,
                "headers": orjson.loads(headers),
                "body_excerpt": excerpt,
            }
            for seq, time, why, detail, headers, excerpt in rows
        ]

    @property
    def held(self) -> int:
        return self._db.read("SELECT count(*) FROM quarantine")[0][0]
