"""Sender, apply worker and catch-up driven through the in-memory transport.

These exercise the checks between the wire and the store without a broker: what a
hostile client of the broker could send arrives here exactly as a real broker would
deliver it.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from pathlib import Path

import orjson
import pytest

from tests.replication.harness import wait_for
from tests.replication.memory_transport import Make, MemoryBroker, MemoryNode
from vesper.replication import receiver, wire
from vesper.store import open_store
from vesper.trust import verifier as verifier_module
from vesper.trust.keys import NodeKey
from vesper.trust.signing import content_hash, sign


def now_ms() -> int:
    return int(time.time() * 1000)


def changeset_message(*bodies: dict) -> tuple[dict[str, str], bytes]:
    origin = bodies[0]["origin"]
    headers = {wire.CLIENTID: origin, "persistent": "true", wire.TYPE: wire.CHANGESETS}
    body = orjson.dumps(list(bodies) if len(bodies) > 1 else bodies[0])
    return headers, body


def quarantined(n: MemoryNode, reason: str) -> int:
    return n.status()["quarantined"].get(reason, 0)


def spy_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the changesets whose signature the verifier checks, as it checks them."""
    checked: list[str] = []
    real_check = verifier_module.Verifier._check

    def spy(self: verifier_module.Verifier, cs: object) -> object:
        checked.append(cs.id)  # type: ignore[attr-defined]
        return real_check(self, cs)  # type: ignore[arg-type]

    monkeypatch.setattr(verifier_module.Verifier, "_check", spy)
    return checked


# -- sender --------------------------------------------------------------------------


def test_outbox_rows_leave_only_on_receipt_and_peers_keep_the_signature(
    broker: MemoryBroker, node: Make
) -> None:
    a, b = node("A"), node("B")
    broker.hold_receipts = True
    a.store.create({"id": "x", "n": 1})
    wait_for(lambda: b.store.get("x"), 10, "x on B")
    assert a.store.outbox_count == 1  # delivered, but the broker has not confirmed it
    assert "sig" not in a.store.changeset("A.1")
    a.link.release_receipts()
    wait_for(lambda: a.store.outbox_count == 0, 10, "outbox drained")
    # The origin keeps its own unsigned (it signs when it sends or serves them); B
    # keeps the origin's signature with the content.
    held = b.store.changeset("A.1")
    assert held["key"] == a.key.public and held["sig"]
    assert {k: v for k, v in held.items() if k not in ("key", "sig")} == a.store.changeset("A.1")


def test_unconfirmed_rows_are_sent_again_on_the_next_connection(
    broker: MemoryBroker, node: Make
) -> None:
    a, b = node("A"), node("B")
    broker.hold_receipts = True
    broker.drop = lambda destination, headers, body: destination == wire.topic("c")
    a.store.create({"id": "lost"})
    wait_for(lambda: broker.sent and a.store.outbox_count == 1, 10, "sent once")
    broker.hold_receipts = False
    broker.drop = lambda destination, headers, body: False
    first = a.link
    first.lose()
    wait_for(lambda: a.service.current_link() not in (None, first), 10, "reconnected")
    wait_for(lambda: b.store.get("lost"), 10, "resent changeset on B")
    wait_for(lambda: a.store.outbox_count == 0, 10, "outbox drained")


# -- apply worker: authenticity ------------------------------------------------------


def test_a_forged_unsigned_changeset_with_the_next_id_is_refused_and_the_real_one_lands(
    broker: MemoryBroker, node: Make
) -> None:
    a, b = node("A"), node("B")
    a.store.create({"id": "seed"})
    wait_for(lambda: b.store.get("seed"), 10, "seed on B")
    a.link.close()  # A's real A.2 is committed while the forgery arrives first
    a.service.stop()
    real = a.store.create({"id": "real"})
    forged = dict(a.store.changeset("A.2"))
    forged["changes"] = [{"id": "evil", "op": "create", "exists": True, "set": {"x": 1}}]
    broker.publish(wire.topic("c"), *changeset_message(forged))
    wait_for(lambda: quarantined(b, "unsigned") == 1, 10, "forgery quarantined")
    assert b.store.get("evil") is None and b.store.revision == "A.1"
    b_entries = b.service.worker.quarantine.entries()
    assert b_entries[0]["reason"] == "unsigned" and "A.2" in b_entries[0]["detail"]
    signed = sign(a.store.changeset("A.2"), a.key)
    broker.publish(wire.topic("c"), *changeset_message(signed))
    wait_for(lambda: b.store.get("real"), 10, "the real A.2 on B")
    assert b.store.revision == real.revision


