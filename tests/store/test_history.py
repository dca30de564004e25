"""History: changesets, one object's history, time travel, save_history = False."""

from __future__ import annotations

import orjson
import pytest

from vesper.errors import HistoryDisabled, InvalidRevision
from vesper.history.revision import parse_revision
from vesper.store import Store, open_store


def test_changesets_carry_ids_revisions_clock_and_changes(store: Store) -> None:
    store.create({"id": "a", "x": 1})
    store.update("a", {"x": 2, "y": 3})
    first, second = store.changesets()
    assert first["id"] == "A.1" and first["origin"] == "A"
    assert (first["base_revision"], first["revision"]) == ("", "A.1")
    assert (second["base_revision"], second["revision"]) == ("A.1", "A.2")
    assert second["hlc"] > first["hlc"] and second["time"].endswith("Z")
    assert second["changes"] == [
        {"id": "a", "op": "update", "exists": True, "set": {"x": 2, "y": 3}}
    ]


def test_changesets_since_a_revision(store: Store) -> None:
    for i in range(5):
        store.create({"id": f"o{i}"})
    assert [c["id"] for c in store.changesets(since="A.3")] == ["A.4", "A.5"]
    assert list(store.changesets(since="A.5")) == []
    assert [c["id"] for c in store.changesets(limit=2)] == ["A.1", "A.2"]
    assert [c["id"] for c in store.changesets(since="A.9,B.2")] == []
    with pytest.raises(InvalidRevision):
        store.changesets(since="A.x")


def test_changesets_since_mixes_origins_in_causal_order() -> None:
    a, b = open_store("mem://", "A"), open_store("mem://", "B")
    a.create({"id": "a1"})
    b.apply_many(a.changesets())
    b.create({"id": "b1"})
    a.create({"id": "a2"})
    b.apply_many(a.changesets(since=b.revision))
    assert [c["id"] for c in b.changesets()] == ["A.1", "B.1", "A.2"]
    assert [c["id"] for c in b.changesets(since="A.1")] == ["B.1", "A.2"]
    assert [c["id"] for c in b.changesets(since="B.1")] == ["A.1", "A.2"]


def test_object_history_oldest_first(store: Store) -> None:
    store.create({"id": "a", "x": 1})
    store.create({"id": "other"})
    store.update("a", {"x": 2})
    store.delete("a")
    store.create({"id": "a", "y": 1})
    history = store.object_history("a")
    assert [h["op"] for h in history] == ["create", "update", "delete", "create"]
    assert [h["changeset"] for h in history] == ["A.1", "A.3", "A.4", "A.5"]
    assert [h["object"] for h in history] == [
        {"id": "a", "x": 1},
        {"id": "a", "x": 2},
        None,
        {"id": "a", "y": 1},
    ]
    assert store.object_history("never") == []


def test_time_travel_to_any_past_revision(store: Store) -> None:
    store.create({"id": "a", "x": 1})
    store.create({"id": "b"})
    store.update("a", {"x": 2})
    store.delete("b")
    assert store.get_at("a", "A.1") == {"id": "a", "x": 1}
    assert store.get_at("a", "A.3") == {"id": "a", "x": 2}
    assert store.get_at("a", "") is None
    assert store.get_at("b", "A.3") == {"id": "b"}
    assert store.get_at("b", "A.4") is None
    assert store.objects_at("A.2") == [{"id": "a", "x": 1}, {"id": "b"}]
    assert store.objects_at(store.revision) == list(store.query())


def test_without_history_documents_work_and_history_is_refused() -> None:
    s = open_store("mem://", "A", save_history=False)
    s.create({"id": "a"})
    s.update("a", {"x": 1})
    assert s.get("a") == {"id": "a", "x": 1} and parse_revision(s.revision) == {"A": 2}
    for call in (
        lambda: list(s.changesets()),
        lambda: s.object_history("a"),
        lambda: s.get_at("a", "A.1"),
        lambda: s.apply_many([]),
    ):
        with pytest.raises(HistoryDisabled):
            call()


def test_reopened_store_keeps_revision_clock_and_history(file_url: str) -> None:
    with open_store(file_url, "A") as s:
        s.create({"id": "a", "x": 1})
        s.update("a", {"x": 2})
        hlc = s.changeset("A.2")["hlc"]  # type: ignore[index]
        digest = s.digest()
    with open_store(file_url, "A") as s:
        assert s.revision == "A.2" and s.digest() == digest and s.count == 1
        s.update("a", {"x": 3})
        assert s.changeset("A.3")["hlc"] > hlc  # type: ignore[index]
        assert s.changeset("A.3")["base_revision"] == "A.2"  # type: ignore[index]


def test_query_snapshot_names_the_revision_of_its_contents(file_url: str) -> None:
    with open_store(file_url, "A") as s:
        s.create([{"id": f"o{i:04}"} for i in range(1200)])
        revision, rows = s.query_snapshot()
        s.create({"id": "zzz-after"})  # lands after the snapshot began
        ids = [orjson.loads(r)["id"] for r in rows]
        assert revision == "A.1" and len(ids) == 1200 and "zzz-after" not in ids
        assert s.query_snapshot(limit=0)[0] == "A.2"
