"""Choosing an index for a query: one condition that must hold, on an indexed path,
narrows the objects read; the whole expression is then tested on each of them.

Preferred: equality, then ``$in``, then a range or a prefix. Bounds are inclusive in
SQL whatever the operator (numbers are stored as floats: an exact integer beyond 2**53
rounds, and rounding never moves a value across an inclusive bound), and the exact test
runs in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vesper.query.expression import RANGE_OPS, Condition, Expr, conjuncts
from vesper.storage.database import Reader

IN_CHUNK = 500
MAX_IN_VALUES = 100
_NUMBER_RANK, _STRING_RANK = 3, 4


@dataclass(frozen=True, slots=True)
class Plan:
    path: str
    how: str
    """equality, in, range or prefix: for ``explain``."""
    sql: str
    params: tuple[Any, ...]

    def describe(self) -> str:
        return f"{self.path} ({self.how})"

    def rows(self, reader: Reader) -> Iterator[tuple[str, str, str, int]]:
        """The live objects the index names, in id order."""
        ids = sorted(
            {
                row[0]
                for row in reader.fetch(
                    f"SELECT id FROM property_index WHERE path = ? AND ({self.sql})",
                    (self.path, *self.params),
                )
            }
        )
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start : start + IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from reader.fetch(
                f"SELECT id, doc, state, conflicted FROM objects WHERE live = 1 AND id IN ({marks})"
                " ORDER BY id",
                chunk,
            )


def _scalar(value: Any) -> tuple[str, tuple[Any, ...]] | None:
    if value is None:
        return "rank = 1", ()
    kind = type(value)
    if kind is bool:
        return "rank = 2 AND num = ?", (float(value),)
    if kind in (int, float):
        return "rank = 3 AND num = ?", (float(value),)
    if kind is str:
        return "rank = 4 AND txt = ?", (value,)
    return None


def _after_prefix(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``."""
    last = ord(prefix[-1]) + 1
    if last > 0x10FFFF:
        return None
    if 0xD800 <= last <= 0xDFFF:
        last = 0xE000
    return prefix[:-1] + chr(last)


class Planner:
    def __init__(self, ready: Callable[[str], bool]) -> None:
        self._ready = ready

    def plan(self, reader: Reader, where: Expr) -> Plan | None:
        del reader  # the choice needs no statistics: any usable index beats a scan
        best: Plan | None = None
        ranges: dict[str, list[Condition]] = {}
        for term in conjuncts(where):
            if not isinstance(term, Condition):
                continue
            path = ".".join(term.path)
            if not self._ready(path):
                continue
            if term.op == "$eq":
                found = _scalar(term.operand)
                if found is not None:
                    return Plan(path, "equality", *found)
            elif term.op == "$in" and 0 < len(term.operand) <= MAX_IN_VALUES:
                parts = [_scalar(v) for v in term.operand]
                if all(p is not None for p in parts) and (best is None or best.how != "in"):
                    sql = " OR ".join(f"({p[0]})" for p in parts if p is not None)
                    params = tuple(x for p in parts if p is not None for x in p[1])
                    best = Plan(path, "in", sql, params)
            elif term.op in RANGE_OPS or term.op == "$prefix":
                ranges.setdefault(path, []).append(term)
        if best is not None:
            return best
        for path, terms in ranges.items():
            return _range_plan(path, terms)
        return None


def _range_plan(path: str, terms: list[Condition]) -> Plan:
    numbers = [t for t in terms if t.op in RANGE_OPS and type(t.operand) is not str]
    strings = [t for t in terms if t not in numbers]
    group = numbers or strings
    column, rank = ("num", _NUMBER_RANK) if numbers else ("txt", _STRING_RANK)
    sql, params = [f"rank = {rank}"], []
    how = "range"
    for t in group:
        if t.op == "$prefix":
            how = "prefix"
            sql.append(f"{column} >= ?")
            params.append(t.operand)
            upper = _after_prefix(t.operand) if t.operand else None
            if upper is not None:
                sql.append(f"{column} < ?")
                params.append(upper)
            continue
        bound = float(t.operand) if column == "num" else t.operand
        sql.append(f"{column} {'>=' if t.op in ('$gt', '$gte') else '<='} ?")
        params.append(bound)
    return Plan(path, how, " AND ".join(sql), tuple(params))
