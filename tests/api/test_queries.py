"""``GET /api/objects`` listing, filters and paging; ``POST /api/transaction``.

Each test creates objects with its own prefix and filters on a ``group`` property, so
the tests can share one node.
"""

from __future__ import annotations

import json

import httpx

from tests.api.helpers import error_of


def listing(http: httpx.Client, **params: object) -> dict:
    query = {k: json.dumps(v) if k == "where" else v for k, v in params.items()}
    r = http.get("/api/objects", params=query)
    assert r.status_code == 200, r.text
    return r.json()


def test_list_is_sorted_by_id_and_carries_the_revision(http: httpx.Client) -> None:
    docs = [{"id": f"l1-{i}", "group": "l1", "i": i} for i in (3, 1, 2)]
    revision = http.post("/api/objects", json=docs).json()["revision"]
    body = listing(http, where={"group": "l1"})
    assert [d["id"] for d in body["results"]] == ["l1-1", "l1-2", "l1-3"]
    assert body["revision"] == revision == http.get("/api/status").json()["revision"]


def test_where_keeps_objects_whose_properties_equal(http: httpx.Client) -> None:
    http.post(
        "/api/objects",
        json=[
            {"id": "w-1", "group": "w", "color": "red", "n": 1, "ok": True, "tags": ["a"]},
            {"id": "w-2", "group": "w", "color": "red", "n": 1.0, "ok": False, "tags": []},
            {"id": "w-3", "group": "w", "color": "blue", "n": 2, "ok": True, "x": None},
        ],
    ).raise_for_status()

    def ids(where: dict) -> list[str]:
        return [d["id"] for d in listing(http, where={"group": "w", **where})["results"]]

    assert ids({"color": "red"}) == ["w-1", "w-2"]
    assert ids({"n": 1}) == ["w-1", "w-2"]  # JSON equality: 1 == 1.0
    assert ids({"ok": True, "color": "blue"}) == ["w-3"]
    assert ids({"x": None}) == ["w-3"]
    assert ids({"tags": ["a"]}) == ["w-1"]
    assert ids({"color": "green"}) == []


def test_limit_and_after_page_through_everything(http: httpx.Client) -> None:
    http.post("/api/objects", json=[{"id": f"pg-{i:02d}", "group": "pg"} for i in range(25)])
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, object] = {"where": {"group": "pg"}, "limit": 10}
        if after is not None:
            params["after"] = after
        page = listing(http, **params)["results"]
        seen += [d["id"] for d in page]
        if len(page) < 10:
            break
        after = page[-1]["id"]
    assert seen == [f"pg-{i:02d}" for i in range(25)]
    assert listing(http, where={"group": "pg"}, limit=0)["results"] == []


def test_list_parameter_errors(http: httpx.Client) -> None:
    bad = [
        ({"where": "{oops"}, "not valid JSON"),
        ({"where": "[1]"}, "JSON object"),
        ({"limit": "-1"}, "non-negative integer"),
        ({"limit": "ten"}, "non-negative integer"),
        ({"color": "red"}, "'color'"),
    ]
    for params, expected in bad:
        assert expected in error_of(http.get("/api/objects", params=params), 400), params
    r = http.get("/api/objects?limit=1&limit=2")
    assert "more than once" in error_of(r, 400)


def test_a_large_listing_streams_and_is_valid_json(http: httpx.Client) -> None:
    # About 1 MB in several chunks: more than the 64 KiB the API gathers per batch.
    docs = [{"id": f"big-{i:05d}", "group": "big", "pad": "p" * 100} for i in range(8000)]
    for start in range(0, len(docs), 400):  # this node's body limit is 64 KiB
        http.post("/api/objects", json=docs[start : start + 400]).raise_for_status()
    with http.stream("GET", "/api/objects", params={"where": '{"group": "big"}'}) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        body = json.loads(r.read())
    assert [d["id"] for d in body["results"]] == [d["id"] for d in docs]
    assert isinstance(body["revision"], str)
    # Reads keep working while a client holds a listing open half-read.
    with http.stream("GET", "/api/objects") as slow, node_client(http) as other:
        next(slow.iter_bytes())
        assert other.get("/api/objects/big-00001").status_code == 200
        assert other.post("/api/objects", json={"id": "during-scan"}).status_code == 201


def node_client(http: httpx.Client) -> httpx.Client:
    return httpx.Client(base_url=http.base_url, timeout=30)


def test_transaction_is_all_or_nothing_in_one_revision(http: httpx.Client) -> None:
    http.post("/api/objects", json=[{"id": "t-upd", "a": 1}, {"id": "t-del"}]).raise_for_status()
    ops = [
        {"op": "create", "object": {"id": "t-new", "v": 1}},
        {"op": "replace", "object": {"id": "t-rep", "v": 2}},
        {"op": "update", "id": "t-upd", "patch": {"a": None, "b": 2}},
        {"op": "delete", "id": "t-del"},
        {"op": "create", "object": {"v": 3}},
    ]
    before = http.get("/api/status").json()["revision"]
    r = http.post("/api/transaction", json={"ops": ops})
    assert r.status_code == 200, r.text
    revision = r.json()["revision"]
    assert int(revision.split(".")[-1]) == int(before.split(".")[-1]) + 1
    generated = r.json()["ids"][-1]
    assert http.get("/api/objects/t-new").json() == {"id": "t-new", "v": 1}
    assert http.get("/api/objects/t-rep").json() == {"id": "t-rep", "v": 2}
    assert http.get("/api/objects/t-upd").json() == {"id": "t-upd", "b": 2}
    assert http.get("/api/objects/t-del").status_code == 404
    assert http.get(f"/api/objects/{generated}").json() == {"id": generated, "v": 3}


def test_transaction_errors_change_nothing(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "tx-e"}).raise_for_status()
    revision = http.get("/api/status").json()["revision"]
    create_tx1 = {"op": "create", "object": {"id": "tx-1"}}
    cases = [
        ({"ops": [create_tx1, {"op": "delete", "id": "nope"}]}, 404),
        ({"ops": [create_tx1, {"op": "create", "object": {"id": "tx-e"}}]}, 409),
        ({"ops": [{"op": "frobnicate", "id": "tx-e"}]}, 400),
        ({"ops": [{"op": "update", "id": "tx-e"}]}, 400),
        ({"ops": []}, 400),
        ({"ops": {"op": "delete"}}, 400),
        ({"ops": [], "extra": 1}, 400),
        ({}, 400),
        ([], 400),
    ]
    for body, status in cases:
        error_of(http.post("/api/transaction", json=body), status)
    error_of(http.post("/api/transaction", content=b"{"), 400)
    assert http.get("/api/objects/tx-1").status_code == 404
    assert http.get("/api/status").json()["revision"] == revision
