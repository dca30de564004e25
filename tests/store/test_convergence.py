"""Replicas that exchange changesets in any order, with duplicates and delays, end equal.

Besides comparing replicas with each other, the final state is checked against an
oracle computed from the whole history by brute force: for every (object, property)
the maximal writes (those in no other write's causal context) and their winner by
(HLC, origin). That proves both convergence and that no causally later write is ever
overwritten by an earlier one.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vesper.errors import DocumentExists, DocumentNotFound
from vesper.history.revision import parse_changeset_id, parse_revision
from vesper.store import open_store

IDS = ["a", "b", "c"]
PROPS = ["x", "y", "z"]
values = st.one_of(
    st.integers(-3, 3),
    st.sampled_from(["p", "q"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 2), max_size=2),
)
docs = st.dictionaries(st.sampled_from(PROPS), values, max_size=3)
patches = st.dictionaries(st.sampled_from(PROPS), values, min_size=1, max_size=3)


def random_op(data: st.DataObject) -> dict[str, Any]:
    kind = data.draw(st.sampled_from(["create", "replace", "update", "delete"]))
    obj_id = data.draw(st.sampled_from(IDS))
    if kind in ("create", "replace"):
        return {"op": kind, "object": {"id": obj_id, **data.draw(docs)}}
    if kind == "update":
        return {"op": "update", "id": obj_id, "patch": data.draw(patches)}
    return {"op": "delete", "id": obj_id}


def oracle(history: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], set]:
    """Visible objects and the set of conflicting registers, from all changesets."""
    writes: dict[tuple[str, str | None], list[tuple[str, int, int, dict, Any]]] = {}
    for body in history:
        origin, counter = parse_changeset_id(body["id"])
        base = parse_revision(body["base_revision"])
        for change in body["changes"]:
            obj = change["id"]
            if "exists" in change:
                writes.setdefault((obj, None), []).append(
                    (origin, counter, body["hlc"], base, change["exists"])
                )
            for name, value in change.get("set", {}).items():
                writes.setdefault((obj, name), []).append(
                    (origin, counter, body["hlc"], base, value)
                )
            for name in change.get("unset", []):
                writes.setdefault((obj, name), []).append(
                    (origin, counter, body["hlc"], base, "<absent>")
                )
    objects: dict[str, dict[str, Any]] = {}
    exists: dict[str, bool] = {}
    conflicted = set()
    for (obj, name), ws in writes.items():
        maximal = [w for w in ws if not any(o[3].get(w[0], 0) >= w[1] for o in ws if o is not w)]
        win = max(maximal, key=lambda w: (w[2], w[0]))
        if any(w[4] != win[4] or type(w[4]) is not type(win[4]) for w in maximal):
            conflicted.add((obj, name))
        if name is None:
            exists[obj] = win[4]
        elif win[4] != "<absent>":
            objects.setdefault(obj, {"id": obj})[name] = win[4]
    live = {k: v for k, v in objects.items() if exists.get(k)}
    live.update({k: {"id": k} for k, e in exists.items() if e and k not in live})
    return live, conflicted


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(3, 5), seed=st.integers(0, 2**32))
def test_replicas_converge_whatever_the_delivery_order(
    data: st.DataObject, n: int, seed: int
) -> None:
    rng = random.Random(seed)
    stores = [open_store("mem://", f"R{i}") for i in range(n)]
    history: list[dict[str, Any]] = []
    inbox: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    try:
        for _ in range(data.draw(st.integers(1, 40))):
            i = data.draw(st.integers(0, n - 1))
            if data.draw(st.booleans()):
                ops = [random_op(data) for _ in range(data.draw(st.integers(1, 3)))]
                try:
                    result = stores[i].transaction(ops)
                except (DocumentExists, DocumentNotFound):
                    continue
                # The versions a commit reports are the ones a read gives.
                for obj_id, version in result.versions.items():
                    read = stores[i].version(obj_id)
                    assert (read and read[1]) == version if version else read is None
                body = stores[i].changeset(result.changeset)
                history.append(body)
                for j in range(n):
                    if j != i:
                        inbox[j].append(body)
            elif inbox[i]:
                # Deliver a random part of what is in flight, reordered and duplicated.
                batch = rng.sample(inbox[i], rng.randint(1, len(inbox[i])))
                batch += rng.sample(batch, rng.randint(0, len(batch)))
                rng.shuffle(batch)
                stores[i].apply_many(batch)
                for body in batch:
                    if body in inbox[i] and rng.random() < 0.7:
                        inbox[i].remove(body)
        for j in range(n):
            rest = list(inbox[j]) + [b for b in history if b["origin"] != f"R{j}"]
            rng.shuffle(rest)
            while rest:
                cut = rng.randint(1, len(rest))
                stores[j].apply_many(rest[:cut])
                rest = rest[cut:]

        expected, conflicted = oracle(history)
        first = stores[0]
        for s in stores:
            assert s.pending_count == 0
            assert s.revision == first.revision
            assert s.digest() == first.digest()
            assert s.conflicts() == first.conflicts()
            assert {o["id"]: o for o in s.query()} == expected
            assert {(c["id"], c["property"]) for c in s.conflicts()} == conflicted
            assert s.count == len(expected)
            assert s.objects_at(s.revision) == list(s.query())
            # An object's version (its ETag) is the same wherever the same writes are.
            assert [_version(s, i) for i in IDS] == [_version(first, i) for i in IDS]
    finally:
        for s in stores:
            s.close()


def _version(store: Any, obj_id: str) -> str | None:
    found = store.version(obj_id)
    return None if found is None else found[1]
