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
from vesper.trust.verifier import CHECKPOINT, MAX_CHECKS, Verifier

KEY = NodeKey.generate()


def history(n: int) -> list[dict]:
    store = open_store("mem://", "A")
    for i in range(n):
        store.create({"id": f"d{i}", "i": i})
    bodies = list(store.changesets())
    store.close()
    return bodies


HISTORY = history(12)


def covered(valid: set[int], tamper: int | None) -> set[int]:
    """The indexes of HISTORY a valid signature covers: those from which a changeset in
    ``valid`` is reached through the chain, without passing the ``tamper``ed one."""
    out = set()
    for i in range(12):
        j = i
        while j < 12 and j != tamper:
            if j in valid:
                out.add(i)
                break
            j += 1
    return out


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
    expected = covered(signed, tamper)
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


# -- a receive batch, verified together ------------------------------------------------


def split(items: list, cuts: set[int]) -> list[list]:
    edges = [0, *sorted(c for c in cuts if 0 < c < len(items)), len(items)]
    return [items[a:b] for a, b in itertools.pairwise(edges)]


def counting(verifier: Verifier, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Each copy (id, content hash, signature) whose signature is checked."""
    checked: list[tuple] = []
    real = Verifier._check

    def spy(self: Verifier, cs):  # type: ignore[no-untyped-def]
        checked.append((cs.id, cs.hash, cs.body.get("sig")))
        return real(self, cs)

    monkeypatch.setattr(Verifier, "_check", spy)
    return checked


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    signed=st.sets(st.integers(0, 11), min_size=1),
    order=st.permutations(range(12)),
    cuts=st.sets(st.integers(1, 11)),
    tamper=st.one_of(st.none(), st.integers(0, 11)),
    junk=st.one_of(st.none(), st.integers(0, 11)),
)
def test_a_batch_accepts_exactly_what_a_valid_signature_covers_across_its_messages(
    verifier: Verifier,
    signed: set[int],
    order: list[int],
    cuts: set[int],
    tamper: int | None,
    junk: int | None,
) -> None:
    """However a history is split into messages, a changeset is accepted iff it is
    untampered and chained, through any of the batch's messages, to a later (or its
    own) valid signature; and a signature is kept only where it is valid."""
    bodies = [sign(b, KEY) if i in signed else dict(b) for i, b in enumerate(HISTORY)]
    if tamper is not None:
        bodies[tamper] = {**bodies[tamper], "time": "1999-01-01T00:00:00.000Z"}
    if junk is not None and junk in signed:
        # The content is genuine, the signature is another changeset's.
        bodies[junk] = {**bodies[junk], "sig": sign(HISTORY[(junk + 1) % 12], KEY)["sig"]}
    valid = {i for i in signed if i not in (tamper, junk)}
    verifier.changesets([parse_changeset(sign(HISTORY[0], KEY))])  # A's key pinned
    messages = split([parse_changeset(bodies[i]) for i in order], cuts)
    results = verifier.batch(messages)
    accepted = [cs for good, _ in results for cs in good]
    expected = covered(valid, tamper)
    assert sorted(cs.counter - 1 for cs in accepted) == sorted(expected)
    assert all(cs.counter - 1 in valid for cs in accepted if cs.signed)
    refused = {r.changeset.counter - 1 for _, rs in results for r in rs}
    assert refused.isdisjoint(expected) and refused | expected >= set(range(12)) - {tamper}


def test_forgeries_in_a_batch_cost_no_genuine_message_anything(
    verifier: Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forged messages between genuine ones, more than one message's failed checks:
    each spends only its own message's budget, so each genuine message is accepted
    as it would be alone, and each forgery is refused."""
    genuine = [[parse_changeset(b) for b in part] for part in split(HISTORY, {3, 6, 9})]
    for part in genuine:
        part[-1] = parse_changeset(sign(part[-1].body, KEY))
    forger = NodeKey.generate()
    forged = []
    for i in range(6):
        # Each chains onto a genuine changeset: half carry a genuine signature over other
        # content, half are signed by a key that is not A's.
        k = 3 * (i % 4) + 2
        fake = {**HISTORY[k], "note": f"forged {i}"}
        forged.append(
            [parse_changeset({**fake, "key": KEY.public, "sig": sign(HISTORY[k], KEY)["sig"]})]
            if i % 2
            else [parse_changeset(sign(fake, forger))]
        )
    verifier.changesets([genuine[0][-1]])  # pins KEY for A, as the first message would
    checked = counting(verifier, monkeypatch)
    results = verifier.batch([*forged[:3], *genuine, *forged[3:]])
    goods = [good for good, _ in results]
    assert [len(g) for g in goods[3:7]] == [3, 3, 3, 3]
    assert all(g == [] for g in goods[:3] + goods[7:])
    reasons = {r.reason for _, refused in results[:3] + results[7:] for r in refused}
    assert all(refused for _, refused in results[:3] + results[7:])
    assert reasons == {"bad_signature", "key_mismatch"}
    assert all(refused == [] for _, refused in results[3:7])
    # One check per forgery and one for the genuine chain: the newest genuine
    # signature covers the three messages before it.
    assert len(checked) == len(set(checked)) == 6 + 1


