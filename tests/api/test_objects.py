"""``/api/objects`` against a real ``vesper serve``: every answer and every error."""

from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import error_of


def test_create_one_object_then_read_it(http: httpx.Client) -> None:
    r = http.post("/api/objects", json={"id": "c1", "name": "Ada", "tags": ["x"]})
    assert r.status_code == 201
    assert r.json()["ids"] == ["c1"]
    assert r.json()["revision"].startswith("N1.")
    assert http.get("/api/objects/c1").json() == {"id": "c1", "name": "Ada", "tags": ["x"]}


def test_create_an_array_in_one_revision_with_generated_ids(http: httpx.Client) -> None:
    r = http.post("/api/objects", json=[{"id": "c2a"}, {"v": 1}, {"v": 2}])
    assert r.status_code == 201
    ids = r.json()["ids"]
    assert ids[0] == "c2a" and len(ids) == 3 and len(set(ids)) == 3
    for obj_id in ids[1:]:
        assert http.get(f"/api/objects/{obj_id}").json()["id"] == obj_id


def test_create_on_an_existing_id_is_409_and_changes_nothing(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "c3", "v": 1}).raise_for_status()
    message = error_of(http.post("/api/objects", json={"id": "c3", "v": 2}), 409)
    assert "c3" in message
    message = error_of(http.post("/api/objects", json=[{"id": "c3x"}, {"id": "c3"}]), 409)
    assert "c3" in message
    assert http.get("/api/objects/c3").json() == {"id": "c3", "v": 1}
    assert http.get("/api/objects/c3x").status_code == 404  # all or nothing


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"42", "object or an array"),
        (b'"text"', "object or an array"),
        (b"[]", "empty array"),
        (b"[1, 2]", "JSON object"),
        (b'{"id": 7}', "id must be a string"),
        (b'{"id": ""}', "empty"),
        (b'{"a": 1e999}', "JSON"),
    ],
)
def test_create_rejects_bad_bodies_with_400(http: httpx.Client, body: bytes, expected: str) -> None:
    message = error_of(http.post("/api/objects", content=body), 400)
    assert expected in message


def test_get_unknown_id_is_404_naming_it(http: httpx.Client) -> None:
    assert "no-such" in error_of(http.get("/api/objects/no-such"), 404)


def test_put_replaces_the_whole_object_and_creates_if_absent(http: httpx.Client) -> None:
    r = http.put("/api/objects/p1", json={"a": 1, "b": 2})
    assert r.status_code == 200 and list(r.json()) == ["revision"]
    http.put("/api/objects/p1", json={"id": "p1", "c": 3}).raise_for_status()
    assert http.get("/api/objects/p1").json() == {"id": "p1", "c": 3}


def test_put_errors(http: httpx.Client) -> None:
    assert "does not match" in error_of(http.put("/api/objects/p2", json={"id": "other"}), 400)
    assert "JSON object" in error_of(http.put("/api/objects/p2", json=[1]), 400)
    error_of(http.put("/api/objects/p2", content=b"{"), 400)
    assert http.get("/api/objects/p2").status_code == 404


def test_patch_is_a_json_merge_patch(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "m1", "a": 1, "b": {"c": 1, "d": 2}}).raise_for_status()
    r = http.patch(
        "/api/objects/m1",
        content=b'{"a": null, "b": {"c": null, "e": 5}, "f": [1]}',
        headers={"content-type": "application/merge-patch+json"},
    )
    assert r.status_code == 200 and list(r.json()) == ["revision"]
    assert http.get("/api/objects/m1").json() == {"id": "m1", "b": {"d": 2, "e": 5}, "f": [1]}


def test_patch_errors(http: httpx.Client) -> None:
    assert "m-missing" in error_of(http.patch("/api/objects/m-missing", json={"a": 1}), 404)
    http.post("/api/objects", json={"id": "m2"}).raise_for_status()
    assert "JSON object" in error_of(http.patch("/api/objects/m2", json=[1]), 400)
    error_of(http.patch("/api/objects/m2", content=b"nope"), 400)
    assert "id" in error_of(http.patch("/api/objects/m2", json={"id": "m3"}), 400)


def test_delete_then_404(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "d1"}).raise_for_status()
    r = http.delete("/api/objects/d1")
    assert r.status_code == 200 and list(r.json()) == ["revision"]
    assert http.get("/api/objects/d1").status_code == 404
    assert "d1" in error_of(http.delete("/api/objects/d1"), 404)
    # A deleted id may be created again.
    assert http.post("/api/objects", json={"id": "d1", "again": True}).status_code == 201


def test_ids_with_slashes_and_unicode_round_trip(http: httpx.Client) -> None:
    for obj_id, path in [("s/1", "s%2F1"), ("é x", "%C3%A9%20x"), ("h/history", "h%2Fhistory")]:
        http.post("/api/objects", json={"id": obj_id, "v": 1}).raise_for_status()
        assert http.get(f"/api/objects/{path}").json() == {"id": obj_id, "v": 1}
        http.patch(f"/api/objects/{path}", json={"v": 2}).raise_for_status()
        assert http.get(f"/api/objects/{path}").json()["v"] == 2
    # ".../history" unencoded is the history of "h", not the object "h/history".
    http.post("/api/objects", json={"id": "h"}).raise_for_status()
    assert "history" in http.get("/api/objects/h/history").json()


def test_unknown_query_parameters_are_400_naming_them(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "q1"}).raise_for_status()
    for method, path in [
        ("GET", "/api/objects/q1?verbose=1"),
        ("POST", "/api/objects?dry_run=1"),
        ("PUT", "/api/objects/q1?dry_run=1"),
        ("DELETE", "/api/objects/q1?force=1"),
        ("GET", "/api/status?x=1"),
        ("GET", "/api/changesets?sinse=N1.1"),
        ("GET", "/api/objects?limt=2"),
    ]:
        response = http.request(method, path, json={"a": 1} if method != "GET" else None)
        name = path.split("?")[1].split("=")[0]
        assert repr(name) in error_of(response, 400), (method, path)
    assert http.get("/api/objects/q1").status_code == 200  # the DELETE did not happen


def test_unknown_paths_and_methods(http: httpx.Client) -> None:
    assert "/api/nothing" in error_of(http.get("/api/nothing"), 404)
    assert "PUT" in error_of(http.put("/api/status", json={}), 405)
    error_of(http.post("/api/objects/x1", json={}), 405)