def test_a_replay_with_a_changed_body_fails_the_signature(broker: MemoryBroker, node: Make) -> None:
    a, b = node("A"), node("B")
    a.store.create({"id": "doc", "owner": "alice"})
    wait_for(lambda: b.store.get("doc"), 10, "doc on B")
    tampered = dict(b.store.changeset("A.1"))  # the real one, signature and all
    tampered["changes"] = [{"id": "doc", "op": "create", "exists": True, "set": {"owner": "eve"}}]
    broker.publish(wire.topic("c"), *changeset_message(tampered))
    wait_for(lambda: quarantined(b, "bad_signature") == 1, 10, "tampered copy refused")
    assert b.store.get("doc") == {"id": "doc", "owner": "alice"}


def test_a_key_other_than_the_pinned_one_is_refused(broker: MemoryBroker, node: Make) -> None:
    a, b = node("A"), node("B")
    a.store.create({"id": "one"})
    wait_for(lambda: b.store.get("one"), 10, "one on B")
    impostor = NodeKey.generate()
    fake = {**a.store.changeset("A.1")}
    fake = {k: v for k, v in fake.items() if k not in ("sig", "key")}
    fake.update(id="A.2", revision="A.2", base_revision="A.1", prev=a.store.own_head()[1])
    fake["changes"] = [{"id": "evil", "op": "create", "exists": True, "set": {}}]
    broker.publish(wire.topic("c"), *changeset_message(sign(fake, impostor)))
    wait_for(lambda: quarantined(b, "key_mismatch") == 1, 10, "impostor refused")
    assert b.store.get("evil") is None


def test_configured_trusted_keys_refuse_every_other_branch(
    broker: MemoryBroker, node: Make
) -> None:
    a_key = NodeKey.generate()
    b = node("B", trusted_keys={"A": (a_key.public,)})
    a = node("A", key=a_key)
    stranger = node("S")
    a.store.create({"id": "from-a"})
    stranger.store.create({"id": "from-s"})
    wait_for(lambda: b.store.get("from-a"), 10, "A's write on B")
    wait_for(lambda: quarantined(b, "untrusted_key") >= 1, 10, "S refused")
    assert b.store.get("from-s") is None and "S" not in b.store.version_vector


