"""History over HTTP: changesets since a revision, one object's history, conflicts."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.api.conftest import BASIC_CONFIG, StartNode
from tests.api.helpers import error_of
from vesper.store import open_store


def changesets(http: httpx.Client, **params: object) -> list[dict]:
    r = http.get("/api/changesets", params=params)
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["changesets"]
    return r.json()["changesets"]


def test_changesets_since_a_revision_and_limit(http: httpx.Client) -> None:
    before = http.get("/api/status").json()["revision"]
    revs = [
        http.post("/api/objects", json={"id": "cs-1"}).json()["revision"],
        http.patch("/api/objects/cs-1", json={"v": 1}).json()["revision"],
        http.delete("/api/objects/cs-1").json()["revision"],
    ]
    found = changesets(http, since=before)
    assert [c["revision"] for c in found] == revs
    assert [c["id"] for c in found] == revs  # one branch: id and revision agree
    for c in found:
        assert c["origin"] == "N1"
        assert {"base_revision", "changes", "time"} <= set(c)
    assert [c["revision"] for c in changesets(http, since=before, limit=2)] == revs[:2]
    assert changesets(http, since=revs[-1]) == []
    everything = changesets(http)
    assert everything[0]["id"] == "N1.1" and everything[-3:] == found


def test_changesets_errors(http: httpx.Client) -> None:
    assert "not-a-revision" in error_of(http.get("/api/changesets?since=not-a-revision"), 400)
    error_of(http.get("/api/changesets?limit=x"), 400)


def test_object_history_oldest_first(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "oh", "v": 1}).raise_for_status()
    http.put("/api/objects/oh", json={"w": 2}).raise_for_status()
    http.delete("/api/objects/oh").raise_for_status()
    r = http.get("/api/objects/oh/history")
    assert r.status_code == 200
    history = r.json()["history"]
    assert [h["object"] for h in history] == [{"id": "oh", "v": 1}, {"id": "oh", "w": 2}, None]
    assert all(h["origin"] == "N1" for h in history)
    revisions = [h["revision"] for h in history]
    assert revisions == sorted(revisions, key=lambda r: int(r.split(".")[1]))
    assert "never" in error_of(http.get("/api/objects/never/history"), 404)
    error_of(http.get("/api/objects/oh/history?all=1"), 400)


def test_conflicts_empty_on_a_single_node(http: httpx.Client) -> None:
    r = http.get("/api/conflicts")
    assert r.status_code == 200 and r.json() == {"conflicts": []}


def test_conflicts_from_concurrent_writes_are_listed(start_node: StartNode, tmp_path: Path) -> None:
    # Two branches write the same property concurrently; N1's file store merges B's
    # changesets, then `vesper serve` opens that file.
    a = open_store(f"sqlite:///{tmp_path}/data/N1.db", "N1")
    b = open_store("mem://", "B")
    try:
        a.create({"id": "x", "v": 0})
        b.apply_many(a.changesets(b.revision))
        a.update("x", {"v": "from N1"})
        b.update("x", {"v": "from B"})
        a.apply_many(b.changesets(a.revision))
        expected = a.conflicts()
        revision = a.revision
    finally:
        a.close()
        b.close()
    node = start_node(BASIC_CONFIG)
    with node.client() as http:
        assert http.get("/api/status").json()["revision"] == revision == "B.1,N1.2"
        conflicts = http.get("/api/conflicts").json()["conflicts"]
        assert conflicts == expected and len(conflicts) == 1
        assert conflicts[0]["id"] == "x" and conflicts[0]["property"] == "v"
        assert http.get("/api/conflicts", params={"id": "x"}).json()["conflicts"] == expected
        assert http.get("/api/conflicts", params={"id": "y"}).json()["conflicts"] == []
        origins = {c["origin"] for c in http.get("/api/changesets").json()["changesets"]}
        assert origins == {"N1", "B"}
        since_b = http.get("/api/changesets", params={"since": "B.1"}).json()["changesets"]
        assert [c["id"] for c in since_b] == ["N1.1", "N1.2"]
    assert node.stop() == 0


def test_history_endpoints_need_save_history(start_node: StartNode) -> None:
    node = start_node("work_dir = 'data'\n")  # save_history defaults to False
    with node.client() as http:
        http.post("/api/objects", json={"id": "x"}).raise_for_status()
        assert "save_history" in error_of(http.get("/api/changesets"), 409)
        assert "save_history" in error_of(http.get("/api/objects/x/history"), 409)
        assert http.get("/api/status").status_code == 200
    assert node.stop() == 0
