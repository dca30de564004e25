"""Remote changesets: idempotence, causal order, pending across restarts, conflicts,
delete against update, and malformed input."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vesper.errors import InvalidChangeset, StorageError
from vesper.store import Store, open_store


def stores(*names: str) -> list[Store]:
    return [open_store("mem://", n) for n in names]


def sync(*nodes: Store) -> None:
    for target in nodes:
        for source in nodes:
            if source is not target:
                target.apply_many(source.changesets(since=target.revision))


def test_apply_is_idempotent() -> None:
    a, b = stores("A", "B")
    a.create({"id": "x", "v": 1})
    cs = a.changeset("A.1")
    assert b.apply(cs).applied == ["A.1"]
    assert b.apply(cs).duplicates == ["A.1"]
    assert b.revision == "A.1" and b.get("x") == {"id": "x", "v": 1}
    assert len(list(b.changesets())) == 1


def test_out_of_order_changesets_wait_and_then_apply_in_order() -> None:
    a, b = stores("A", "B")
    for i in range(4):
        a.create({"id": f"o{i}"})
    cs = list(a.changesets())
    result = b.apply_many([cs[3], cs[1]])
    assert result.applied == [] and result.pending == ["A.4", "A.2"]
    assert b.pending_count == 2 and b.revision == ""
    assert b.apply(cs[1]).duplicates == ["A.2"]  # already pending
    result = b.apply(cs[0])
    assert result.applied == ["A.1", "A.2"] and b.pending_count == 1
    result = b.apply(cs[2])
    assert result.applied == ["A.3", "A.4"] and b.pending_count == 0
    assert [c["id"] for c in b.changesets()] == ["A.1", "A.2", "A.3", "A.4"]


def test_changeset_waits_for_its_causal_context_from_other_origins() -> None:
    a, b, c = stores("A", "B", "C")
    a.create({"id": "x", "v": 1})
    b.apply_many(a.changesets())
    b.update("x", {"v": 2})  # B.1 depends on A.1
    assert c.apply(b.changeset("B.1")).pending == ["B.1"]
    assert c.apply(a.changeset("A.1")).applied == ["A.1", "B.1"]
    assert c.get("x") == {"id": "x", "v": 2}


def test_pending_survives_restart(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    (a,) = stores("A")
    a.create({"id": "x"})
    a.update("x", {"v": 1})
    with open_store(url, "B") as b:
        b.apply(a.changeset("A.2"))
        assert b.pending_count == 1
    with open_store(url, "B") as b:
        assert b.pending_count == 1
        assert b.apply(a.changeset("A.1")).applied == ["A.1", "A.2"]
        assert b.get("x") == {"id": "x", "v": 1} and b.pending_count == 0


def test_concurrent_writes_pick_the_same_winner_and_list_the_loser() -> None:
    a, b = stores("A", "B")
    a.create({"id": "x", "v": 0, "other": 0})
    sync(a, b)
    a.update("x", {"v": "from A"})
    b.update("x", {"v": "from B", "other": 1})
    sync(a, b)
    assert a.get("x") == b.get("x") and a.get("x")["other"] == 1  # type: ignore[index]
    assert a.conflicts() == b.conflicts()
    (conflict,) = a.conflicts()
    assert conflict["id"] == "x" and conflict["property"] == "v"
    values = {conflict["winner"]["value"], conflict["losers"][0]["value"]}
    assert values == {"from A", "from B"}
    assert conflict["winner"]["value"] == a.get("x")["v"]  # type: ignore[index]
    # A write made after seeing both clears the conflict everywhere.
    a.update("x", {"v": "resolved"})
    sync(a, b)
    assert a.conflicts() == b.conflicts() == []
    assert b.get("x")["v"] == "resolved"  # type: ignore[index]


def test_causally_later_write_wins_even_with_a_slow_clock() -> None:
    a, b = stores("A", "B")
    b._clock._now_ms = lambda: 1_000  # B's wall clock is decades behind
    a.create({"id": "x", "v": "old"})
    sync(a, b)
    b.update("x", {"v": "new"})
    sync(a, b)
    assert a.get("x")["v"] == b.get("x")["v"] == "new"  # type: ignore[index]
    assert a.conflicts() == []


def test_update_concurrent_with_delete_latest_wins_whole() -> None:
    """Existence is a register like any property: the later of a concurrent delete and
    update (by HLC, then branch id) wins. An update that wins brings back the whole
    object, since a delete leaves the properties alone."""
    a, b = stores("A", "B")
    a.create({"id": "x", "v": 1, "keep": True})
    sync(a, b)
    a._clock._now_ms = lambda: 2_000_000_000_000
    b._clock._now_ms = lambda: 2_000_000_001_000
    a.delete("x")
    b.update("x", {"v": 2})  # B's clock is later: the update wins
    sync(a, b)
    assert a.get("x") == b.get("x") == {"id": "x", "v": 2, "keep": True}
    (conflict,) = a.conflicts()
    assert conflict["property"] is None and conflict["winner"]["value"] is True
    assert conflict["losers"] == [{"changeset": "A.2", "origin": "A", "value": False}]

    c, d = stores("C", "D")
    c.create({"id": "y", "v": 1})
    sync(c, d)
    c._clock._now_ms = lambda: 2_000_000_001_000
    d._clock._now_ms = lambda: 2_000_000_000_000
    d.update("y", {"v": 2})
    c.delete("y")  # later: the delete wins
    sync(c, d)
    assert c.get("y") is None and d.get("y") is None and c.count == d.count == 0
    assert c.conflicts() == d.conflicts() and len(c.conflicts()) == 1


def test_concurrent_creates_of_one_id_merge_per_property() -> None:
    a, b = stores("A", "B")
    a.create({"id": "x", "a": 1, "both": "A"})
    b.create({"id": "x", "b": 1, "both": "B"})
    sync(a, b)
    assert a.get("x") == b.get("x")
    assert a.get("x")["a"] == 1 and a.get("x")["b"] == 1  # type: ignore[index]
    assert [c["property"] for c in a.conflicts()] == ["both"]


def test_removal_concurrent_with_set_keeps_a_tombstone() -> None:
    a, b = stores("A", "B")
    a.create({"id": "x", "v": 1})
    sync(a, b)
    b.update("x", {"v": 2})
    a.update("x", {"v": None})
    sync(a, b)
    assert a.get("x") == b.get("x")
    (conflict,) = a.conflicts()
    sides = [conflict["winner"], *conflict["losers"]]
    assert {"removed": True, "changeset": "A.2", "origin": "A"} in sides


def valid() -> dict[str, Any]:
    (a,) = stores("A")
    a.create({"id": "x", "v": 1})
    a.update("x", {"v": 2})
    return a.changeset("A.2")  # type: ignore[return-value]


def broken(**edits: Any) -> dict[str, Any]:
    body = copy.deepcopy(valid())
    for key, value in edits.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    ("changeset", "message"),
    [
        ("not json", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (broken(id=...), "missing field 'id'"),
        (broken(revision=...), "missing field 'revision'"),
        (broken(changes=...), "missing field 'changes'"),
        (broken(hlc="1"), "'hlc' has type str"),
        (broken(hlc=True), "'hlc' has type bool"),
        (broken(changes={}), "'changes' has type dict"),
        (broken(id="A-2"), "invalid changeset id"),
        (broken(origin="C"), "does not match its id"),
        (broken(revision="A.2,,"), "invalid revision"),
        (broken(revision="A.3"), "is not base_revision"),
        (broken(base_revision="A.0"), "invalid revision"),
        (broken(base_revision="A.1,A.1"), "appears twice"),
        (broken(changes=[{"id": "x", "op": "frob"}]), "op must be one of"),
        (broken(changes=[{"id": 3, "op": "update"}]), "id must be a string"),
        (broken(changes=[{"id": "x", "op": "update", "set": {"v": float("nan")}}]), "NaN"),
        (broken(changes=[{"id": "x", "op": "update", "set": {"id": "y"}}]), "'id'"),
        (broken(changes=[{"id": "x", "op": "update", "unset": [1]}]), "unset must be"),
        (
            broken(changes=[{"id": "x", "op": "delete"}, {"id": "x", "op": "delete"}]),
            "appears twice",
        ),
        (
            broken(id="B.2", origin="B", revision="A.1,B.2", base_revision="A.1,B.1"),
            "own branch id",
        ),
    ],
)
def test_malformed_changesets_are_refused_and_change_nothing(
    changeset: object, message: str
) -> None:
    (b,) = stores("B")
    b.create({"id": "mine"})
    before = (b.revision, b.digest(), b.pending_count)
    with pytest.raises(InvalidChangeset, match=message):
        b.apply_many([valid(), changeset])
    assert (b.revision, b.digest(), b.pending_count) == before


def test_store_refuses_another_branch_id_and_a_second_process(file_url: str) -> None:
    with open_store(file_url, "A"), pytest.raises(StorageError, match="in use by another"):
        open_store(file_url, "A")
    with pytest.raises(StorageError, match="belongs to branch 'A'"):
        open_store(file_url, "B")


def test_a_bad_pending_copy_does_not_shadow_the_genuine_changeset() -> None:
    a, b = stores("A", "B")
    a.create({"id": "x"})
    a.update("x", {"v": 2})
    b.apply(a.changeset("A.1"))
    bogus = copy.deepcopy(a.changeset("A.2"))
    bogus.update(base_revision="A.1,Z.9", revision="A.2,Z.9")  # an impossible context
    assert b.apply(bogus).pending == ["A.2"]
    assert b.apply(a.changeset("A.2")).applied == ["A.2"]
    assert b.pending_count == 0 and b.get("x") == {"id": "x", "v": 2}


def _history_of(store: Store, ids: list[str]) -> dict[str, Any]:
    return {
        "objects": list(store.query()),
        "with_conflicts": [store.get_with_conflicts(i) for i in ids],
        "conflicts": store.conflicts(),
        "changesets": [c["id"] for c in store.changesets()],
        "histories": {i: store.object_history(i) for i in ids},
        "changes": [(c.seq, c.id, c.objects) for c in store.changes(0, 1000)],
        "digest": store.digest(),
        "revision": store.revision,
    }


def test_many_changesets_on_the_same_objects_in_one_transaction_as_one_by_one(
    tmp_path: Any,
) -> None:
    # The apply holds its rows until the transaction ends: a later changeset of the
    # batch must see the objects as the earlier ones left them, and the history its
    # changesets in order, exactly as if each had come alone.
    a, c = stores("A", "C")
    a.create([{"id": "x", "v": 1}, {"id": "y", "v": 1}])
    c.apply_many(a.changesets())
    a.update("x", {"v": 2, "w": [1, 2]})
    c.update("x", {"v": 3})  # concurrent with A's: a conflict to keep
    a.delete("y")
    a.create({"id": "y", "again": True})
    a.replace({"id": "x", "only": "this"})
    a.apply_many(c.changesets(since=a.revision))
    a.update("x", {"after": "merge"})
    ids = ["x", "y"]
    everything = list(a.changesets())
    one_txn = open_store(f"sqlite:///{tmp_path / 'one.db'}", "B")
    one_by_one = open_store(f"sqlite:///{tmp_path / 'each.db'}", "D")
    try:
        assert one_txn.apply_many(everything).applied == [cs["id"] for cs in everything]
        for cs in everything:
            one_by_one.apply(cs)
        assert _history_of(one_txn, ids) == _history_of(one_by_one, ids) == _history_of(a, ids)
    finally:
        one_txn.close()
        one_by_one.close()


def test_a_second_copy_in_the_same_batch_is_compared_with_the_first() -> None:
    # The first copy's row is not written yet when the second is looked up: a forged
    # second copy must still be told from a duplicate.
    a, b = stores("A", "B")
    a.create({"id": "x", "v": 1})
    genuine = a.changeset("A.1")
    forged = copy.deepcopy(genuine)
    forged["changes"][0]["set"]["v"] = 666
    result = b.apply_many([genuine, copy.deepcopy(genuine), forged])
    assert result.applied == ["A.1"] and result.duplicates == ["A.1"]
    assert [f.changeset.id for f in result.forks] == ["A.1"]
    assert b.get("x") == {"id": "x", "v": 1}