def test_one_signature_check_covers_a_chained_run(
    broker: MemoryBroker, node: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = node("A")
    origin.service.stop()  # build the history offline, send it as one message
    for i in range(50):
        origin.store.create({"id": f"d{i}"})
    bodies = [sign(cs, origin.key) for cs in origin.store.changesets()]
    checked = spy_checks(monkeypatch)
    b = node("B")
    broker.publish(wire.topic("c"), *changeset_message(*bodies))
    wait_for(lambda: b.store.count == 50, 10, "50 applied")
    assert checked == ["A.50"]  # the run's last signature covers the 49 before it


def test_a_backlog_of_small_messages_costs_a_check_per_checkpoint_not_per_message(
    broker: MemoryBroker, node: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 messages of one origin reach B while B is busy, with forgeries between them
    (as any client of the broker can send): B takes them as one batch, checks a few
    signatures instead of 200, applies every genuine changeset and refuses each forgery."""
    origin = node("A")
    origin.service.stop()
    for i in range(400):
        origin.store.create({"id": f"d{i}"})
    history = list(origin.store.changesets())
    messages = [
        changeset_message(history[i], sign(history[i + 1], origin.key)) for i in range(0, 400, 2)
    ]
    forgeries = []
    for k in range(41, 400, 80):  # chained onto a genuine changeset, another's signature
        fake = {**history[k], "changes": [{"id": "evil", "op": "create", "exists": True}]}
        forgeries.append(changeset_message({**fake, "key": origin.key.public, "sig": "A" * 86}))
    checked = spy_checks(monkeypatch)
    b = node("B")
    entered, release = threading.Event(), threading.Event()
    real_apply = b.store.apply_parsed

    def gated(changesets: list) -> object:
        entered.set()
        assert release.wait(10)
        return real_apply(changesets)

    b.store.apply_parsed = gated  # type: ignore[method-assign]
    broker.publish(wire.topic("c"), *messages[0])
    assert entered.wait(10)
    for i, message in enumerate(messages[1:]):
        broker.publish(wire.topic("c"), *message)
        if i % 40 == 0:
            broker.publish(wire.topic("c"), *forgeries[i // 40])
    wait_for(lambda: b.service.worker.backlog >= 199 + len(forgeries), 10, "all waiting")
    release.set()
    wait_for(lambda: b.store.count == 400, 10, "every genuine changeset applied")
    wait_for(lambda: quarantined(b, "bad_signature") == len(forgeries), 10, "forgeries refused")
    assert b.store.get("evil") is None
    # Per message it would be 200 checks plus the forgeries'.
    assert len(checked) <= 1 + 400 // 60 + 1 + 2 * len(forgeries), checked
    kept = [c for c in range(1, 401) if "sig" in b.store.changeset(f"A.{c}")]
    assert kept[-1] == 400 and max(y - x for x, y in zip([0, *kept], kept, strict=False)) <= 64


def test_a_forgery_appended_to_a_genuine_run_is_refused_alone(
    broker: MemoryBroker, node: Make
) -> None:
    origin = node("A")
    origin.service.stop()
    for i in range(3):
        origin.store.create({"id": f"d{i}"})
    bodies = [sign(cs, origin.key) for cs in origin.store.changesets()]
    forged = {k: v for k, v in bodies[-1].items() if k != "sig"}
    forged.update(id="A.4", revision="A.4", base_revision="A.3", prev=origin.store.own_head()[1])
    forged["changes"] = [{"id": "evil", "op": "create", "exists": True, "set": {}}]
    forged["sig"] = bodies[-1]["sig"]
    b = node("B")
    broker.publish(wire.topic("c"), *changeset_message(*bodies, forged))
    wait_for(lambda: b.store.count == 3, 10, "the genuine three")
    wait_for(lambda: quarantined(b, "bad_signature") == 1, 10, "the forgery refused")
    assert b.store.get("evil") is None


def test_a_fork_is_quarantined_not_dropped_as_a_duplicate(broker: MemoryBroker, node: Make) -> None:
    key = NodeKey.generate()
    a = node("A", key=key)
    b = node("B")
    a.store.create({"id": "first"})
    wait_for(lambda: b.store.get("first"), 10, "first on B")
    twin = MemoryNode(broker, "A", key=key)  # a second node configured as A, same key
    try:
        twin.store.create({"id": "other"})
        body = sign(twin.store.changeset("A.1"), key)
        broker.publish(wire.topic("c"), *changeset_message(body))
        wait_for(lambda: b.status()["forks"] == 1, 10, "fork reported")
        assert quarantined(b, "fork") == 1 and b.store.get("other") is None
        entry = b.service.worker.quarantine.entries(reason="fork")[0]
        assert "A.1" in entry["detail"] and body["prev"] == ""
        ours = b.store.changeset("A.1")
        assert ours["changes"][0]["id"] == "first"
    finally:
        twin.store.close()


# -- catch-up and control traffic ----------------------------------------------------


def test_a_new_node_bootstraps_a_signed_history_relayed_by_a_peer(
    broker: MemoryBroker, node: Make
) -> None:
    a = node("A")
    b = node("B")
    for i in range(20):
        a.store.create({"id": f"a{i}"})
    wait_for(lambda: b.store.count == 20, 10, "B has A's writes")
    a.stop()
    c = node("C")  # A is gone: everything C gets of A comes from B, signed by A
    wait_for(lambda: c.store.count == 20, 20, "C bootstrapped from B")
    # Each stored signature was checked: the last of each chain run is kept signed,
    # those it covers are kept without their own (unchecked) signature fields.
    assert c.store.changeset("A.20")["key"] == a.key.public
    assert c.status()["quarantined"] == {}


def test_a_node_bootstraps_from_a_peer_that_itself_bootstrapped(
    broker: MemoryBroker, node: Make
) -> None:
    """B takes A's 3,000 single commits by catch-up and keeps only the signatures it
    verified (a few, far apart); C then takes them all from B alone. Every batch B
    serves must still end on a signature B kept, or C would refuse the rest."""
    a = node("A")
    for i in range(3000):
        a.store.create({"id": f"d{i}", "pad": "x" * 150})
    wait_for(lambda: a.store.outbox_count == 0, 30, "A's outbox sent")
    b = node("B")
    wait_for(lambda: b.store.count == 3000, 60, "B bootstrapped from A")
    kept = [c for c in range(1, 3001) if "sig" in b.store.changeset(f"A.{c}")]
    assert kept[-1] == 3000 and len(kept) < 100  # sparse: catch-up batches of up to 500
    a.stop()
    c = node("C")
    wait_for(lambda: c.store.count == 3000, 60, "C bootstrapped from B")
    assert c.status()["quarantined"] == {}
    assert c.store.version_vector == {"A": 3000}


def test_unsigned_and_forged_announcements_are_ignored(broker: MemoryBroker, node: Make) -> None:
    b = node("B")
    fake = {"type": "announce", "branch": "X", "revision": "X.5"}
    broker.publish(wire.sync_topic("c"), {wire.CLIENTID: "X"}, orjson.dumps(fake))
    wrong = sign({**fake, "branch": "B"}, NodeKey.generate())  # names B under another key
    broker.publish(wire.sync_topic("c"), {wire.CLIENTID: "B"}, orjson.dumps(wrong))
    wait_for(lambda: quarantined(b, "unsigned") == 1, 10, "unsigned refused")
    wait_for(lambda: quarantined(b, "key_mismatch") == 1, 10, "impostor refused")
    assert b.status()["peers"] == {}


def test_the_peer_list_is_bounded(
    broker: MemoryBroker, node: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vesper.replication import catchup

    monkeypatch.setattr(catchup, "MAX_PEERS", 50)
    b = node("B")
    for i in range(120):
        fake = {"type": "announce", "branch": f"F{i}", "revision": "", "time_ms": now_ms()}
        body = sign(fake, NodeKey.generate())
        broker.publish(wire.sync_topic("c"), {wire.CLIENTID: f"F{i}"}, orjson.dumps(body))
    wait_for(lambda: b.service.stats.messages_received >= 120, 20, "announcements read")
    assert len(b.status()["peers"]) <= 50


# -- flow control, restarts, duplicate branch ids ------------------------------------


def test_a_forged_catchup_request_costs_one_small_window(
    broker: MemoryBroker, node: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vesper.replication import catchup

    monkeypatch.setattr(catchup, "ACK_TIMEOUT_S", 0.5)
    a = node("A")
    a.store.create([{"id": f"d{i}", "pad": "x" * 200} for i in range(50)])
    for i in range(2000):
        a.store.create({"id": f"s{i}", "pad": "y" * 100})
    history = sum(len(orjson.dumps(cs)) for cs in a.store.changesets())
    request = {
        "type": "request",
        "branch": "X",
        "since": "",
        "request_id": "r1",
        "time_ms": now_ms(),
    }
    broker.publish(
        wire.node_queue("c", "A"),
        {wire.CLIENTID: "X", wire.TYPE: wire.REQUEST},
        orjson.dumps(sign(request, NodeKey.generate())),
    )
    answers = lambda: [b for d, h, b in broker.sent if d == wire.node_queue("c", "X")]  # noqa: E731
    wait_for(lambda: len(answers()) >= catchup.ANSWER_WINDOW, 10, "the first window")
    ae = a.service.anti_entropy["c"]
    wait_for(lambda: not ae._answering, 10, "the answer abandoned")
    sent = sum(len(b) for b in answers())
    assert len(answers()) == catchup.ANSWER_WINDOW
    assert sent <= 3 * catchup.FIRST_BATCH_BYTES < history / 10


def test_a_real_bootstrap_streams_past_the_first_window(broker: MemoryBroker, node: Make) -> None:
    a = node("A")
    for i in range(3000):
        a.store.create({"id": f"s{i}", "pad": "y" * 100})
    b = node("B")
    wait_for(lambda: b.store.count == 3000, 30, "B bootstrapped")
    batches = [h for d, h, _ in broker.sent if d == wire.node_queue("c", "B")]
    assert len(batches) > 2  # acknowledged batch by batch


def test_a_node_restarted_from_an_empty_store_fetches_its_own_history_first(
    broker: MemoryBroker, node: Make
) -> None:
    key = NodeKey.generate()
    a = node("A", key=key)
    b = node("B")
    for i in range(5):
        a.store.create({"id": f"a{i}"})
    wait_for(lambda: b.store.count == 5 and a.store.outbox_count == 0, 10, "A's writes on B")
    a.stop()
    # The same node, its store lost (mem://, or restored from before these writes).
    again = node("A", key=key)
    assert again.store.own_head()[0] == 5, "re-imported before taking writes"
    commit = again.store.create({"id": "after"})
    assert commit.changeset == "A.6"
    wait_for(lambda: b.store.get("after"), 10, "the new write on B")
    assert b.status()["forks"] == 0 and b.status()["quarantined"] == {}


def test_a_second_node_with_a_branch_id_in_use_is_reported_not_obeyed(
    broker: MemoryBroker, node: Make
) -> None:
    """Under trust on first use nothing tells an impostor from a second node with the
    same branch id, so neither may lock anyone out: the peers refuse the newcomer's
    changesets, the newcomer learns and reports it, the first node goes on."""
    a = node("A")
    b = node("B")
    a.store.create({"id": "first"})
    twin = node("A")  # same branch id, a key of its own
    twin.store.create({"id": "second"})
    wait_for(lambda: quarantined(b, "key_mismatch") >= 1, 10, "B refuses the twin")
    wait_for(lambda: twin.status()["refused_by"] == ["B"], 10, "the twin learns it")
    wait_for(lambda: a.status()["branch_claims"], 10, "A reports the claim")
    assert b.store.get("second") is None and b.store.get("first") is not None
    a.store.create({"id": "still-writing"})
    wait_for(lambda: b.store.get("still-writing"), 10, "A goes on")


def test_with_configured_keys_a_node_whose_key_is_not_listed_refuses_to_start(
    broker: MemoryBroker,
) -> None:
    from vesper.errors import ConfigError

    listed = NodeKey.generate()
    with pytest.raises(ConfigError, match=r"lists .* for this node's branch 'A'"):
        MemoryNode(broker, "A", trusted_keys={"A": (listed.public,)})


def test_a_forged_claim_of_a_running_nodes_branch_is_reported_never_obeyed(
    broker: MemoryBroker, node: Make
) -> None:
    a = node("A")
    b = node("B")
    a.store.create({"id": "before"})
    wait_for(lambda: b.store.get("before"), 10, "A's key pinned on B")
    claim = {"type": "announce", "branch": "A", "revision": "A.99", "time_ms": now_ms()}
    forged = sign(claim, NodeKey.generate())
    broker.publish(wire.sync_topic("c"), {wire.CLIENTID: "A"}, orjson.dumps(forged))
    wait_for(lambda: a.status()["branch_claims"], 10, "the claim reported on A")
    wait_for(lambda: quarantined(b, "key_mismatch") >= 1, 10, "the claim refused on B")
    a.store.create({"id": "after"})  # A still takes writes
    wait_for(lambda: b.store.get("after"), 10, "A's write on B")


def test_with_configured_keys_a_node_whose_key_its_peers_refuse_stops_writing(
    broker: MemoryBroker, node: Make
) -> None:
    from vesper.errors import WritesRefused

    a_key, b_key, rogue = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
    trusted = {"A": (a_key.public,), "B": (b_key.public,)}
    b = node("B", key=b_key, trusted_keys=trusted)
    # A, with a history of its own, restarted with a wrong key (say, a lost key file).
    # Its own configuration lists only its peers' keys, so it cannot tell by itself.
    a_rogue = MemoryNode(broker, "A", key=rogue, trusted_keys={"B": (b_key.public,)})
    a_rogue.store.create({"id": "lost-cause"})
    a_rogue.start()
    wait_for(lambda: quarantined(b, "untrusted_key") >= 1, 10, "B refuses the rogue A")
    wait_for(lambda: a_rogue.store.writes_refused, 15, "A learns it")
    with pytest.raises(WritesRefused, match="refuse this node's key"):
        a_rogue.store.create({"id": "more"})
    assert a_rogue.store.get("lost-cause") is not None  # kept in its own store
    assert b.store.get("lost-cause") is None
    a_rogue.stop()


def test_the_pending_set_keeps_no_far_future_changesets(broker: MemoryBroker, node: Make) -> None:
    b = node("B")
    attacker = NodeKey.generate()
    bodies = []
    for n in range(10**9, 10**9 + 200):
        body = {
            "v": 2,
            "id": f"Z.{n}",
            "origin": "Z",
            "revision": f"Z.{n}",
            "base_revision": f"Z.{n - 1}",
            "prev": "0" * 64,
            "hlc": 1,
            "time": "2026-01-01T00:00:00.000Z",
            "changes": [{"id": f"z{n}", "op": "create", "exists": True, "set": {}}],
        }
        bodies.append(sign(body, attacker))
    broker.publish(wire.topic("c"), *changeset_message(*bodies))
    wait_for(lambda: quarantined(b, "pending_full") >= 1, 10, "refused as over the bound")
    assert b.store.pending_count == 0


def test_stuck_pending_changesets_are_explained_in_status(broker: MemoryBroker, node: Make) -> None:
    a = node("A")
    a.service.stop()
    for i in range(3):
        a.store.create({"id": f"d{i}"})
    bodies = [sign(cs, a.key) for cs in a.store.changesets()]
    b = node("B")
    broker.publish(wire.topic("c"), *changeset_message(bodies[2]))  # A.1 and A.2 lost
    wait_for(lambda: b.store.pending_count == 1, 10, "A.3 pending on B")
    detail = b.status()["pending_detail"]
    assert detail == [
        {"origin": "A", "waiting": 1, "first": "A.3", "missing": ["A.1"], "announced_by": []}
    ]


def test_a_history_written_before_signing_is_signed_by_its_origin_and_spread(
    broker: MemoryBroker, node: Make, tmp_path: Path
) -> None:
    """The upgrade of a cluster written by the previous version: unsigned format-1
    changesets in every store. Each origin signs and republishes its own once; peers
    take the signatures over for their copies, so a new node can bootstrap from any."""
    urls = {b: f"sqlite:///{tmp_path}/{b}.db" for b in "AB"}
    with open_store(urls["A"], "A") as a_store, open_store(urls["B"], "B") as b_store:
        for i in range(4):
            a_store.create({"id": f"old{i}"})
        legacy = [
            {k: v for k, v in cs.items() if k not in ("v", "prev")} for cs in a_store.changesets()
        ]
        b_store.apply_many(legacy)
    for url in urls.values():  # as the previous version left them: format 1, no heads
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("UPDATE changesets SET body = json_remove(body, '$.v', '$.prev')")
            conn.execute(
                "UPDATE meta SET value = json_remove(value, '$.heads') WHERE key = 'state'"
            )
    b = node("B", storage_url=urls["B"])  # subscribed before A publishes
    a = node("A", storage_url=urls["A"])
    wait_for(lambda: all("sig" in cs for cs in b.store.changesets()), 10, "B took the signatures")
    assert all("v" not in cs for cs in b.store.changesets())  # the content is unchanged
    a.store.create({"id": "new"})  # the first format-2 changeset chains onto the old ones
    wait_for(lambda: b.store.get("new"), 10, "the new write on B")
    assert b.store.changeset("A.5")["prev"] == content_hash(b.store.changeset("A.4"))
    a.stop()
    c = node("C")
    wait_for(lambda: c.store.count == 5, 20, "C bootstrapped from B alone")
    assert c.status()["quarantined"] == {} and c.status()["forks"] == 0


def test_a_hub_relays_changesets_with_their_origins_signatures(
    broker: MemoryBroker, node: Make
) -> None:
    a = node("A", channels=("site",))
    node("H", channels=("site", "top"))
    b = node("B", channels=("top",))
    a.store.create({"id": "via-hub"})
    wait_for(lambda: b.store.get("via-hub"), 10, "A's write on B through the hub")
    relayed = b.store.changeset("A.1")
    assert relayed["key"] == a.key.public
    assert b.status()["quarantined"] == {}


def test_a_flood_of_forgeries_is_counted_in_full_but_logged_briefly(
    broker: MemoryBroker, node: Make, caplog: pytest.LogCaptureFixture
) -> None:
    b = node("B")
    for i in range(50):
        fake = {"type": "announce", "branch": f"X{i}", "revision": ""}
        broker.publish(wire.sync_topic("c"), {wire.CLIENTID: f"X{i}"}, orjson.dumps(fake))
    wait_for(lambda: quarantined(b, "unsigned") == 50, 10, "all 50 quarantined")
    lines = [r for r in caplog.records if "rejected message" in r.getMessage()]
    assert len(lines) == 10
    assert len(b.service.worker.quarantine.entries(limit=100)) == 50


# -- found by attacking the above ------------------------------------------------------


def test_a_signed_announcement_replayed_as_a_request_is_refused(
    broker: MemoryBroker, node: Make
) -> None:
    a = node("A")
    for i in range(50):
        a.store.create({"id": f"d{i}"})
    announcement = sign(
        {"type": "announce", "branch": "X", "revision": "", "time_ms": now_ms()},
        NodeKey.generate(),
    )
    broker.publish(wire.node_queue("c", "A"), {wire.CLIENTID: "X"}, orjson.dumps(announcement))
    wait_for(lambda: quarantined(a, "malformed") == 1, 10, "the replay refused")
    assert not [d for d, _, _ in broker.sent if d == wire.node_queue("c", "X")]


def test_a_poisoned_batch_header_is_quarantined_without_wedging_the_worker(
    broker: MemoryBroker, node: Make
) -> None:
    a, b = node("A"), node("B")
    headers = {wire.CLIENTID: "A", wire.TYPE: wire.CATCHUP, wire.BATCH: "\u00b2" * 3}
    broker.publish(wire.node_queue("c", "B"), headers, b"[]")
    a.store.create({"id": "after"})
    wait_for(lambda: b.store.get("after"), 10, "replication goes on")


def test_a_clock_at_the_top_of_the_range_cannot_stop_this_node_writing(
    broker: MemoryBroker, node: Make
) -> None:
    from vesper.history.changeset import MAX_HLC

    b = node("B")
    c = node("C")
    z = NodeKey.generate()
    body = {
        "v": 2, "id": "Z.1", "origin": "Z", "revision": "Z.1", "base_revision": "",
        "prev": "", "hlc": MAX_HLC - 1, "time": "2026-01-01T00:00:00.000Z",
        "changes": [{"id": "z", "op": "create", "exists": True, "set": {}}],
    }  # fmt: skip
    broker.publish(wire.topic("c"), *changeset_message(sign(body, z)))
    wait_for(lambda: b.store.get("z"), 10, "Z.1 on B")
    b.store.create({"id": "later"})
    wait_for(lambda: c.store.get("later"), 10, "B's next write accepted by C")


def test_ten_and_ten_point_zero_are_one_value_everywhere(broker: MemoryBroker, node: Make) -> None:
    a, b = node("A"), node("B")
    a.store.create({"id": "n", "x": 10.0, "deep": [{"y": 2.0**60}]})
    assert a.store.get("n") == {"id": "n", "x": 10, "deep": [{"y": 2**60}]}
    assert type(a.store.get("n")["x"]) is int  # type: ignore[index]
    wait_for(lambda: b.store.get("n"), 10, "n on B")
    # A relay that rewrites the number still yields the same content and hash.
    swapped = {**b.store.changeset("A.1")}
    swapped["changes"] = [{**swapped["changes"][0], "set": {"x": 10.0, "deep": [{"y": 2.0**60}]}}]
    c = node("C")
    broker.publish(wire.topic("c"), *changeset_message(swapped))
    wait_for(lambda: c.store.get("n"), 10, "n on C")
    assert c.store.get("n") == a.store.get("n") and c.store.digest() == a.store.digest()


def test_junk_in_the_signature_of_a_covered_changeset_is_not_kept(
    broker: MemoryBroker, node: Make
) -> None:
    a = node("A")
    a.service.stop()
    for i in range(2):
        a.store.create({"id": f"d{i}"})
    first, second = (sign(cs, a.key) for cs in a.store.changesets())
    first = {**first, "sig": "A" * 86}  # junk, but A.2's signature covers A.1's content
    c = node("C")
    broker.publish(wire.topic("c"), *changeset_message(first, second))
    wait_for(lambda: c.store.count == 2, 10, "both on C")
    assert "sig" not in c.store.changeset("A.1")
    assert c.store.changeset("A.2")["sig"] == second["sig"]


def test_a_signed_changeset_with_a_repeated_key_is_refused_not_read_one_way(
    broker: MemoryBroker, node: Make
) -> None:
    # orjson keeps the last of two equal keys, other parsers the first: a repeated
    # "changes" ahead of the real one would verify here and mean something else there.
    a, b = node("A"), node("B")
    a.store.create({"id": "seed"})
    wait_for(lambda: b.store.get("seed"), 10, "seed on B")
    held = b.store.changeset("A.1")
    assert held["sig"]
    evil = [{"id": "evil", "op": "create", "exists": True, "set": {"x": 1}}]
    text = b'{"changes":' + orjson.dumps(evil) + b"," + orjson.dumps(held)[1:]
    c = node("C")
    broker.publish(wire.topic("c"), {wire.CLIENTID: "A", "persistent": "true"}, text)
    wait_for(lambda: quarantined(c, "malformed") == 1, 10, "the repeated key refused")
    entry = c.service.worker.quarantine.entries(limit=1)[0]
    assert "'changes' appears twice" in entry["detail"]
    wait_for(lambda: c.store.get("seed"), 10, "the real A.1 reaches C by catch-up")
    assert c.store.get("evil") is None


def test_an_integer_beyond_64_bits_on_the_wire_is_refused(broker: MemoryBroker, node: Make) -> None:
    b = node("B")
    body = (
        b'{"id": "X.1", "origin": "X", "changes": [{"id": "o", "set": {"n": '
        + str(2**70).encode()
        + b"}}]}"
    )
    broker.publish(wire.topic("c"), {wire.CLIENTID: "X", "persistent": "true"}, body)
    wait_for(lambda: quarantined(b, "malformed") == 1, 10, "the big integer refused")
    entry = b.service.worker.quarantine.entries(limit=1)[0]
    assert "outside the signed 64-bit range" in entry["detail"]


def test_a_damaged_store_halts_replication_and_acknowledges_nothing(
    broker: MemoryBroker, node: Make, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = node("A"), node("B")
    a.store.create({"id": "seed"})
    wait_for(lambda: b.store.get("seed"), 10, "seed on B")
    b.store.db.fail("database disk image is malformed (injected)")
    wait_for(lambda: b.service.current_link() is None, 10, "B's replication halted")
    assert any(
        "replication stopped: the store is damaged" in r.getMessage() for r in caplog.records
    )
    sent_before = len(broker.sent)
    a.store.create({"id": "later"})
    wait_for(lambda: len(broker.sent) > sent_before, 10, "A published the later write")
    # B stays off the broker: it neither reconnects nor acknowledges what A sent.
    with pytest.raises(AssertionError):
        wait_for(lambda: b.service.current_link() is not None, 2, "B reconnected")
    assert b.store.get("later") is None


# -- supervisor ------------------------------------------------------------------------


def test_a_send_failing_right_after_connecting_does_not_end_replication(
    broker: MemoryBroker, node: Make
) -> None:
    broker.failing_sends = 1  # the first announcement, sent as the link comes up
    a = node("A")
    b = node("B")
    a.store.create({"id": "after-the-failed-send"})
    wait_for(lambda: b.store.get("after-the-failed-send"), 10, "the write on B")
    assert any(t.name == "vesper-replication" and t.is_alive() for t in threading.enumerate())


def test_the_supervisor_survives_an_unexpected_error_and_still_reconnects(
    broker: MemoryBroker, node: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = node("A"), node("B")
    real_watch = a.service._watch
    failures = [RuntimeError("a bug in the supervisor's round")]

    def watch_once_failing() -> None:
        if failures:
            raise failures.pop()
        real_watch()

    monkeypatch.setattr(a.service, "_watch", watch_once_failing)
    wait_for(lambda: not failures, 10, "the failing round")
    a.link.lose()  # only a living supervisor reconnects
    wait_for(lambda: a.service.current_link() is not None and a.link.connected, 10, "A back")
    a.store.create({"id": "after-the-error"})
    wait_for(lambda: b.store.get("after-the-error"), 10, "the write on B")


# -- conflict lines -------------------------------------------------------------------


def test_conflicts_are_logged_one_line_each_up_to_a_limit(
    broker: MemoryBroker,
    node: Make,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="vesper.replication")
    monkeypatch.setattr(receiver, "CONFLICT_LINES", 2)
    monkeypatch.setattr(receiver, "CONFLICT_WINDOW_S", 1.0)
    a, b = node("A"), node("B")
    # Both write the same five objects while their changesets do not get through.
    broker.drop = lambda destination, headers, body: destination == wire.topic("c")
    a.store.create([{"id": f"k{i}", "v": "from A"} for i in range(5)])
    b.store.create([{"id": f"k{i}", "v": "from B"} for i in range(5)])
    broker.drop = lambda destination, headers, body: False  # catch-up brings them over
    for n in (a, b):
        wait_for(lambda n=n: n.status()["conflicts"] == 5, 30, lambda n=n: n.status())
    wait_for(
        lambda: any("3 more conflicts in the last" in r.getMessage() for r in caplog.records),
        30,
        "the line for the conflicts not logged",
    )
    lines = [r for r in caplog.records if r.getMessage().startswith("conflict on object")]
    assert len(lines) == 4  # two on each node
    line = lines[0]
    assert line.levelno == logging.INFO
    assert re.match(
        r"conflict on object 'k\d' property 'v': [AB]\.1 wins over [AB]\.1", line.msg % line.args
    )
    assert line.property == "v" and line.winner in ("A.1", "B.1")  # type: ignore[attr-defined]
    assert a.store.conflicts("k0") == b.store.conflicts("k0")
