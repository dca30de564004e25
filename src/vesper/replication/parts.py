"""Messages larger than a broker carries travel in signed parts, reassembled durably.

Brokers refuse a frame past their ceiling (ActiveMQ 100 MiB, RabbitMQ 128 MiB, the
embedded broker 64 MiB by default) and close the connection, so a message over it would
be sent again after every reconnect, forever. A body over ``PART_BYTES`` goes instead as
consecutive slices of its bytes, each a message with the original headers plus:

- ``vesper-part``: ``index/count`` (from 1);
- ``vesper-part-of``: the SHA-256 of the whole body, naming the set; ``vesper-part-bytes``
  its length;
- ``vesper-part-hash``: the SHA-256 of this slice;
- ``vesper-part-signer``, ``vesper-part-key``, ``vesper-part-sig``: the branch that cut
  it (the origin, or the hub relaying it) and its Ed25519 signature over those fields,
  signed like an announcement.

A receiver checks a part's signature and hash before it keeps it, so a client of the
broker without a trusted key cannot spoil a set or fill the disk. Parts are kept in the
store's ``message_parts`` table, written before the part is acknowledged: acknowledgements
are cumulative per subscription, so a part could not stay unacknowledged while later
messages are. When the last part arrives, the whole body is checked against its hash and
handled as if it had come in one message (its changesets' signatures and chains checked
as always); the parts are deleted once it is applied. A set left incomplete (its sender
died half-way; it sends the message again, in the same parts, after restarting) is
dropped after ``STALE_S``.

A broker with a ceiling on whole frames, headers included (coilmq: 4 KiB), gets parts cut
to fit it, headers at their longest counted (``split``'s ``frame_bytes``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass

from vesper.errors import ConfigError
from vesper.history.changeset import MAX_CHANGESET_BYTES
from vesper.replication import wire
from vesper.replication.transport import Delivery
from vesper.storage.database import Database
from vesper.trust.keys import NodeKey
from vesper.trust.signing import sign
from vesper.trust.verifier import Verifier

PART = "vesper-part"
PART_OF = "vesper-part-of"
PART_BYTES_HEADER = "vesper-part-bytes"
PART_HASH = "vesper-part-hash"
PART_SIGNER = "vesper-part-signer"
PART_KEY = "vesper-part-key"
PART_SIG = "vesper-part-sig"
HEADERS = (PART, PART_OF, PART_BYTES_HEADER, PART_HASH, PART_SIGNER, PART_KEY, PART_SIG)

PART_BYTES = 16 * 1024 * 1024
"""Largest body sent in one message: well under every broker's ceiling, and above the
largest message a backlog or a catch-up batch makes, so only single large changesets
(bulk writes) are cut."""
MAX_MESSAGE_BYTES = 2 * MAX_CHANGESET_BYTES
"""Largest body reassembled: a changeset is limited to MAX_CHANGESET_BYTES, and a hub's
relay of one batch to MAX_CHANGESET_BYTES plus the apply batch it came in."""
MAX_HELD_BYTES = 2 * MAX_MESSAGE_BYTES
"""Parts kept at most; past it the oldest incomplete sets make room (their changesets
come again with catch-up)."""
STALE_S = 24 * 3600.0
SWEEP_S = 60.0
"""How often sets gone stale are looked for."""


class PartRefused(Exception):
    """A part that is not kept: ``reason`` is the quarantine's code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


RECEIPT_CHARS = 32
"""A receipt id as the sender and the link make them (``uuid4().hex``)."""
SIG_CHARS = 86
"""An Ed25519 signature in unpadded base64url."""
MIN_FRAME_ROOM = 256
"""Fewer body bytes per frame than this would make parts mostly headers."""


def frame_overhead(headers: dict[str, str], destination: str, body_bytes: int) -> int:
    """The bytes of a SEND frame besides its body, as the link writes it: the command,
    ``headers`` (escaped as STOMP 1.1 wants), the destination, content type and length,
    a receipt, the blank line and the final NUL."""
    written = {
        **headers,
        "destination": destination,
        "content-type": wire.JSON,
        "content-length": str(body_bytes),
        "receipt": "0" * RECEIPT_CHARS,
    }
    return len(b"SEND\n\n\x00") + sum(
        len(f"{name}:{_escaped(value)}\n".encode()) for name, value in written.items()
    )


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")


