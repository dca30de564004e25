"""What a hub relays: each origin's chain runs up to a signature, never an unsigned
changeset whose signature is not in the same message (receivers would refuse it as
unsigned and report an attack that is not one)."""

from __future__ import annotations

import orjson

from vesper.history.changeset import Changeset, parse_changeset
from vesper.replication.receiver import _covered
from vesper.replication.service import _runs
from vesper.store import open_store
from vesper.trust.keys import NodeKey
from vesper.trust.signing import sign


def _chain(n: int) -> list[Changeset]:
    """n consecutive changesets of one origin, only the last one signed (as a sender
    sends a run of them in one message)."""
    store = open_store("mem://", "X", save_history=True, outbox=True)
    for i in range(n):
        store.create({"id": f"o{i}"})
    texts = [text for _, text in store.outbox_peek(limit=n)]
    store.close()
    bodies = [orjson.loads(t) for t in texts]
    bodies[-1] = sign(bodies[-1], NodeKey.generate())
    return [parse_changeset(b) for b in bodies]


def ids(changesets: list[Changeset]) -> list[str]:
    return [cs.id for cs in changesets]


def test_a_run_is_relayed_whole_up_to_its_signature() -> None:
    x1, x2, x3 = _chain(3)
    assert not x1.signed and not x2.signed and x3.signed
    assert ids(_runs([x1, x2, x3])["X"]) == ["X.1", "X.2", "X.3"]


def test_an_unsigned_tail_is_left_out() -> None:
    x1, x2, _ = _chain(3)
    assert _runs([x1, x2])["X"] == []


def test_a_gap_breaks_the_chain_to_the_signature() -> None:
    x1, _, x3 = _chain(3)
    assert ids(_runs([x1, x3])["X"]) == ["X.3"]


def test_a_run_split_between_channels_gets_its_rest_back() -> None:
    x1, x2, x3 = _chain(3)
    # x1 came by one channel, x2 and x3 by another, in one batch.
    assert ids(_covered([x1], [x1, x2, x3])) == ["X.1", "X.2", "X.3"]
    assert ids(_covered([x2, x3], [x1, x2, x3])) == ["X.2", "X.3"]
    # A gap in one group is filled from the batch too.
    assert ids(_covered([x1, x3], [x1, x2, x3])) == ["X.1", "X.2", "X.3"]
