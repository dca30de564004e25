"""The query language of ``where`` (docs/queries.md): a JSON object of conditions on
properties, with operators, parsed once into a tree that tests a document.

``{"price": {"$gte": 10, "$lt": 20}, "owner.name": {"$prefix": "A"}, "$or": [...]}``

A key is a property path (dots go into nested objects) or one of ``$and``, ``$or``,
``$not``; a value is either a literal, tested for JSON equality, or an object of
operators (all its keys start with ``$``). Comparisons are type-exact: ``true`` never
equals ``1`` (JSON equality, ``1`` equals ``1.0``), ranges compare numbers with numbers
and strings with strings (by code point), and a value of another type never matches a
range. Errors name the part of the query that is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vesper.document.values import check_value, json_equal
from vesper.errors import InvalidDocument

ABSENT: Any = object()
"""The value of a path that leads nowhere."""

RANGE_OPS = ("$gt", "$gte", "$lt", "$lte")
FIELD_OPS = ("$eq", "$ne", *RANGE_OPS, "$in", "$nin", "$exists", "$contains", "$prefix")
MAX_DEPTH = 32
MAX_TERMS = 1_000


def resolve(doc: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = doc
    for name in path:
        if type(value) is not dict or name not in value:
            return ABSENT
        value = value[name]
    return value


def _number(value: object) -> bool:
    return type(value) in (int, float)


def _comparable(a: object, b: object) -> bool:
    return (_number(a) and _number(b)) or (type(a) is str and type(b) is str)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


@dataclass(frozen=True, slots=True)
class Condition:
    """One operator on one path."""

    path: tuple[str, ...]
    op: str
    operand: Any

    def matches(self, doc: Mapping[str, Any]) -> bool:
        value = resolve(doc, self.path)
        op, operand = self.op, self.operand
        if op == "$eq":
            return value is not ABSENT and json_equal(value, operand)
        if op == "$ne":
            return value is ABSENT or not json_equal(value, operand)
        if op in _COMPARE:
            return _comparable(value, operand) and _COMPARE[op](value, operand)
        if op == "$in":
            return value is not ABSENT and any(json_equal(value, o) for o in operand)
        if op == "$nin":
            return value is ABSENT or not any(json_equal(value, o) for o in operand)
        if op == "$exists":
            return (value is not ABSENT) is operand
        if op == "$contains":
            return type(value) is list and any(json_equal(v, operand) for v in value)
        # $prefix
        return type(value) is str and value.startswith(operand)


@dataclass(frozen=True, slots=True)
class All:
    terms: tuple[Expr, ...]

    def matches(self, doc: Mapping[str, Any]) -> bool:
        return all(t.matches(doc) for t in self.terms)


@dataclass(frozen=True, slots=True)
class Any_:
    terms: tuple[Expr, ...]

    def matches(self, doc: Mapping[str, Any]) -> bool:
        return any(t.matches(doc) for t in self.terms)


@dataclass(frozen=True, slots=True)
class Not:
    term: Expr

    def matches(self, doc: Mapping[str, Any]) -> bool:
        return not self.term.matches(doc)


Expr = Condition | All | Any_ | Not

EVERYTHING = All(())


def parse(where: object, at: str = "where") -> Expr:
    """The expression of a ``where`` object; InvalidDocument naming the bad part."""
    counter = [0]
    return _parse_object(where, at, 0, counter)


def _parse_object(where: object, at: str, depth: int, counter: list[int]) -> Expr:
    if type(where) is not dict:
        raise InvalidDocument(f"{at} must be a JSON object of conditions")
    if depth > MAX_DEPTH:
        raise InvalidDocument(f"{at}: nested deeper than {MAX_DEPTH} levels")
    terms: list[Expr] = []
    for key, value in where.items():
        here = f"{at}.{key}"
        counter[0] += 1
        if counter[0] > MAX_TERMS:
            raise InvalidDocument(f"{at}: more than {MAX_TERMS} conditions")
        if key in ("$and", "$or"):
            if type(value) is not list or not value:
                raise InvalidDocument(f"{here} must be a non-empty array of conditions")
            parts = tuple(
                _parse_object(v, f"{here}[{i}]", depth + 1, counter) for i, v in enumerate(value)
            )
            terms.append(All(parts) if key == "$and" else Any_(parts))
        elif key == "$not":
            terms.append(Not(_parse_object(value, here, depth + 1, counter)))
        elif key.startswith("$"):
            raise InvalidDocument(f"{here}: unknown operator (use $and, $or, $not at this level)")
        else:
            terms.extend(_parse_field(key, value, here))
    return terms[0] if len(terms) == 1 else All(tuple(terms))


def _path(key: str, at: str) -> tuple[str, ...]:
    path = tuple(key.split("."))
    if not key or any(not part for part in path):
        raise InvalidDocument(f"{at}: a property path is names joined by dots")
    return path


def _parse_field(key: str, value: object, at: str) -> list[Condition]:
    path = _path(key, at)
    if type(value) is not dict or not any(k.startswith("$") for k in value):
        check_value(value, at, 1)
        return [Condition(path, "$eq", value)]
    if not all(k.startswith("$") for k in value):
        raise InvalidDocument(
            f"{at}: mixes operators and properties; to match an object literally, use $eq"
        )
    return [_operator(path, op, operand, f"{at}.{op}") for op, operand in value.items()]


def _operator(path: tuple[str, ...], op: str, operand: object, at: str) -> Condition:
    if op not in FIELD_OPS:
        raise InvalidDocument(f"{at}: unknown operator; one of {', '.join(FIELD_OPS)}")
    if op in RANGE_OPS:
        if not (_number(operand) or type(operand) is str):
            raise InvalidDocument(f"{at} takes a number or a string")
    elif op in ("$in", "$nin"):
        if type(operand) is not list:
            raise InvalidDocument(f"{at} takes an array of values")
    elif op == "$exists":
        if type(operand) is not bool:
            raise InvalidDocument(f"{at} takes true or false")
    elif op == "$prefix" and type(operand) is not str:
        raise InvalidDocument(f"{at} takes a string")
    check_value(operand, at, 1)
    return Condition(path, op, operand)


def conjuncts(expr: Expr) -> list[Expr]:
    """The terms that must all hold (for the planner)."""
    return list(expr.terms) if isinstance(expr, All) else [expr]
