"""The query language over HTTP: operators, sort with cursors, fields, count, explain,
indexes added by HTTP and by configuration, history paging, and the 400s that point
at the offending part. (Every operator against a brute-force filter:
tests/store/test_query_language.py.)"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.api.conftest import BASIC_CONFIG, StartNode


def listing(http: httpx.Client, **params: object) -> dict:
    query = {k: json.dumps(v) if k == "where" else v for k, v in params.items()}
    answer = http.get("/api/objects", params=query)
    assert answer.status_code == 200, answer.text
    return answer.json()


def ids(answer: dict) -> list[str]:
    return [o["id"] for o in answer["results"]]


def test_operators_sort_fields_count_and_cursors(http: httpx.Client) -> None:
    http.post(
        "/api/objects",
        json=[
            {"id": "ql-a", "g": "ql", "price": 5, "owner": {"name": "Ann"}, "tags": ["x"]},
            {"id": "ql-b", "g": "ql", "price": 15, "owner": {"name": "Bob"}},
            {"id": "ql-c", "g": "ql", "price": "15"},
            {"id": "ql-d", "g": "ql", "price": True},
            {"id": "ql-e", "g": "ql", "price": 15.0, "owner": {"name": "Al"}},
        ],
    ).raise_for_status()
    assert ids(listing(http, where={"g": "ql", "price": {"$gte": 10}})) == ["ql-b", "ql-e"]
    assert ids(listing(http, where={"g": "ql", "price": 1})) == []  # true is not 1
    assert ids(listing(http, where={"owner.name": {"$prefix": "A"}, "g": "ql"})) == [
        "ql-a",
        "ql-e",
    ]
    assert ids(listing(http, where={"g": "ql", "tags": {"$contains": "x"}})) == ["ql-a"]
    assert ids(
        listing(http, where={"g": "ql", "$or": [{"price": "15"}, {"owner": {"$exists": False}}]})
    ) == ["ql-c", "ql-d"]
    assert listing(http, where={"g": "ql"}, count="true")["count"] == 5
    projected = listing(http, where={"g": "ql", "price": 5}, fields="owner.name")
    assert projected["results"] == [{"id": "ql-a", "owner": {"name": "Ann"}}]

    pages, after = [], None
    while True:
        params = {"where": {"g": "ql"}, "sort": "-price,id", "limit": 2}
        page = listing(http, **params, **({"after": after} if after else {}))
        pages.append(ids(page))
        after = page["next"]
        if after is None:
            break
    # Descending: strings after numbers after booleans; 15 and 15.0 tie, broken by id.
    assert pages == [["ql-c", "ql-b"], ["ql-e", "ql-a"], ["ql-d"]]


@pytest.mark.parametrize(
    ("params", "points_at"),
    [
        ({"where": '{"price": {"$gt": [1]}}'}, "where.price.$gt"),
        ({"where": '{"$or": [{"a": 1}, 7]}'}, "where.$or[1]"),
        ({"where": '{"a": {"$regex": "x"}}'}, "where.a.$regex"),
        ({"sort": "a,,b"}, "sort"),
        ({"fields": "a..b"}, "fields"),
        ({"sort": "a", "after": "not-a-cursor"}, "after"),
        ({"sort": "a", "limit": "10001"}, "limit is at most 10000"),
        ({"count": "maybe"}, "count"),
    ],
)
def test_bad_queries_get_400_pointing_at_the_part(
    http: httpx.Client, params: dict, points_at: str
) -> None:
    answer = http.get("/api/objects", params=params)
    assert answer.status_code == 400, answer.text
    assert points_at in answer.json()["error"]


def test_an_index_added_over_http_serves_queries_once_built(http: httpx.Client) -> None:
    http.post(
        "/api/objects", json=[{"id": f"ix-{i:04d}", "ix": i % 20} for i in range(1_000)]
    ).raise_for_status()
    where = {"ix": {"$gte": 3, "$lte": 3}}
    before = listing(http, where=where, explain="true")
    assert before["explain"]["index"] is None and before["explain"]["read"] >= 1_000
    added = http.post("/api/indexes", json={"path": "ix"})
    assert added.status_code == 202, added.text
    deadline = time.monotonic() + 30
    while http.get("/api/indexes").json()["indexes"][0]["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = listing(http, where=where, explain="true")
    assert after["explain"] == {"index": "ix (range)", "read": 50, "matched": 50}
    assert ids(after) == ids(before)
    assert listing(http, where={"ix": 3}, explain="true")["explain"]["index"] == "ix (equality)"
    # A plain listing uses it too, with the same answer as before.
    assert ids(listing(http, where=where)) == ids(before)
    assert http.post("/api/indexes", json={"path": "ix"}).status_code == 200  # there already
    for bad in ({"path": "a..b"}, {"path": 5}, {"what": "x"}):
        assert http.post("/api/indexes", json=bad).status_code == 400, bad


def test_indexes_from_the_configuration(start_node: StartNode) -> None:
    node = start_node(BASIC_CONFIG + "indexes = ['kind', 'owner.name']\n")
    with node.client() as http:
        http.post("/api/objects", json=[{"id": "c1", "kind": "k"}, {"id": "c2"}])
        states = {i["path"]: i["state"] for i in http.get("/api/indexes").json()["indexes"]}
        assert states == {"kind": "ready", "owner.name": "ready"}
        served = listing(http, where={"kind": "k"}, explain="true")
        assert served["explain"]["index"] == "kind (equality)" and ids(served) == ["c1"]


def test_history_pages(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "hp", "v": 0}).raise_for_status()
    for v in range(1, 5):
        http.patch("/api/objects/hp", json={"v": v}).raise_for_status()
    first = http.get("/api/objects/hp/history", params={"limit": 2}).json()
    assert [e["object"]["v"] for e in first["history"]] == [0, 1]
    rest = http.get("/api/objects/hp/history", params={"after": first["next"]}).json()
    assert [e["object"]["v"] for e in rest["history"]] == [2, 3, 4] and "next" not in rest
    bad = http.get("/api/objects/hp/history", params={"after": "Z.9"})
    assert bad.status_code == 400
