"""Changesets larger than a broker's ceiling travel in signed parts.

End to end, on an embedded broker whose frame ceiling is set below the changeset, with
parts made small to match: the topic path, catch-up, and a hostile client of the broker
sending parts of its own. Then the part store alone: what it keeps, across a restart,
and what it refuses.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.replication.harness import Node, wait_converged, wait_for
from tests.replication.test_attacks import Attacker, attacker  # noqa: F401 - fixture
from vesper.broker.process import BrokerProcess
from vesper.errors import InvalidOperation
from vesper.replication import parts, wire
from vesper.replication.transport import Delivery
from vesper.storage.database import Database
from vesper.storage.url import parse_storage_url
from vesper.store import open_store
from vesper.trust.keyring import Keyring
from vesper.trust.keys import NodeKey
from vesper.trust.verifier import Verifier

CEILING = 128 * 1024
"""The broker's frame ceiling in these tests."""
PART = 40 * 1024


def big_docs(n: int = 1_000) -> list[dict[str, object]]:
    """About 450 KB as one changeset: over three times the ceiling."""
    return [{"id": f"d{i}", "note": "x" * 400, "i": i} for i in range(n)]


def held(node: Node) -> int:
    return node.s.db.read("SELECT count(*) FROM message_parts")[0][0]


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts, "PART_BYTES", PART)


def test_over_the_ceiling_goes_in_parts_on_the_topic_and_in_catch_up(
    brokers: Callable[..., BrokerProcess],
    cluster: Callable[..., list[Node]],
    attacker: Callable[[tuple[str, int]], Attacker],  # noqa: F811
    small_parts: None,
) -> None:
    broker = brokers(args=["--max-frame-bytes", str(CEILING)])
    host = (broker.host, broker.port)
    a, b = cluster(["A", "B"], [host])
    wait_for(lambda: a.connected() and b.connected(), what="both nodes connected")

    # The ceiling is real: the broker refuses such a message whole.
    whole = Attacker(host)
    try:
        whole.conn.send("/topic/elsewhere", b"x" * (CEILING + 1), headers={"receipt": "r"})
        wait_for(lambda: whole.errors, 10, "the broker's ERROR for an oversized frame")
    finally:
        whole.close()

    a.s.create(big_docs())
    wait_converged([a, b])
    assert b.s.count == 1_000
    assert a.status()["messages_sent"] >= 12  # 450 KB in 40 KiB parts
    # Deleted once applied (just after the apply commits: waited for, not assumed).
    wait_for(lambda: b.status()["parts_held"] == {"sets": 0, "bytes": 0}, what="B's parts gone")

    # A node that joins later gets the same changeset through catch-up, in parts too.
    (c,) = cluster(["C"], [host], channel=a.channel)
    wait_converged([a, b, c])
    assert c.s.count == 1_000
    wait_for(lambda: c.status()["parts_held"]["sets"] == 0, what="C's parts gone")

    # A client of the broker without a trusted key: parts unsigned, signed by an
    # unknown key, or naming a real set with a tampered slice are refused at the door.
    hostile = attacker(host)
    headers = {wire.CLIENTID: "A", "persistent": "true", wire.TYPE: wire.CHANGESETS}
    forged = parts.split(b"[" + b"1" * 100_000 + b"]", headers, "A", NodeKey.generate())
    hostile.send(wire.topic(a.channel), forged[0][0], forged[0][1])
    unsigned = {k: v for k, v in forged[1][1].items() if k != parts.PART_SIG}
    hostile.send(wire.topic(a.channel), forged[1][0], unsigned)
    genuine = parts.split(b"[" + b"2" * 100_000 + b"]", headers, "A", a.key)
    hostile.send(wire.topic(a.channel), b"3" * len(genuine[0][0]), genuine[0][1])
    wait_for(
        lambda: sum(b.status()["quarantined"].values()) >= 3,
        what="three hostile parts quarantined",
    )
    assert b.status()["quarantined"].get("malformed", 0) >= 2  # unsigned, tampered
    assert b.status()["parts_held"]["sets"] == 0

    a.s.create({"id": "after", "n": 1})
    wait_converged([a, b, c])


def test_a_write_too_large_to_replicate_is_refused_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import vesper.store.store as store_module

    monkeypatch.setattr(store_module, "MAX_CHANGESET_BYTES", 10_000)
    store = open_store("mem://", "A", save_history=True, outbox=True)
    store.create({"id": "small"})
    before = store.revision, store.digest(), store.outbox_count
    with pytest.raises(InvalidOperation, match="split it into several writes"):
        store.create(big_docs(100))
    assert (store.revision, store.digest(), store.outbox_count) == before
    assert store.get("d0") is None
    store.create({"id": "next"})  # the counter did not move: the chain goes on
    assert store.version_vector == {"A": 2}
    store.close()


# -- the part store alone --------------------------------------------------------------

KEY = NodeKey.generate()
HEADERS = {wire.CLIENTID: "A", wire.TYPE: wire.CHANGESETS, "subscription": "s"}
BODY = orjson.dumps([{"filler": "y" * 5_000}])


def part_store(db: Database, trusted: NodeKey = KEY) -> parts.PartStore:
    return parts.PartStore(
        db, Verifier(Keyring(db, "B", NodeKey.generate().public, {"A": (trusted.public,)}))
    )


