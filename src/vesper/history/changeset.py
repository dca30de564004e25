"""Changesets: the unit of history and of replication.

The wire and storage format (docs/changesets.md) is one JSON object::

    {"v": 2, "id": "B.7", "origin": "B", "revision": "A.3,B.7", "base_revision": "A.3,B.6",
     "prev": "<hex SHA-256 of B.6>", "hlc": 114227931629322240,
     "time": "2026-11-21T23:30:00.123Z",
     "changes": [{"id": "doc1", "op": "update", "exists": true,
                  "set": {"title": "x"}, "unset": ["draft"]}],
     "key": "ed25519:...", "sig": "..."}

``revision`` is the origin's version vector after the commit and ``base_revision`` the
one before it (the changeset's causal context). ``prev`` chains each origin's
changesets: it is the content hash (``trust.signing.content_hash``) of the origin's
previous changeset. ``key`` and ``sig`` are the origin's signature, added when the
changeset is first sent. Format 1 (no ``v``, no ``prev``) is what stores written before
signing hold. Unknown top-level fields are kept and passed on unchanged, so older nodes
relay changesets of newer ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from vesper.document.values import check_id, check_value, normalize_numbers
from vesper.errors import InvalidChangeset, InvalidDocument, InvalidRevision
from vesper.history.revision import parse_changeset_id, parse_revision
from vesper.trust.signing import SIGNATURE_FIELDS, content_hash

OPS = frozenset({"create", "replace", "update", "delete"})
MAX_CHANGESET_BYTES = 64 * 1024 * 1024
MAX_HLC = 2**62
"""Clock values at or above this are refused: a clock observed there could never tick
again within 64 bits (2**62 milliseconds << 16 is a date some 2,200 years away)."""
FORMAT_VERSION = 2
"""``v`` of the changesets this version writes: signed and hash-chained."""
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Changeset:
    """A validated changeset."""

    origin: str
    """Branch id of the node that committed it."""
    counter: int
    """Its position among the origin's changesets, from 1."""
    base: dict[str, int]
    """Version vector the origin had before the commit (the causal context)."""
    hlc: int
    """Hybrid-logical-clock timestamp; orders concurrent writes."""
    changes: list[dict[str, Any]]
    """One entry per object: id, op, exists, and set/unset properties."""
    body: dict[str, Any]
    """The whole JSON object as received or built, extra fields included."""
    hash: str
    """Content hash: hex SHA-256 of the canonical form without ``sig`` and ``key``."""

    @property
    def prev(self) -> str | None:
        """Content hash of the origin's previous changeset ("" before the first one);
        None in format 1, which has no chain."""
        return self.body.get("prev")

    @property
    def signed(self) -> bool:
        return "sig" in self.body

    @property
    def id(self) -> str:
        return f"{self.origin}.{self.counter}"

    @property
    def revision(self) -> str:
        return self.body["revision"]

    def encode(self) -> bytes:
        return orjson.dumps(self.body)


