"""The merge state of one object.

Every top-level property, and the object's existence, is a register holding the set of
*maximal* writes: those that no other write it has seen supersedes. A write ``w``
supersedes ``s`` when ``s`` is inside ``w``'s causal context (``w.base[s.origin] >=
s.counter``). The visible value is the register's winner by (HLC timestamp, branch id);
the other maximal writes with a different value are its conflicts. The set of maximal
writes of a partial order does not depend on the order its elements arrive in, so every
node that applied the same changesets holds the same registers, the same visible
document and the same conflicts.

Removing a property writes ``ABSENT`` (a tombstone): without it a concurrent set of the
same property could win on one node and not on another. Deleting an object writes
``False`` to the existence register and leaves the properties alone, so an update
concurrent with a delete that wins brings the object back whole (see docs/merge.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

from vesper.document.values import json_equal


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
"""The value of a removed property (a tombstone write)."""


class Write(NamedTuple):
    """One write to one register."""

    origin: str
    """Branch id of the node whose changeset made the write."""
    counter: int
    """The changeset's counter on its origin: ``(origin, counter)`` is the write's dot."""
    hlc: int
    """The changeset's hybrid-logical-clock timestamp: the first key of the winner."""
    value: Any
    """The written JSON value, ``ABSENT`` for a removal, a bool for existence."""


def _rank(w: Write) -> tuple[int, str]:
    return (w.hlc, w.origin)


def winner(register: list[Write]) -> Write:
    return register[0] if len(register) == 1 else max(register, key=_rank)


def _write(register: list[Write] | None, w: Write, base: Mapping[str, int]) -> list[Write]:
    if not register:
        return [w]
    kept = [s for s in register if base.get(s.origin, 0) < s.counter]
    kept.append(w)
    return kept


class ObjectState:
    """Registers of one object; ``load``/``dump`` convert to the stored row."""

    __slots__ = ("exists", "id", "props")

    def __init__(self, obj_id: str) -> None:
        self.id = obj_id
        self.exists: list[Write] = []
        self.props: dict[str, list[Write]] = {}

    # -- reading -------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return bool(self.exists) and winner(self.exists).value is True

    def properties(self) -> dict[str, Any]:
        """Visible properties (without ``id``), whether or not the object is live."""
        out: dict[str, Any] = {}
        for name, register in self.props.items():
            value = winner(register).value
            if value is not ABSENT:
                out[name] = value
        return out

    def document(self) -> dict[str, Any] | None:
        """The visible document, or None when the object does not exist."""
        if not self.live:
            return None
        return {"id": self.id, **self.properties()}

    def conflicted(self) -> bool:
        return any(_has_conflict(r) for r in self._registers())

    def conflicts(self) -> list[dict[str, Any]]:
        """Registers whose maximal writes disagree: winner first, losers by rank."""
        out = []
        for name, register in self._registers():
            if not _has_conflict(register):
                continue
            ranked = sorted(register, key=_rank, reverse=True)
            win = ranked[0]
            losers = [w for w in ranked[1:] if not _same(w.value, win.value)]
            out.append(
                {
                    "id": self.id,
                    "property": name,
                    "winner": describe(win),
                    "losers": [describe(w) for w in losers],
                }
            )
        return out

    def version(self) -> str:
        """The object's version: names the maximal writes of its registers, which are
        the same on every node that holds the same writes to it (the ETag)."""
        dots = [("", w.origin, w.counter) for w in self.exists]
        for name, register in self.props.items():
            dots.extend((name, w.origin, w.counter) for w in register)
        return _version(dots)

    def _registers(self) -> Iterable[tuple[str | None, list[Write]]]:
        yield None, self.exists
        yield from sorted(self.props.items())

    # -- merging -------------------------------------------------------------------

    def apply(
        self,
        change: Mapping[str, Any],
        origin: str,
        counter: int,
        hlc: int,
        base: Mapping[str, int],
    ) -> None:
        """Merge one object's change from changeset ``origin.counter``.

        ``base`` is the changeset's causal context (its ``base_revision``): every write
        inside it is superseded. For a local commit it is everything this node has.
        """
        exists = change.get("exists")
        if exists is not None:
            self.exists = _write(self.exists, Write(origin, counter, hlc, exists), base)
        props = self.props
        for name, value in change.get("set", {}).items():
            props[name] = _write(props.get(name), Write(origin, counter, hlc, value), base)
        for name in change.get("unset", ()):
            props[name] = _write(props.get(name), Write(origin, counter, hlc, ABSENT), base)

    # -- storage -------------------------------------------------------------------

    def dump(self) -> tuple[bool, str, str, bool]:
        """``(live, document JSON, state JSON, conflicted)`` for the objects row.

        The document holds the winners' values; the state holds the dots and the
        losers. A register that is one write by the commonest dot is left out of the
        state (it is implied by the document), which keeps bulk inserts small.
        """
        visible = self.properties()
        doc_text = orjson.dumps({"id": self.id, **visible}).decode()
        counts: dict[tuple[str, int, int], int] = {}
        for register in self.props.values():
            if len(register) == 1 and register[0].value is not ABSENT:
                dot = register[0][:3]
                counts[dot] = counts.get(dot, 0) + 1
        d = max(counts, key=counts.__getitem__) if counts else None
        p: dict[str, list[list[Any]]] = {}
        conflicted = _has_conflict(self.exists)
        for name, register in self.props.items():
            if len(register) == 1:
                w = register[0]
                if w.value is not ABSENT and w[:3] == d:
                    continue
                p[name] = [[w.origin, w.counter, w.hlc]]
                continue
            conflicted = conflicted or _has_conflict(register)
            win = winner(register)
            p[name] = [_entry(w, w is win) for w in register]
        state: dict[str, Any] = {"e": [[w.origin, w.counter, w.hlc, w.value] for w in self.exists]}
        if d is not None:
            state["d"] = list(d)
        if p:
            state["p"] = p
        return self.live, doc_text, orjson.dumps(state).decode(), conflicted

    @classmethod
    def load(cls, obj_id: str, doc_text: str, state_text: str) -> ObjectState:
        obj = cls(obj_id)
        doc = orjson.loads(doc_text)
        state = orjson.loads(state_text)
        obj.exists = [Write(*e) for e in state["e"]]
        explicit = state.get("p", {})
        d = state.get("d")
        props = obj.props
        for name, value in doc.items():
            if name != "id" and name not in explicit:
                props[name] = [Write(d[0], d[1], d[2], value)]
        for name, entries in explicit.items():
            props[name] = [_from_entry(e, doc.get(name, ABSENT)) for e in entries]
        return obj