def split(
    body: bytes,
    headers: dict[str, str],
    signer: str,
    key: NodeKey,
    limit: int | None = None,
    *,
    frame_bytes: int | None = None,
    destination: str = "",
) -> list[tuple[bytes, dict[str, str]]]:
    """The messages that carry ``body``: itself when it fits in ``limit`` (default
    PART_BYTES) and, with ``frame_bytes``, in one frame to ``destination``; else its
    signed parts, each cut to fit both."""
    limit = limit or PART_BYTES
    if (
        frame_bytes is not None
        and len(body) + frame_overhead(headers, destination, len(body)) > frame_bytes
    ):
        longest = {
            **headers,
            PART: f"{MAX_MESSAGE_BYTES}/{MAX_MESSAGE_BYTES}",
            PART_OF: "0" * 64,
            PART_BYTES_HEADER: str(MAX_MESSAGE_BYTES),
            PART_HASH: "0" * 64,
            PART_SIGNER: signer,
            PART_KEY: key.public,
            PART_SIG: "0" * SIG_CHARS,
        }
        limit = min(limit, frame_bytes - frame_overhead(longest, destination, frame_bytes))
        if limit < MIN_FRAME_ROOM:
            raise ConfigError(
                f"messages to {destination} leave {limit} bytes for a part's body in the "
                f"broker's {frame_bytes}-byte frames: choose a shorter channel name"
            )
    return _cut(body, headers, signer, key, limit)