def test_a_long_chain_in_many_messages_keeps_a_signature_every_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bodies = history(1000)
    messages = []
    for part in split(bodies, set(range(10, 1000, 10))):
        *covered, last = part
        messages.append([*map(parse_changeset, covered), parse_changeset(sign(last, KEY))])
    db = Database(parse_storage_url("mem://"))
    verifier = Verifier(Keyring(db, "B", NodeKey.generate().public))
    verifier.changesets([parse_changeset(sign(bodies[0], KEY))])  # A's key pinned
    checked = counting(verifier, monkeypatch)
    results = verifier.batch(messages)
    accepted = [cs for good, _ in results for cs in good]
    assert len(accepted) == 1000 and all(refused == [] for _, refused in results)
    kept = [cs.counter for cs in accepted if cs.signed]
    assert kept[-1] == 1000 and kept[0] <= CHECKPOINT
    assert max(b - a for a, b in itertools.pairwise(kept)) <= CHECKPOINT
    # One check per checkpoint instead of one per message (100).
    assert len(checked) == len(kept) <= 1000 // (CHECKPOINT - 10) + 1


def test_a_fork_in_the_same_batch_does_not_break_the_genuine_chain(verifier: Verifier) -> None:
    """Another copy of a changeset, with other content, sits beside the genuine chain:
    the genuine one stays covered by its successor's signature."""
    verifier.changesets([parse_changeset(sign(HISTORY[0], KEY))])
    genuine = [parse_changeset(HISTORY[4]), parse_changeset(sign(HISTORY[5], KEY))]
    fork = parse_changeset(sign({**HISTORY[4], "note": "fork"}, KEY))
    results = verifier.batch([[fork], genuine[:1], genuine[1:]])
    assert [cs.hash for cs in results[1][0]] == [genuine[0].hash]
    assert [cs.id for cs in results[2][0]] == ["A.6"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    messages=st.lists(
        st.lists(st.tuples(st.integers(0, 11), st.sampled_from(["plain", "signed", "forged"]))),
        min_size=1,
        max_size=6,
    )
)
def test_a_message_in_a_batch_keeps_all_it_would_be_accepted_for_alone(
    messages: list[list[tuple[int, str]]],
) -> None:
    """Messages that overlap, repeat and carry forgeries: each message without a
    forgery is accepted in the batch at least for what it is accepted for alone, and
    nothing forged is accepted. (A message that carries forgeries spends its budget of
    failed checks in another order in a batch: it may keep less of what else it
    carries, which genuine messages bring anyway.)"""

    def verifier() -> Verifier:
        db = Database(parse_storage_url("mem://"))
        return Verifier(Keyring(db, "B", NodeKey.generate().public, {"A": (KEY.public,)}))

    def body(i: int, kind: str) -> dict:
        if kind == "forged":
            return sign({**HISTORY[i], "note": "forged"}, KEY) | {
                "sig": sign(HISTORY[i], KEY)["sig"]
            }
        return sign(HISTORY[i], KEY) if kind == "signed" else dict(HISTORY[i])

    given = [[parse_changeset(body(i, kind)) for i, kind in message] for message in messages]
    genuine = {content_hash(b) for b in HISTORY}
    in_batch = verifier().batch(given)
    for kinds, message, (good, _) in zip(messages, given, in_batch, strict=True):
        assert {cs.hash for cs in good} <= genuine
        if all(kind != "forged" for _, kind in kinds):
            alone, _ = verifier().changesets(message)
            assert {cs.hash for cs in alone} <= {cs.hash for cs in good}


def test_a_forgery_later_in_the_batch_cannot_win_a_new_origins_pin(verifier: Verifier) -> None:
    """Trust on first use pins the first valid key of a new origin. A's first message,
    then a forged A.50 under another key with a higher counter, in one batch: A's key is
    pinned as it would be one message at a time, and the forgery is refused."""
    genuine = [parse_changeset(b) for b in HISTORY[:2]] + [parse_changeset(sign(HISTORY[2], KEY))]
    forged_body = {
        **HISTORY[0],
        "id": "A.50",
        "revision": "A.50",
        "base_revision": "A.49",
        "prev": "ab" * 32,
        "changes": [{"id": "evil", "op": "create", "exists": True}],
    }
    forged = [parse_changeset(sign(forged_body, NodeKey.generate()))]
    (good, refused), (bad, reasons) = verifier.batch([genuine, forged])
    assert len(good) == 3 and refused == [] and bad == []
    assert [r.reason for r in reasons] == ["key_mismatch"]
    assert verifier.keyring.pinned("A") == KEY.public


def test_a_message_with_more_runs_than_checks_keeps_the_same_ones_in_a_batch() -> None:
    """Which runs of a message past its budget of checks are checked depends on their
    order: in a batch it is the order of the message alone."""
    bodies = history(2 * MAX_CHECKS + 2)
    message = [parse_changeset(sign(b, KEY)) for b in bodies[::2]]  # every run of one

    def verifier() -> Verifier:
        db = Database(parse_storage_url("mem://"))
        return Verifier(Keyring(db, "B", NodeKey.generate().public, {"A": (KEY.public,)}))

    alone, _ = verifier().changesets(message)
    [(in_batch, _)] = verifier().batch([message])
    assert len(alone) == MAX_CHECKS
    assert [cs.id for cs in in_batch] == [cs.id for cs in alone]
