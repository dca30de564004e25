"""Local operations, queries and their errors, on both storage backends."""

from __future__ import annotations

import math

import pytest

from vesper.errors import (
    DocumentExists,
    DocumentNotFound,
    InvalidDocument,
    InvalidOperation,
)
from vesper.store import Store


def test_create_get_and_generated_ids(store: Store) -> None:
    result = store.create({"id": "a", "x": 1})
    assert result.ids == ["a"] and result.revision == "A.1" and result.changeset == "A.1"
    assert store.get("a") == {"id": "a", "x": 1}
    generated = store.create({"y": 2})
    (new_id,) = generated.ids
    assert isinstance(new_id, str) and new_id and store.get(new_id) == {"id": new_id, "y": 2}
    assert store.count == 2


def test_create_many_is_one_changeset(store: Store) -> None:
    result = store.create([{"id": "a"}, {"id": "b", "v": [1, {"k": None}]}])
    assert result.revision == "A.1" and result.ids == ["a", "b"]
    assert [o["id"] for o in store.query()] == ["a", "b"]


def test_create_existing_id_is_refused_and_changes_nothing(store: Store) -> None:
    store.create({"id": "a", "x": 1})
    with pytest.raises(DocumentExists, match="'a' already exists"):
        store.create([{"id": "b"}, {"id": "a"}])
    assert store.get("b") is None and store.revision == "A.1"


def test_replace_creates_and_replaces_whole_object(store: Store) -> None:
    store.replace({"id": "a", "x": 1, "y": 2})
    store.replace({"x": 3}, "a")
    assert store.get("a") == {"id": "a", "x": 3}
    with pytest.raises(InvalidDocument, match="does not match"):
        store.replace({"id": "b"}, "a")
    with pytest.raises(InvalidDocument, match="needs an 'id'"):
        store.replace({"x": 1})


def test_update_is_json_merge_patch(store: Store) -> None:
    store.create({"id": "a", "x": 1, "n": {"p": 1, "q": 2}, "gone": True})
    store.update("a", {"x": 2, "n": {"q": None, "r": 3}, "gone": None, "new": [1]})
    assert store.get("a") == {"id": "a", "x": 2, "n": {"p": 1, "r": 3}, "new": [1]}
    store.update("a", {"id": "a"})  # naming its own id is allowed
    with pytest.raises(InvalidDocument, match="id cannot be changed"):
        store.update("a", {"id": "b"})
    with pytest.raises(DocumentNotFound):
        store.update("missing", {"x": 1})
    with pytest.raises(InvalidDocument, match="Merge Patch"):
        store.update("a", [1])  # type: ignore[arg-type]


def test_delete_then_recreate_starts_fresh(store: Store) -> None:
    store.create({"id": "a", "x": 1, "y": 2})
    store.delete("a")
    assert store.get("a") is None and store.count == 0
    with pytest.raises(DocumentNotFound):
        store.delete("a")
    with pytest.raises(DocumentNotFound):
        store.update("a", {"x": 1})
    store.create({"id": "a", "z": 3})
    assert store.get("a") == {"id": "a", "z": 3}


