"""Revision strings: version vectors of ``<branch_id>.<counter>`` entries.

A revision names exactly the set of changesets a node has applied: for every branch
``b`` all changesets ``b.1`` .. ``b.n``. Entries are sorted by branch id, so equal sets
give equal strings on every node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from vesper.errors import InvalidRevision

BRANCH_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_ENTRY_RE = re.compile(r"([A-Za-z0-9_-]{1,64})\.([1-9][0-9]{0,17})\Z")


def is_valid_branch_id(value: object) -> bool:
    return isinstance(value, str) and BRANCH_ID_RE.match(value) is not None


def parse_revision(text: object) -> dict[str, int]:
    """Parse ``"0A.3,0B.12"`` into ``{"0A": 3, "0B": 12}``; ``""`` is the empty revision."""
    if not isinstance(text, str):
        raise InvalidRevision(f"revision must be a string, got {type(text).__name__}")
    if text == "":
        return {}
    vector: dict[str, int] = {}
    for part in text.split(","):
        match = _ENTRY_RE.match(part.strip())
        if match is None:
            raise InvalidRevision(
                f"invalid revision {text!r}: entry {part!r} is not <branch_id>.<counter>"
            )
        branch, counter = match.group(1), int(match.group(2))
        if branch in vector:
            raise InvalidRevision(f"invalid revision {text!r}: branch {branch!r} appears twice")
        vector[branch] = counter
    return vector


def format_revision(vector: Mapping[str, int]) -> str:
    """The canonical string of a version vector (sorted, zero entries left out)."""
    return ",".join(f"{b}.{c}" for b, c in sorted(vector.items()) if c > 0)


def contains(vector: Mapping[str, int], origin: str, counter: int) -> bool:
    """True when the changeset ``origin.counter`` is inside ``vector``."""
    return vector.get(origin, 0) >= counter


def dominates(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    """True when ``a`` contains every changeset of ``b``."""
    return all(a.get(k, 0) >= v for k, v in b.items())


def merge_vectors(vectors: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The least vector containing all of ``vectors`` (entry-wise maximum)."""
    out: dict[str, int] = {}
    for vector in vectors:
        for k, v in vector.items():
            if v > out.get(k, 0):
                out[k] = v
    return out


def changeset_id(origin: str, counter: int) -> str:
    return f"{origin}.{counter}"


def parse_changeset_id(text: object) -> tuple[str, int]:
    if not isinstance(text, str):
        raise InvalidRevision(f"changeset id must be a string, got {type(text).__name__}")
    match = _ENTRY_RE.match(text)
    if match is None:
        raise InvalidRevision(f"invalid changeset id {text!r}: expected <branch_id>.<counter>")
    return match.group(1), int(match.group(2))
