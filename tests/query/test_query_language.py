"""The query language against a brute-force filter written here from its definition,
over random documents and random queries: streamed listings, sorted ones, and the same
with every path indexed. Then keyset paging under concurrent writes, and index builds
(in the background while commits go on, resumed after a restart)."""

from __future__ import annotations

import functools
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vesper.errors import InvalidDocument, InvalidOperation
from vesper.query.expression import parse
from vesper.query.order import parse_fields, parse_sort
from vesper.store import indexes as index_module
from vesper.store import open_store
from vesper.store.query import Query

PATHS = ["a", "b", "c.n"]
MISSING = object()

scalars = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.5, 2.0, 1e300]),
    st.booleans(),
    st.none(),
    st.sampled_from(["", "a", "ab", "b", "B", "\u00e9"]),
)
values = st.one_of(scalars, st.lists(st.integers(0, 2), max_size=3))
docs = st.fixed_dictionaries(
    {},
    optional={
        "a": values,
        "b": values,
        "c": st.one_of(st.fixed_dictionaries({}, optional={"n": values}), scalars),
    },
)


def lookup(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            return MISSING
        value = value[name]
    return value


def same(x: Any, y: Any) -> bool:
    """JSON equality from its definition: types first (a boolean is not a number)."""
    if isinstance(x, bool) or isinstance(y, bool):
        return type(x) is type(y) and x == y
    if isinstance(x, int | float) and isinstance(y, int | float):
        return float(x) == float(y) if abs(x) < 2**53 and abs(y) < 2**53 else x == y
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y, strict=True))
    return type(x) is type(y) and x == y


def ordered(x: Any, y: Any, op: str) -> bool:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y))
    strings = isinstance(x, str) and isinstance(y, str)
    if not (numbers or strings):
        return False
    return {"$gt": x > y, "$gte": x >= y, "$lt": x < y, "$lte": x <= y}[op]


def holds(doc: dict[str, Any], where: dict[str, Any]) -> bool:
    for key, cond in where.items():
        if key == "$and":
            ok = all(holds(doc, part) for part in cond)
        elif key == "$or":
            ok = any(holds(doc, part) for part in cond)
        elif key == "$not":
            ok = not holds(doc, cond)
        else:
            value = lookup(doc, key)
            if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
                ok = all(operator(value, op, arg) for op, arg in cond.items())
            else:
                ok = value is not MISSING and same(value, cond)
        if not ok:
            return False
    return True


def operator(value: Any, op: str, arg: Any) -> bool:
    present = value is not MISSING
    if op == "$eq":
        return present and same(value, arg)
    if op == "$ne":
        return not present or not same(value, arg)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return present and ordered(value, arg, op)
    if op == "$in":
        return present and any(same(value, a) for a in arg)
    if op == "$nin":
        return not present or not any(same(value, a) for a in arg)
    if op == "$exists":
        return present == arg
    if op == "$contains":
        return isinstance(value, list) and any(same(v, arg) for v in value)
    assert op == "$prefix"
    return isinstance(value, str) and value.startswith(arg)