def deliveries(body: bytes = BODY, key: NodeKey = KEY) -> list[Delivery]:
    return [Delivery(h, b, 1) for b, h in parts.split(body, HEADERS, "A", key, limit=1_000)]


def file_db(tmp_path: Path) -> Database:
    return Database(parse_storage_url(f"sqlite:///{tmp_path}/b.db"))


def test_small_bodies_are_not_cut_and_parts_carry_the_original_headers() -> None:
    assert parts.split(b"[]", HEADERS, "A", KEY) == [(b"[]", HEADERS)]
    cut = deliveries()
    assert len(cut) == 6 and b"".join(d.body for d in cut) == BODY
    assert all(d.headers[wire.CLIENTID] == "A" for d in cut)
    assert [d.headers[parts.PART] for d in cut] == [f"{i}/6" for i in range(1, 7)]


def test_parts_survive_a_restart_and_make_the_message_in_any_order(tmp_path: Path) -> None:
    cut = deliveries()
    db = file_db(tmp_path)
    store = part_store(db)
    for d in (cut[3], cut[0], cut[0], cut[5]):  # a redelivered part is kept once
        assert store.add(d) is None
    db.close()

    db = file_db(tmp_path)
    store = part_store(db)
    assert store.held == (1, 2_000 + len(cut[5].body))
    results = [store.add(d) for d in (cut[1], cut[4], cut[2])]
    assert results[:2] == [None, None]
    whole = results[2]
    assert whole is not None and whole.delivery.body == BODY
    assert whole.delivery.headers == HEADERS  # the part headers are gone
    assert whole.set_id == hashlib.sha256(BODY).hexdigest()
    store.discard([whole.set_id])
    assert store.held == (0, 0)
    db.close()


def test_a_forged_part_ahead_of_the_genuine_ones_spoils_nothing() -> None:
    db = Database(parse_storage_url("mem://"))
    store = part_store(db)
    cut = deliveries()
    stranger = NodeKey.generate()
    tampered = Delivery(cut[0].headers, b"z" * len(cut[0].body), 1)
    resigned = deliveries(key=stranger)[0]  # the same set, signed by an untrusted key
    for forged, reason in ((tampered, "malformed"), (resigned, "untrusted_key")):
        with pytest.raises(parts.PartRefused) as refused:
            store.add(forged)
        assert refused.value.reason == reason
    assert store.held == (0, 0)
    results = [store.add(d) for d in cut]
    assert results[-1] is not None and results[-1].delivery.body == BODY


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({parts.PART: "7/6"}, "malformed"),
        ({parts.PART: "0/6"}, "malformed"),
        ({parts.PART: "x/6"}, "malformed"),
        ({parts.PART_OF: "not-a-hash"}, "malformed"),
        ({parts.PART_BYTES_HEADER: str(parts.MAX_MESSAGE_BYTES + 1)}, "too_large"),
        ({parts.PART_BYTES_HEADER: "10"}, "malformed"),  # longer than the message
        ({parts.PART_SIG: "A" * 86}, "bad_signature"),  # fields changed, signature kept
    ],
)
def test_part_headers_are_checked(change: dict[str, str], reason: str) -> None:
    store = part_store(Database(parse_storage_url("mem://")))
    first = deliveries()[0]
    with pytest.raises(parts.PartRefused) as refused:
        store.add(Delivery({**first.headers, **change}, first.body, 1))
    assert refused.value.reason == reason


def test_a_signed_set_that_does_not_make_its_message_is_refused_and_dropped() -> None:
    """A trusted but broken sender: every part signed, the slices not the named body."""
    store = part_store(Database(parse_storage_url("mem://")))
    cut = deliveries()
    other = deliveries(BODY.replace(b"y", b"w", 1))
    wrong = [
        *cut[:-1],
        Delivery(
            {**other[-1].headers, parts.PART_OF: cut[0].headers[parts.PART_OF]}, other[-1].body, 1
        ),
    ]
    # Its signature names the other set: refused as such.
    with pytest.raises(parts.PartRefused):
        for d in wrong:
            store.add(d)
    assert store.held[0] == 1  # the genuine parts wait for their last one
    assert store.add(cut[-1]) is not None


def test_stale_sets_are_dropped_and_room_is_made_from_the_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = part_store(Database(parse_storage_url("mem://")))
    old = deliveries(orjson.dumps([{"old": "o" * 5_000}]))
    store.add(old[0])
    clock = time.time()
    monkeypatch.setattr(parts.time, "time", lambda: clock + parts.STALE_S + 1)
    new = deliveries()
    store.add(new[0])
    assert store.held == (1, 1_000), "the stale set is gone"

    monkeypatch.setattr(parts, "MAX_HELD_BYTES", 2_500)
    third = deliveries(orjson.dumps([{"third": "t" * 5_000}]))
    store.add(third[0])
    assert store.held == (2, 2_000)
    store.add(third[1])  # 3,000 bytes with the other set: the older set makes room
    assert store.held == (1, 2_000)
    assert store.add(new[1]) is None  # the dropped set starts again, making room in turn
    assert store.held == (1, 1_000)
