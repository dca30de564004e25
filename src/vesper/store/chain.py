"""The hash chain of the stored changesets, walked and checked from a checkpoint.

Each origin's changesets are chained: ``prev`` of ``<origin>.<n>`` is the content hash
(``trust.signing.content_hash``) of ``<origin>.<n - 1>``, and the store's state records
the content hash of each origin's last one (``heads``). Walking the changesets table in
apply order (``seq``: each origin's changesets are applied in counter order) and hashing
every row finds any stored changeset whose content changed: the next one's ``prev``, or
the state's head, no longer names it.

The walk accepts everything the store legitimately holds:

- format 1 (no ``v``, no ``prev``: written before changesets were chained) has no link
  to check, but its hash is what a following format-2 changeset's ``prev`` names; a
  ``prev`` that is null is no link either;
- with or without the signature fields (the origin's own copies and the changesets
  covered by a later one's signature are unsigned): they are not part of the hash;
- gaps in the store's own branch: a commit made with ``save_history = False`` stores no
  changeset. Every other origin's changesets are applied one after the other, each
  stored, so there a gap is damage.

The checkpoint records how far a walk got: the last ``seq`` verified and, per origin,
the counter and content hash of its last changeset verified. It is checked before it is
trusted: each changeset it names must still be stored at or before its ``seq`` and
hash to the value it records.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from vesper.storage.damage import one_line
from vesper.storage.database import Reader
from vesper.trust.signing import content_hash

CHECKPOINT_KEY = "chain_checkpoint"
"""Key of the checkpoint in the ``meta`` table."""
PAGE_ROWS = 500
_HEX = frozenset("0123456789abcdef")


@dataclass
class Checkpoint:
    """Everything up to ``seq`` was verified; ``origins``: origin -> (counter, hash) of
    its last changeset verified."""

    seq: int = 0
    origins: dict[str, tuple[int, str]] = field(default_factory=dict)

    def encode(self) -> str:
        origins = {o: [c, h] for o, (c, h) in sorted(self.origins.items())}
        return orjson.dumps({"seq": self.seq, "origins": origins}).decode()


def decode_checkpoint(text: str) -> Checkpoint:
    """The checkpoint stored as ``text``; ValueError naming what is wrong with it."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("it is not valid JSON") from None
    if not isinstance(value, dict) or set(value) != {"seq", "origins"}:
        raise ValueError("it is not an object of seq and origins")
    seq, origins = value["seq"], value["origins"]
    if type(seq) is not int or seq < 0 or not isinstance(origins, dict):
        raise ValueError("its seq or origins has the wrong type")
    out: dict[str, tuple[int, str]] = {}
    for origin, mark in origins.items():
        if (
            not isinstance(mark, list)
            or len(mark) != 2
            or type(mark[0]) is not int
            or mark[0] < 1
            or not isinstance(mark[1], str)
            or len(mark[1]) != 64
            or not _HEX.issuperset(mark[1])
        ):
            raise ValueError(f"its entry for origin {origin[:80]!r} is not [counter, hash]")
        out[origin] = (mark[0], mark[1])
    return Checkpoint(seq, out)