def iso_time(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_changeset(raw: object, own_branch: str | None = None) -> Changeset:
    """Validate a changeset (dict, JSON str or bytes) or raise InvalidChangeset."""
    if isinstance(raw, bytes | bytearray | memoryview | str):
        if len(raw) > MAX_CHANGESET_BYTES:
            raise InvalidChangeset(f"changeset is larger than {MAX_CHANGESET_BYTES} bytes")
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidChangeset(f"changeset is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidChangeset(f"changeset must be a JSON object, got {type(raw).__name__}")
    try:
        return _parse(raw, own_branch)
    except (InvalidRevision, InvalidDocument) as exc:
        raise InvalidChangeset(f"changeset {str(raw.get('id'))[:80]}: {exc}") from None


def _require(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in body:
        raise InvalidChangeset(f"changeset {str(body.get('id'))[:80]}: missing field {name!r}")
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InvalidChangeset(
            f"changeset {str(body.get('id'))[:80]}: field {name!r} has type {type(value).__name__}"
        )
    return value


def _parse(body: dict[str, Any], own_branch: str | None) -> Changeset:
    origin, counter = parse_changeset_id(_require(body, "id", str))
    if _require(body, "origin", str) != origin:
        raise InvalidChangeset(
            f"changeset {body['id']}: origin {body['origin']!r} does not match its id"
        )
    if own_branch is not None and origin == own_branch:
        raise InvalidChangeset(
            f"changeset {body['id']} has this node's own branch id {origin!r} as origin"
        )
    revision = parse_revision(_require(body, "revision", str))
    base = parse_revision(_require(body, "base_revision", str))
    expected = dict(base)
    expected[origin] = counter
    if base.get(origin, 0) != counter - 1 or revision != expected:
        raise InvalidChangeset(
            f"changeset {body['id']}: revision {body['revision']!r} is not "
            f"base_revision {body['base_revision']!r} plus {body['id']}"
        )
    hlc = _require(body, "hlc", int)
    if hlc < 0 or hlc >= MAX_HLC:
        raise InvalidChangeset(f"changeset {body['id']}: hlc {hlc} is out of range")
    _check_chain_fields(body, counter)
    changes = _require(body, "changes", list)
    changes = normalize_numbers(changes)
    if changes is not body["changes"]:
        body = {**body, "changes": changes}
    seen: set[str] = set()
    for i, change in enumerate(changes):
        _check_change(change, f"changes[{i}]")
        if change["id"] in seen:
            raise InvalidChangeset(f"changeset {body['id']}: object {change['id']!r} appears twice")
        seen.add(change["id"])
    return Changeset(origin, counter, base, hlc, changes, body, content_hash(body))


def _check_chain_fields(body: dict[str, Any], counter: int) -> None:
    where = f"changeset {body['id']}"
    version = body.get("v")
    if version is None:
        if "prev" in body:
            raise InvalidChangeset(f"{where}: 'prev' needs format version 'v': 2")
    elif type(version) is not int or version != FORMAT_VERSION:
        raise InvalidChangeset(
            f"{where}: format version {str(version)[:20]!r} is not {FORMAT_VERSION}, "
            "the one this node reads (upgrade it)"
        )
    else:
        prev = _require(body, "prev", str)
        if counter == 1 and prev != "":
            raise InvalidChangeset(f"{where}: the first changeset of an origin has prev ''")
        if counter > 1 and (len(prev) != 64 or not _HEX.issuperset(prev)):
            raise InvalidChangeset(f"{where}: prev must be 64 lowercase hex digits")
    for name in SIGNATURE_FIELDS:
        if name in body and (type(body[name]) is not str or len(body[name]) > 100):
            raise InvalidChangeset(f"{where}: {name!r} must be a short string")


def _check_change(change: object, where: str) -> None:
    if not isinstance(change, dict):
        raise InvalidChangeset(f"{where} must be an object")
    check_id(change.get("id"), f"{where}.id")
    if change.get("op") not in OPS:
        raise InvalidChangeset(f"{where}.op must be one of {sorted(OPS)}, got {change.get('op')!r}")
    if "exists" in change and type(change["exists"]) is not bool:
        raise InvalidChangeset(f"{where}.exists must be true or false")
    props = change.get("set", {})
    if type(props) is not dict:
        raise InvalidChangeset(f"{where}.set must be an object")
    for name, value in props.items():
        if name == "id":
            raise InvalidChangeset(f"{where}.set must not contain 'id'")
        check_value(value, f"{where}.set.{name}", 1)
    unset = change.get("unset", [])
    if type(unset) is not list or not all(type(n) is str and n != "id" for n in unset):
        raise InvalidChangeset(f"{where}.unset must be a list of property names")
    if set(unset) & props.keys():
        raise InvalidChangeset(f"{where}: a property is both set and unset")