def test_transaction_is_all_or_nothing(store: Store) -> None:
    store.create({"id": "a", "x": 1})
    result = store.transaction(
        [
            {"op": "create", "object": {"id": "b", "v": 1}},
            {"op": "update", "id": "b", "patch": {"v": 2}},
            {"op": "update", "id": "a", "patch": {"x": None}},
            {"op": "replace", "object": {"id": "c", "w": 1}},
            {"op": "delete", "id": "c"},
        ]
    )
    assert result.revision == "A.2" and result.ids == ["b", "b", "a", "c", "c"]
    assert list(store.query()) == [{"id": "a"}, {"id": "b", "v": 2}]
    before = store.digest()
    with pytest.raises(DocumentNotFound):
        store.transaction(
            [{"op": "update", "id": "a", "patch": {"x": 9}}, {"op": "delete", "id": "nope"}]
        )
    assert store.digest() == before and store.revision == "A.2"
    changes = store.changeset("A.2")["changes"]  # type: ignore[index]
    assert [(c["id"], c["op"]) for c in changes] == [
        ("b", "create"),
        ("a", "update"),
        ("c", "delete"),
    ]


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([], "at least one operation"),
        ("create", "must be a list"),
        ([{"op": "upsert", "id": "a"}], "unknown op 'upsert'"),
        ([{"id": "a"}], "unknown op None"),
        (["x"], "must be an object"),
        ([{"op": "create"}], "needs 'object'"),
        ([{"op": "delete"}], "needs 'id'"),
        ([{"op": "update", "id": "a"}], "needs 'patch'"),
        ([{"op": "delete", "id": "a", "extra": 1}], "unexpected field 'extra'"),
    ],
)
def test_bad_operations_are_named(store: Store, ops: object, message: str) -> None:
    with pytest.raises(InvalidOperation, match=message):
        store.transaction(ops)  # type: ignore[arg-type]
    assert store.revision == ""


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "object 0 must be a JSON object, got a number"),
        ([[1]], "must be a JSON object, got an array"),
        ("text", "must be a JSON object, got a string"),
        ({"id": 5}, "id must be a string"),
        ({"id": ""}, "must not be empty"),
        ({"id": "x" * 1025}, "1025 bytes long; the limit is 1024"),
        ({"id": "\ud800"}, "not valid Unicode"),
        ({"v": math.nan}, "NaN"),
        ({"v": math.inf}, "NaN and infinity"),
        ({"v": b"bytes"}, "bytes is not a JSON value"),
        ({"v": {1: "x"}}, "key 1 is not a string"),
        ({"v": 2**70}, "outside the signed 64-bit range"),
        ({"v": 2**63}, "integer 9223372036854775808 is outside the signed 64-bit range"),
        ({"v": -(2**63) - 1}, "outside the signed 64-bit range"),
        ({"v": {1, 2}}, "set is not a JSON value"),
    ],
)
def test_bad_documents_are_named_and_change_nothing(
    store: Store, doc: object, message: str
) -> None:
    store.create({"id": "keep"})
    with pytest.raises(InvalidDocument, match=message):
        store.create(doc)  # type: ignore[arg-type]
    assert store.revision == "A.1" and [o["id"] for o in store.query()] == ["keep"]


def test_deep_nesting_is_refused(store: Store) -> None:
    value: object = 1
    for _ in range(200):
        value = [value]
    with pytest.raises(InvalidDocument, match="nested deeper"):
        store.create({"v": value})


def test_query_sorted_filtered_and_paged(store: Store) -> None:
    store.create(
        [
            {
                "id": f"o{i:03}",
                "n": i % 3,
                "b": i % 2 == 0,
                "s": str(i % 2),
                "f": 1.0 if i % 4 == 0 else 2,
                "arr": [i % 2],
            }
            for i in range(30)
        ]
    )
    ids = [o["id"] for o in store.query()]
    assert ids == sorted(ids) and len(ids) == 30
    assert [o["id"] for o in store.query(limit=3, after="o010")] == ["o011", "o012", "o013"]
    assert {o["n"] for o in store.query(where={"n": 1})} == {1}
    assert len(list(store.query(where={"n": 1}))) == 10
    # JSON equality: true is not 1, 1.0 equals 1, arrays compare by value.
    assert len(list(store.query(where={"b": True}))) == 15
    assert list(store.query(where={"n": True})) == []
    assert len(list(store.query(where={"f": 1}))) == 8
    assert len(list(store.query(where={"arr": [1]}))) == 15
    assert len(list(store.query(where={"s": "1", "n": 0}))) == 5
    assert list(store.query(where={"missing": None})) == []
    assert list(store.query(limit=0)) == []
    with pytest.raises(InvalidDocument, match="limit"):
        list(store.query(limit=-1))
    with pytest.raises(InvalidDocument, match="where must be a JSON object"):
        list(store.query(where=[1]))  # type: ignore[arg-type]


def test_query_streams_across_pages_while_writing(store: Store) -> None:
    store.create([{"id": f"{i:05}"} for i in range(1200)])
    seen = []
    for doc in store.query():
        seen.append(doc["id"])
        if len(seen) == 10:
            store.create({"id": "zzz-late"})
    assert len(seen) >= 1200 and seen[:1200] == [f"{i:05}" for i in range(1200)]


def test_null_property_values_are_kept(store: Store) -> None:
    store.create({"id": "a", "v": None})
    assert store.get("a") == {"id": "a", "v": None}
    assert [o["id"] for o in store.query(where={"v": None})] == ["a"]
