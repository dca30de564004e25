"""Chain verification: one signature covers a run, and nothing else gets through."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vesper.history.changeset import parse_changeset
from vesper.storage.database import Database
from vesper.storage.url import parse_storage_url
from vesper.store import open_store
from vesper.trust.keyring import Keyring
from vesper.trust.keys import NodeKey
from vesper.trust.signing import content_hash, sign
from vesper.trust.verifier import Verifier

KEY = NodeKey.generate()


def history(n: int) -> list[dict]:
    store = open_store("mem://", "A")
    for i in range(n):
        store.create({"id": f"d{i}", "i": i})
    bodies = list(store.changesets())
    store.close()
    return bodies


HISTORY = history(12)


@pytest.fixture
def verifier() -> Verifier:
    db = Database(parse_storage_url("mem://"))
    return Verifier(Keyring(db, "B", NodeKey.generate().public))


def test_each_changeset_names_the_hash_of_its_predecessor() -> None:
    assert HISTORY[0]["prev"] == ""
    for before, after in itertools.pairwise(HISTORY):
        assert after["prev"] == content_hash(before)
        # The signature fields are not part of the content.
        assert content_hash(sign(before, KEY)) == content_hash(before)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    signed=st.sets(st.integers(0, 11), min_size=1),
    order=st.permutations(range(12)),
    tamper=st.one_of(st.none(), st.integers(0, 11)),
)
def test_accepted_exactly_when_covered_by_a_valid_signature(
    verifier: Verifier, signed: set[int], order: list[int], tamper: int | None
) -> None:
    """A changeset is accepted iff it is untampered and a signed, untampered changeset at
    or after it is reachable through untampered links in the same message."""
    bodies = [sign(b, KEY) if i in signed else dict(b) for i, b in enumerate(HISTORY)]
    if tamper is not None:
        bodies[tamper] = {**bodies[tamper], "time": "1999-01-01T00:00:00.000Z"}
    parsed = [parse_changeset(bodies[i]) for i in order]
    good, refused = verifier.changesets(parsed)
    accepted = {cs.counter - 1 for cs in good}
    expected = set()
    for i in range(12):
        j = i
        while j < 12 and j != tamper:
            if j in signed:
                expected.add(i)
                break
            j += 1
    assert accepted == expected
    assert len(good) + len(refused) >= len(accepted)


def test_a_signature_under_another_key_covers_nothing(verifier: Verifier) -> None:
    verifier.changesets([parse_changeset(sign(HISTORY[0], KEY))])  # pins KEY for A
    other = NodeKey.generate()
    good, refused = verifier.changesets([parse_changeset(sign(b, other)) for b in HISTORY[1:]])
    assert good == [] and {r.reason for r in refused} == {"key_mismatch"}


def test_trusted_keys_accept_both_keys_of_a_rotation(tmp_path: Path) -> None:
    old, new = NodeKey.generate(), NodeKey.generate()
    db = Database(parse_storage_url("mem://"))
    verifier = Verifier(
        Keyring(db, "B", NodeKey.generate().public, {"A": (old.public, new.public)})
    )
    before = [parse_changeset(sign(b, old)) for b in HISTORY[:6]]
    after = [parse_changeset(sign(b, new)) for b in HISTORY[6:]]
    good, refused = verifier.changesets(before + after)
    assert len(good) == 12 and refused == []