def new_object_version(props: Mapping[str, Any], origin: str, counter: int) -> str:
    """``ObjectState.version()`` of an object that one write just created."""
    return _version([("", origin, counter), *((name, origin, counter) for name in props)])


def _version(dots: list[tuple[str, str, int]]) -> str:
    dots.sort()
    return hashlib.sha256(orjson.dumps(dots)).hexdigest()[:32]


def new_object_row(
    obj_id: str, props: dict[str, Any], origin: str, counter: int, hlc: int
) -> tuple[bool, str, str, bool]:
    """``ObjectState.dump()`` of an object that one write just created: the same row,
    built without the registers (bulk creates spend their time here)."""
    doc_text = orjson.dumps({"id": obj_id, **props}).decode()
    state: dict[str, Any] = {"e": [[origin, counter, hlc, True]]}
    if props:
        state["d"] = [origin, counter, hlc]
    return True, doc_text, orjson.dumps(state).decode(), False


def describe(w: Write) -> dict[str, Any]:
    side: dict[str, Any] = {"changeset": f"{w.origin}.{w.counter}", "origin": w.origin}
    if w.value is ABSENT:
        side["removed"] = True
    else:
        side["value"] = w.value
    return side


def _same(a: Any, b: Any) -> bool:
    if a is ABSENT or b is ABSENT:
        return a is b
    return json_equal(a, b)


def _has_conflict(register: list[Write]) -> bool:
    if len(register) < 2:
        return False
    first = register[0].value
    return any(not _same(w.value, first) for w in register[1:])


def _entry(w: Write, is_winner: bool) -> list[Any]:
    if is_winner:
        return [w.origin, w.counter, w.hlc]
    if w.value is ABSENT:
        return [w.origin, w.counter, w.hlc, 0]
    return [w.origin, w.counter, w.hlc, 1, w.value]


def _from_entry(e: list[Any], doc_value: Any) -> Write:
    if len(e) == 3:
        return Write(e[0], e[1], e[2], doc_value)
    return Write(e[0], e[1], e[2], e[4] if e[3] else ABSENT)