def _cut(
    body: bytes, headers: dict[str, str], signer: str, key: NodeKey, limit: int
) -> list[tuple[bytes, dict[str, str]]]:
    if len(body) <= limit:
        return [(body, headers)]
    whole = hashlib.sha256(body).hexdigest()
    count = -(-len(body) // limit)
    out = []
    for index in range(1, count + 1):
        piece = body[(index - 1) * limit : index * limit]
        signed = sign(_fields(signer, whole, len(body), index, count, piece), key)
        out.append(
            (
                piece,
                {
                    **headers,
                    PART: f"{index}/{count}",
                    PART_OF: whole,
                    PART_BYTES_HEADER: str(len(body)),
                    PART_HASH: signed["hash"],
                    PART_SIGNER: signer,
                    PART_KEY: signed["key"],
                    PART_SIG: signed["sig"],
                },
            )
        )
    return out


def _fields(
    signer: str, whole: str, size: int, index: int, count: int, piece: bytes
) -> dict[str, object]:
    return {
        "type": "part",
        "branch": signer,
        "whole": whole,
        "bytes": size,
        "index": index,
        "count": count,
        "hash": hashlib.sha256(piece).hexdigest(),
    }


@dataclass(frozen=True, slots=True)
class Whole:
    """A reassembled message, and the set to delete once it is handled."""

    delivery: Delivery
    set_id: str


class PartStore:
    """The parts received so far (apply worker thread only).

    How many parts of each set are kept, and their bytes, are also counted in memory:
    a broker with small frames (coilmq) brings a large message in thousands of parts,
    and counting them again in SQLite for each one made a 15 MB message cost 5 ms a
    part (23 s), growing with its size."""

    def __init__(self, db: Database, verifier: Verifier) -> None:
        self._db = db
        self._verifier = verifier
        self._have: dict[tuple[str, int], int] = {}
        """(set, count) -> its parts kept, for the sets seen since this store opened."""
        self._held: int | None = None
        """Bytes of parts kept (None: to be read from the table)."""
        self._swept = float("-inf")

    def add(self, delivery: Delivery) -> Whole | None:
        """Keep a part durably; the whole message once its last part is here. Raises
        PartRefused for a part that is malformed, unsigned or signed by a key not
        trusted for its signer, and for a set whose bytes do not hash to its name."""
        headers = delivery.headers
        whole, index, count, size = _parse(headers, delivery.body)
        fields = _fields(headers[PART_SIGNER], whole, size, index, count, delivery.body)
        if fields["hash"] != headers[PART_HASH]:
            raise PartRefused("malformed", f"part {index}/{count} does not match its hash")
        problem = self._verifier.control(
            {**fields, "key": headers[PART_KEY], "sig": headers[PART_SIG]}
        )
        if problem is not None:
            raise PartRefused(problem[0], f"part {index}/{count} of {whole[:16]}: {problem[1]}")
        now = time.time()
        if now - self._swept >= SWEEP_S:
            self._sweep(now)
        key = (whole, count)
        # Unknown until the transaction commits: a failed one leaves them to be read.
        held, self._held = self._held, None
        have = self._have.pop(key, None)
        with self._db.write() as conn:
            held = self._make_room(conn, len(delivery.body), whole, held)
            inserted = conn.execute(
                "INSERT OR IGNORE INTO message_parts(set_id, idx, count, received, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (whole, index, count, now, delivery.body),
            ).rowcount
            held += len(delivery.body) * inserted
            if have is None:
                have = conn.execute(
                    "SELECT count(*) FROM message_parts WHERE set_id = ? AND count = ?",
                    (whole, count),
                ).fetchone()[0]
            else:
                have += inserted
        self._held = held
        self._have[key] = have
        if have < count:
            return None
        body = b"".join(
            row[0]
            for row in self._db.read(
                "SELECT body FROM message_parts WHERE set_id = ? AND count = ? ORDER BY idx",
                (whole, count),
            )
        )
        if len(body) != size or hashlib.sha256(body).hexdigest() != whole:
            self.discard([whole])
            raise PartRefused("malformed", f"the {count} parts of {whole[:16]} do not make it")
        rest = {k: v for k, v in headers.items() if k not in HEADERS}
        return Whole(Delivery(rest, body, delivery.generation), whole)

    def _sweep(self, now: float) -> None:
        """Drop the sets that got no part for STALE_S."""
        with self._db.write() as conn:
            conn.execute(
                "DELETE FROM message_parts WHERE set_id IN (SELECT set_id FROM message_parts"
                " GROUP BY set_id HAVING max(received) < ?)",
                (now - STALE_S,),
            )
        self._forget(None)
        self._swept = now

    def _make_room(self, conn: sqlite3.Connection, size: int, keep: str, held: int | None) -> int:
        """Delete the oldest other sets until ``size`` more bytes fit; the bytes held
        then."""
        if held is None:
            held = conn.execute(
                "SELECT coalesce(sum(length(body)), 0) FROM message_parts"
            ).fetchone()[0]
        if held + size <= MAX_HELD_BYTES:
            return held
        oldest = conn.execute(
            "SELECT set_id FROM message_parts WHERE set_id != ? GROUP BY set_id"
            " ORDER BY max(received)",
            (keep,),
        ).fetchall()
        for (set_id,) in oldest:
            freed = conn.execute(
                "DELETE FROM message_parts WHERE set_id = ? RETURNING length(body)", (set_id,)
            ).fetchall()
            self._forget([set_id])
            held -= sum(n for (n,) in freed)
            if held + size <= MAX_HELD_BYTES:
                return held
        return held

    def _forget(self, set_ids: list[str] | None) -> None:
        """Drop the counts of these sets (None: of all, and the bytes held)."""
        if set_ids is None:
            self._have.clear()
            self._held = None
            return
        gone = set(set_ids)
        for key in [k for k in self._have if k[0] in gone]:
            del self._have[key]

    def discard(self, set_ids: list[str]) -> None:
        """Delete the parts of messages handled (or refused)."""
        if set_ids:
            with self._db.write() as conn:
                conn.executemany(
                    "DELETE FROM message_parts WHERE set_id = ?", [(s,) for s in set_ids]
                )
            self._forget(set_ids)
            self._held = None

    @property
    def held(self) -> tuple[int, int]:
        """(sets, bytes) of parts kept, for status."""
        sets, size = self._db.read(
            "SELECT count(DISTINCT set_id), coalesce(sum(length(body)), 0) FROM message_parts"
        )[0]
        return sets, size


def _parse(headers: dict[str, str], body: bytes) -> tuple[str, int, int, int]:
    try:
        index_text, _, count_text = headers[PART].partition("/")
        index, count, size = int(index_text), int(count_text), int(headers[PART_BYTES_HEADER])
        whole = headers[PART_OF]
        if any(name not in headers for name in (PART_HASH, PART_SIGNER, PART_KEY, PART_SIG)):
            raise KeyError(PART_SIG)
    except (KeyError, ValueError):
        raise PartRefused("malformed", "a part's headers are missing or not numbers") from None
    if len(whole) != 64 or any(c not in "0123456789abcdef" for c in whole):
        raise PartRefused("malformed", "vesper-part-of is not a SHA-256 in hex")
    if not 1 <= index <= count or not 0 < size <= MAX_MESSAGE_BYTES:
        raise PartRefused(
            "malformed" if size <= MAX_MESSAGE_BYTES else "too_large",
            f"part {index}/{count} of a {size}-byte message (at most {MAX_MESSAGE_BYTES})",
        )
    if count > size or len(body) > size or not body:
        raise PartRefused("malformed", f"part {index}/{count} does not fit a {size}-byte message")
    return whole, index, count, size