class Problems:
    """What a check found: every problem counted, the first ``limit`` kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[str] = []
        self.count = 0

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.items) < self.limit:
            self.items.append(one_line(text))

    def __bool__(self) -> bool:
        return self.count > 0

    def summary(self) -> str:
        """The first problem, and how many more there are (for one line)."""
        if not self.items:
            return ""
        more = self.count - 1
        return self.items[0] + (f" (and {more} more problems)" if more else "")


def _missing(origin: str, first: int, last: int) -> str:
    if first == last:
        return f"changeset {origin}.{first} is missing"
    return f"changesets {origin}.{first} to {origin}.{last} are missing"


def _short(digest: str | None) -> str:
    return f"{digest[:16]}..." if digest else "(none)"


class ChainWalk:
    """Feed it the changesets after a checkpoint in ``seq`` order, then ``finish``."""

    def __init__(self, start: Checkpoint, own_branch: str, problems: Problems) -> None:
        self.seq = start.seq
        self.rows = 0
        self._last: dict[str, tuple[int, str | None]] = dict(start.origins)
        """Per origin: counter and content hash of the last changeset seen (the hash
        None when that changeset could not be read: it is reported, not chained)."""
        self._own = own_branch
        self._problems = problems

    def feed(self, seq: int, origin: str, counter: int, text: str) -> None:
        self.seq = seq
        self.rows += 1
        name = f"{origin}.{counter}"
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or body.get("id") != name or body.get("origin") != origin:
            what = "is not valid JSON" if body is None else f"is not changeset {name}"
            self._problems.add(f"changeset {name} (seq {seq}): its stored body {what}")
            self._last[origin] = (counter, None)
            return
        digest = content_hash(body)
        have, have_hash = self._last.get(origin, (0, ""))
        if counter <= have:
            self._problems.add(
                f"changeset {name} (seq {seq}) is stored after {origin}.{have}: out of order"
            )
        elif counter > have + 1:
            if origin != self._own:
                self._problems.add(
                    f"{_missing(origin, have + 1, counter - 1)} (the next stored is {name}, "
                    f"seq {seq})"
                )
        else:
            self._check_link(name, counter, body.get("prev"), have_hash)
        self._last[origin] = (counter, digest)

    def _check_link(self, name: str, counter: int, prev: Any, have_hash: str | None) -> None:
        if prev is None or have_hash is None:
            return  # format 1 has no chain; an unreadable predecessor is reported already
        if counter == 1:
            if prev != "":
                self._problems.add(f"changeset {name} is its origin's first, yet names a prev")
            return
        if prev != have_hash:
            origin = name.rsplit(".", 1)[0]
            self._problems.add(
                f"changeset {origin}.{counter - 1} does not match the chain: its content "
                f"hash is {_short(have_hash)} but {name} names {_short(str(prev))} as its "
                "predecessor (one of the two was altered)"
            )

    def finish(self, state: Mapping[str, Any] | None) -> None:
        """The whole table was walked: each origin's last changeset must be the one the
        store's state names (its counter in ``vv``, its hash in ``heads``)."""
        vv: Mapping[str, int] = (state or {}).get("vv", {})
        heads: Mapping[str, str] | None = (state or {}).get("heads")
        for origin, (counter, digest) in self._last.items():
            held = vv.get(origin, 0)
            if counter > held:
                self._problems.add(
                    f"changeset {origin}.{counter} is beyond the store's revision ({origin}.{held})"
                )
            elif counter < held:
                if origin != self._own:
                    self._problems.add(_missing(origin, counter + 1, held))
            elif heads is not None and digest is not None and heads.get(origin, digest) != digest:
                self._problems.add(
                    f"changeset {origin}.{counter}, the last of {origin}, has content hash "
                    f"{_short(digest)} but the store's state names {_short(heads[origin])} "
                    "(one of the two was altered)"
                )
        for origin, held in vv.items():
            if origin not in self._last and origin != self._own and held > 0:
                self._problems.add(_missing(origin, 1, held))

    def checkpoint(self) -> Checkpoint:
        """Where the walk got to, as a checkpoint (only meaningful without problems)."""
        marks = {o: (c, h) for o, (c, h) in self._last.items() if h is not None}
        return Checkpoint(self.seq, marks)


def scan(reader: Reader, after_seq: int) -> Iterator[list[tuple[int, str, int, str]]]:
    """Pages of changesets ``(seq, origin, counter, body)`` after ``after_seq``."""
    while True:
        rows = reader.fetch(
            "SELECT seq, origin, counter, body FROM changesets WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, PAGE_ROWS),
        )
        if rows:
            yield rows
        if len(rows) < PAGE_ROWS:
            return
        after_seq = rows[-1][0]


def read_state(reader: Reader) -> dict[str, Any] | None:
    """The store's state (version vector, heads) as stored, or None before any commit."""
    rows = reader.fetch("SELECT value FROM meta WHERE key = 'state'")
    return orjson.loads(rows[0][0]) if rows else None


def load_checkpoint(reader: Reader, problems: Problems) -> Checkpoint:
    """The stored checkpoint once it checks out against the changesets it names; an
    empty one (verify everything) if there is none or it is damaged (then reported)."""
    rows = reader.fetch("SELECT value FROM meta WHERE key = ?", (CHECKPOINT_KEY,))
    if not rows:
        return Checkpoint()
    where = f"the chain checkpoint (meta {CHECKPOINT_KEY!r})"
    try:
        checkpoint = decode_checkpoint(rows[0][0])
    except ValueError as exc:
        problems.add(f"{where} is damaged: {exc}")
        return Checkpoint()
    found = problems.count
    for origin, (counter, digest) in checkpoint.origins.items():
        held = reader.fetch(
            "SELECT seq, body FROM changesets WHERE origin = ? AND counter = ?", (origin, counter)
        )
        if not held:
            problems.add(f"{where} names {origin}.{counter}, which this store does not hold")
        elif held[0][0] > checkpoint.seq:
            problems.add(f"{where} names {origin}.{counter}, stored after its position")
        elif _hash_of(held[0][1]) != digest:
            problems.add(
                f"{where} records content hash {_short(digest)} for {origin}.{counter}, "
                f"which now hashes to {_short(_hash_of(held[0][1]))} (one of the two was altered)"
            )
    last_seq = reader.fetch("SELECT max(seq) FROM changesets")[0][0] or 0
    if checkpoint.seq > last_seq:
        problems.add(f"{where} is at seq {checkpoint.seq}, past the last changeset ({last_seq})")
    return checkpoint if problems.count == found else Checkpoint()


def _hash_of(text: str) -> str | None:
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return content_hash(body) if isinstance(body, dict) else None