def field_condition(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(
        st.sampled_from(
            [
                "lit",
                "$eq",
                "$ne",
                "$gt",
                "$gte",
                "$lt",
                "$lte",
                "$in",
                "$nin",
                "$exists",
                "$contains",
                "$prefix",
            ]
        )
    )
    path = draw(st.sampled_from(PATHS))
    if op == "lit":
        return {path: draw(scalars)}
    if op in ("$gt", "$gte", "$lt", "$lte"):
        arg: Any = draw(st.one_of(st.integers(-3, 3), st.sampled_from([0.5, "a", "b", ""])))
    elif op in ("$in", "$nin"):
        arg = draw(st.lists(scalars, max_size=3))
    elif op == "$exists":
        arg = draw(st.booleans())
    elif op == "$prefix":
        arg = draw(st.sampled_from(["", "a", "b"]))
    else:
        arg = draw(values)
    return {path: {op: arg}}


@st.composite
def wheres(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    kind = draw(st.sampled_from(["field", "field", "two", "and", "or", "not"]))
    if depth >= 2 or kind == "field":
        return field_condition(draw)
    if kind == "two":
        first, second = field_condition(draw), field_condition(draw)
        return {**first, **second} if first.keys().isdisjoint(second) else first
    if kind == "not":
        return {"$not": draw(wheres(depth + 1))}
    return {f"${kind}": draw(st.lists(wheres(depth + 1), min_size=1, max_size=3))}


def rank(value: Any) -> tuple[Any, ...]:
    if value is MISSING:
        return (0,)
    if value is None:
        return (1,)
    if isinstance(value, bool):
        return (2, value)
    if isinstance(value, int | float):
        return (3, value)
    if isinstance(value, str):
        return (4, value)
    return (5, repr(value))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    objects=st.lists(docs, max_size=25),
    where=wheres(),
    indexed=st.booleans(),
    sort=st.sampled_from(["", "a", "-a", "c.n,-b"]),
)
def test_every_operator_matches_the_brute_force_filter(
    objects: list[dict[str, Any]], where: dict[str, Any], indexed: bool, sort: str
) -> None:
    store = open_store("mem://", "Q", indexes=PATHS if indexed else ())
    try:
        with_ids = [{"id": f"o{i:02d}", **doc} for i, doc in enumerate(objects)]
        if with_ids:
            store.create(with_ids)
        expected = [d for d in with_ids if holds(d, where)]
        streamed = list(store.query(where))
        assert streamed == expected
        keys = parse_sort(sort) if sort else ()
        answer = store.run_query(Query(where=parse(where), sort=keys, limit=1000, explain=True))
        got = [d["id"] for d in map(_loads, answer["results"])]
        if sort:
            expected = sorted(expected, key=functools.cmp_to_key(_by(sort)))
        assert got == [d["id"] for d in expected]
        count = store.run_query(Query(where=parse(where), count=True))["count"]
        assert count == len(expected)
    finally:
        store.close()


def _loads(item: Any) -> dict[str, Any]:
    import orjson

    return orjson.loads(orjson.dumps(item))


def _by(sort: str) -> Any:
    keys = [(part.lstrip("-"), part.startswith("-")) for part in sort.split(",")]

    def compare(x: dict[str, Any], y: dict[str, Any]) -> int:
        for path, descending in keys:
            rx, ry = rank(lookup(x, path)), rank(lookup(y, path))
            if rx != ry:
                return (1 if rx > ry else -1) * (-1 if descending else 1)
        return (x["id"] > y["id"]) - (x["id"] < y["id"])

    return compare


@pytest.mark.parametrize(
    ("where", "points_at"),
    [
        ({"a": {"$gt": True}}, "where.a.$gt"),
        ({"a": {"$in": 3}}, "where.a.$in"),
        ({"a": {"$exists": 1}}, "where.a.$exists"),
        ({"a": {"$what": 1}}, "where.a.$what"),
        ({"a": {"$eq": 1, "b": 2}}, "where.a"),
        ({"$or": []}, "where.$or"),
        ({"$or": [{"a": 1}, 5]}, "where.$or[1]"),
        ({"$nor": [{"a": 1}]}, "where.$nor"),
        ({"a..b": 1}, "where.a..b"),
        ({"a": {"$prefix": 3}}, "where.a.$prefix"),
    ],
)
def test_bad_queries_name_the_offending_part(where: dict[str, Any], points_at: str) -> None:
    with pytest.raises(InvalidDocument) as raised:
        parse(where)
    assert str(raised.value).startswith(points_at), str(raised.value)


def test_keyset_pages_neither_skip_nor_repeat_under_concurrent_writes() -> None:
    store = open_store("mem://", "K")
    try:
        store.create([{"id": f"k{i:03d}", "score": i % 10} for i in range(200)])
        keys = parse_sort("-score")
        seen: list[str] = []
        after = None
        inserted = 0
        while True:
            page = store.run_query(Query(sort=keys, limit=17, after=after))
            seen += [_loads(d)["id"] for d in page["results"]]
            # Between pages: new objects everywhere in the order, and deletions of
            # objects not yet read and of objects already read.
            store.create([{"id": f"new{inserted}", "score": inserted % 10}])
            inserted += 1
            if page["next"] is None:
                break
            after = page["next"]
        originals = [s for s in seen if s.startswith("k")]
        assert sorted(originals) == [f"k{i:03d}" for i in range(200)]  # each exactly once
        assert len(seen) == len(set(seen))
    finally:
        store.close()


def test_an_index_builds_in_the_background_while_commits_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "BUILD_CHUNK", 100)
    monkeypatch.setattr(index_module, "BUILD_PAUSE_S", 0.05)  # 50 chunks: 2.5 s at least
    url = f"sqlite:///{tmp_path}/i.db"
    store = open_store(url, "I")
    store.create([{"id": f"i{i:05d}", "n": i % 100} for i in range(5_000)])
    store.indexes.add("n")
    where = parse({"n": 7})
    during = store.run_query(Query(where=where, explain=True))
    assert during["explain"]["index"] is None  # not used before it is built
    # Commits while it builds, timed: none waits for the whole build.
    worst = 0.0
    for i in range(30):
        started = time.monotonic()
        store.update(f"i{i * 150:05d}", {"n": 7})
        worst = max(worst, time.monotonic() - started)
    assert store.indexes.describe()[0]["state"] == "building"
    store.close()  # half-way: the build resumes on the next open, where it stopped
    with sqlite3.connect(tmp_path / "i.db") as raw:
        reached = raw.execute("SELECT built_upto FROM indexes").fetchone()[0]
    assert "i00000" < reached < "i04999"

    store = open_store(url, "I")
    try:
        deadline = time.monotonic() + 30
        while not store.indexes.ready("n"):
            assert time.monotonic() < deadline, store.indexes.describe()
            time.sleep(0.02)
        served = store.run_query(Query(where=where, explain=True))
        assert served["explain"]["index"] == "n (equality)"
        scanned = list(store.query({"n": 7}))
        assert [_loads(d) for d in served["results"]] == scanned
        assert len(scanned) == 50 + 30
        assert served["explain"]["read"] == len(scanned)
    finally:
        store.close()
    assert worst < 1.0, worst


