"""Replication between in-process nodes through a shared broker (embedded, or the one
``--mq`` names): these run unchanged against ActiveMQ and RabbitMQ in CI."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import orjson
import stomp

from tests.replication.harness import Node, wait_converged, wait_for

Hosts = list[tuple[str, int]]


def test_object_created_on_a_appears_on_b(
    cluster: Callable[..., list[Node]], shared_broker: tuple[str, int]
) -> None:
    a, b = cluster(["A", "B"], [shared_broker])
    wait_for(lambda: a.connected() and b.connected(), what="both nodes connected")
    a.s.create({"id": "x", "v": 1})
    wait_for(lambda: b.s.get("x") == {"id": "x", "v": 1}, what="x on B")
    assert b.s.revision == "A.1"


def test_a_sequence_gives_b_exactly_a_objects(
    cluster: Callable[..., list[Node]], shared_broker: tuple[str, int]
) -> None:
    a, b = cluster(["A", "B"], [shared_broker])
    wait_for(lambda: a.connected() and b.connected(), what="both nodes connected")
    a.s.create({"id": "1", "v": "one"})
    a.s.create({"id": "2", "v": "two"})
    a.s.update("1", {"v": "uno", "extra": True})
    a.s.create({"id": "3"})
    wait_converged([a, b])
    assert (
        list(b.s.query())
        == list(a.s.query())
        == [{"id": "1", "v": "uno", "extra": True}, {"id": "2", "v": "two"}, {"id": "3"}]
    )
    wait_for(lambda: a.status()["outbox"] == 0, what="A's outbox confirmed")


def test_three_nodes_writing_concurrently_converge(
    cluster: Callable[..., list[Node]], shared_broker: tuple[str, int]
) -> None:
    nodes = cluster(["A", "B", "C"], [shared_broker])
    wait_for(lambda: all(n.connected() for n in nodes), what="all connected")
    nodes[0].s.create([{"id": f"o{i}", "n": 0} for i in range(20)])
    wait_converged(nodes)

    def writer(node: Node, seed: int) -> None:
        rng = random.Random(seed)
        for i in range(150):
            obj = f"o{rng.randrange(20)}"
            if rng.random() < 0.1:
                node.s.replace({"id": obj, "by": node.branch, "i": i})
            else:
                node.s.update(obj, {rng.choice("nxy"): f"{node.branch}{i}"})

    threads = [threading.Thread(target=writer, args=(n, i)) for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_converged(nodes)
    conflicts = nodes[0].s.conflicts()
    assert conflicts, "concurrent writers to 20 objects should have collided"
    for node in nodes[1:]:
        assert node.s.conflicts() == conflicts


def test_without_acknowledgements(
    cluster: Callable[..., list[Node]], shared_broker: tuple[str, int]
) -> None:
    a, b = cluster(["A", "B"], [shared_broker], send_ack=False)
    wait_for(lambda: a.connected() and b.connected(), what="both nodes connected")
    for i in range(200):
        a.s.create({"id": f"o{i}"})
    b.s.create({"id": "from-b"})
    wait_converged([a, b])
    assert a.s.count == b.s.count == 201
    assert b.status()["send_stomp_ack"] is False


def test_new_node_receives_a_channel_of_10000_objects(
    cluster: Callable[..., list[Node]], shared_broker: tuple[str, int]
) -> None:
    a, b = cluster(["A", "B"], [shared_broker])
    wait_for(lambda: a.connected() and b.connected(), what="both nodes connected")
    for start in range(0, 10_000, 1_000):
        a.s.create([{"id": f"o{i:05}", "n": i} for i in range(start, start + 1_000)])
    b.s.update("o00001", {"touched": "B"})
    wait_converged([a, b])
    (c,) = cluster(["C"], [shared_broker], channel=a.channel)
    wait_converged([a, b, c], timeout=120)
    assert c.s.count == 10_000
    assert c.s.get("o00001") == {"id": "o00001", "n": 1, "touched": "B"}


def test_forged_and_malformed_messages_are_counted_not_applied(
    cluster: Callable[..., list[Node]], shared_broker: tuple[str, int]
) -> None:
    a, b = cluster(["A", "B"], [shared_broker])
    wait_for(lambda: a.connected() and b.connected(), what="both nodes connected")
    a.s.create({"id": "x"})
    wait_converged([a, b])
    forged = dict(a.s.changeset("A.1") or {})
    forged.update(id="M.1", origin="M", revision="M.1", base_revision="")
    forged["changes"] = [{"id": "x", "op": "delete", "exists": False}]
    conn = stomp.Connection12([shared_broker], vhost="/")
    conn.connect(wait=True)
    try:
        topic = f"/topic/{a.channel}"
        conn.send(topic, orjson.dumps(forged), headers={"clientid": "Z"})
        conn.send(topic, b"{not json", headers={"clientid": "Z"})
        conn.send(topic, b'{"id": "Z.1"}', headers={"clientid": "Z"})
        # A header claiming a catch-up answer does not lift the origin check on the topic.
        conn.send(
            topic, orjson.dumps([forged]), headers={"clientid": "Z", "vesper-type": "catchup"}
        )
        # A malformed request on B's queue is quarantined; nothing else is affected.
        conn.send(
            f"/queue/{a.channel}.B",
            b'{"type": "request", "branch": "X", "since": 5}',
            headers={"clientid": "X", "vesper-type": "request"},
        )
    finally:
        conn.disconnect()
    wait_for(lambda: b.status()["receive_errors"] >= 5, what="five rejected messages")
    assert b.s.get("x") == {"id": "x"} and b.s.revision == "A.1"
    a.s.update("x", {"after": True})  # the subscription still works
    wait_converged([a, b])