BOUNDARY_DOCS = [
    {"id": "i1", "v": 1},
    {"id": "i2", "v": 2},
    {"id": "f2", "v": 2.0},
    {"id": "t", "v": True},
    {"id": "n", "v": None},
    {"id": "s", "v": "2"},
    {"id": "ab", "v": "ab"},
    {"id": "abz", "v": "ab\U0010ffff"},
    {"id": "ac", "v": "ac"},
    {"id": "big", "v": 2**60 + 1},
    {"id": "arr", "v": [2]},
]


@pytest.mark.parametrize(
    "where",
    [
        {"v": {"$gte": 2}},
        {"v": {"$gt": 2}},
        {"v": {"$lte": 2}},
        {"v": {"$lt": 2}},
        {"v": {"$gte": 1, "$lt": 2}},
        {"v": {"$gt": 2**60}},
        {"v": {"$lte": 2**60}},
        {"v": 1},
        {"v": True},
        {"v": None},
        {"v": {"$in": [1, True, "2"]}},
        {"v": {"$prefix": "ab"}},
        {"v": {"$gte": "ab", "$lt": "ac"}},
        {"v": [2]},
    ],
)
def test_an_index_answers_exactly_as_a_scan_at_every_boundary(where: dict[str, Any]) -> None:
    """Bounds, types (true is not 1), integers beyond a float's precision, prefixes
    ending in the last code point: the index narrows, and never loses a match."""
    plain = open_store("mem://", "P")
    indexed = open_store("mem://", "X", indexes=["v"])
    try:
        for store in (plain, indexed):
            store.create(BOUNDARY_DOCS)
        expected = sorted(d["id"] for d in BOUNDARY_DOCS if holds(d, where))
        for store in (plain, indexed):
            answer = store.run_query(Query(where=parse(where), explain=True))
            assert sorted(_loads(d)["id"] for d in answer["results"]) == expected, store
        assert indexed.run_query(Query(where=parse(where), explain=True))["explain"]["index"] or (
            where == {"v": [2]}
        )
    finally:
        plain.close()
        indexed.close()


def test_queries_past_their_bounds_are_refused_before_any_work() -> None:
    """What a hostile client might send to make one request expensive."""
    deep: dict[str, Any] = {"a": 1}
    for _ in range(40):
        deep = {"$not": deep}
    with pytest.raises(InvalidDocument, match="nested deeper than 32"):
        parse(deep)
    with pytest.raises(InvalidDocument, match="more than 1000 conditions"):
        parse({"$or": [{f"p{i}": i} for i in range(1_001)]})
    with pytest.raises(InvalidDocument, match="at most 8 keys"):
        parse_sort(",".join(f"k{i}" for i in range(9)))
    with pytest.raises(InvalidDocument, match="at most 100"):
        parse_fields(",".join(f"f{i}" for i in range(101)))
    store = open_store("mem://", "L")
    try:
        for i in range(index_module.MAX_INDEXES):
            store.indexes.add(f"p{i}")
        with pytest.raises(InvalidOperation, match="at most 32 indexes"):
            store.indexes.add("one.more")
    finally:
        store.close()
