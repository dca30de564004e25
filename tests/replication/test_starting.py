"""When a restarted node takes writes: once every origin of its store has answered its
hello, without listening on for the rest of ``SETTLE_S``; not before, and not on the
word of a forger answering for an origin that stays silent.

``SETTLE_S`` is set to a minute for the restart, so a node that waited it out would
fail these tests by their deadlines rather than pass them slowly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.replication.harness import wait_for
from tests.replication.memory_transport import Make, MemoryBroker, MemoryNode
from vesper.replication import catchup, service, wire
from vesper.trust.keys import NodeKey
from vesper.trust.signing import sign


class Starting:
    """A node started on a thread of its own, its ``wait_started`` given two minutes
    (by default it takes writes anyway after ten seconds without an answer)."""

    def __init__(self, node: MemoryNode) -> None:
        self.node = node
        self.started = threading.Event()
        self.error: BaseException | None = None
        threading.Thread(target=self._start, daemon=True).start()

    def _start(self) -> None:
        try:
            self.node.service.start()
            self.node.service.wait_started(timeout=120)
        except BaseException as exc:  # reported by the test, not lost on the thread
            self.error = exc
        self.started.set()


Restart = Callable[..., Starting]


@pytest.fixture
def restart(broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch) -> Iterator[Restart]:
    """Starts a node on its thread, with ``SETTLE_S`` a minute from then on."""
    made: list[Starting] = []

    def start(branch: str, **config: object) -> Starting:
        monkeypatch.setattr(service, "SETTLE_S", 60.0)
        made.append(Starting(MemoryNode(broker, branch, **config)))
        return made[-1]

    yield start
    for s in made:
        s.node.stop()


def b_with_history(
    node: Make, tmp_path: Path, *writers: str
) -> tuple[NodeKey, str, dict[str, MemoryNode]]:
    """Node B on a file store holding a write of each of ``writers`` (returned, still
    running) and one of its own, then stopped."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    key = NodeKey.generate()
    b = node("B", key=key, storage_url=url)
    nodes = {w: node(w) for w in writers}
    for w, n in nodes.items():
        n.store.create({"id": f"from-{w}"})
    b.store.create({"id": "from-B"})
    wait_for(lambda: b.store.count == len(writers) + 1, 10, "the writes on B")
    wait_for(lambda: b.store.outbox_count == 0, 10, "B's write sent")
    b.stop()
    return key, url, nodes


def test_a_restarted_node_takes_writes_once_every_origin_answered(
    node: Make, tmp_path: Path, restart: Restart
) -> None:
    key, url, _ = b_with_history(node, tmp_path, "A", "C")
    again = restart("B", key=key, storage_url=url)
    assert again.started.wait(20), "still listening after A and C answered"
    assert again.error is None
    assert again.node.store.create({"id": "after"}).changeset == "B.2"


def test_a_restarted_node_waits_for_an_origin_that_has_not_answered(
    broker: MemoryBroker, node: Make, tmp_path: Path, restart: Restart
) -> None:
    key, url, writers = b_with_history(node, tmp_path, "A", "C")
    c_key = writers["C"].key
    writers["C"].stop()
    again = restart("B", key=key, storage_url=url)
    svc = again.node.service
    wait_for(lambda: svc._connected_at is not None, 10, "B connected")
    since = svc._connected_at
    ae = svc.anti_entropy["c"]
    wait_for(lambda: ae.heard_from("A", since), 10, "A's answer processed")

    # A hostile client answers for C, with a key of its own: refused, C's is pinned.
    claim = {"type": "announce", "branch": "C", "revision": "", "time_ms": int(time.time() * 1000)}
    forged = orjson.dumps(sign(claim, NodeKey.generate()))
    broker.publish(wire.sync_topic("c"), {wire.CLIENTID: "C"}, forged)
    wait_for(
        lambda: svc.status()["quarantined"].get("key_mismatch", 0) >= 1, 10, "the forgery refused"
    )
    wait_for(lambda: svc.worker.backlog == 0, 10, "B idle")
    assert not ae.heard_from("C", since)
    assert not svc._own_history_checked()
    assert not again.started.is_set()

    c_again = node("C", key=c_key)  # C comes back: its hello is B's answer
    assert again.started.wait(20), "C answered, B still listening"
    assert again.error is None
    assert c_again.store.get("from-C") is not None  # C re-imported its own history


def test_nodes_restarted_together_are_each_answered(
    node: Make, tmp_path: Path, restart: Restart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four nodes restarted within a second each get an answer from A, though A
    announces on its own only every minute here."""
    a = node("A")
    urls = {b: f"sqlite:///{tmp_path / b}.db" for b in "BCDE"}
    readers = {b: node(b, storage_url=url) for b, url in urls.items()}
    a.store.create({"id": "x"})
    for r in readers.values():
        wait_for(lambda r=r: r.store.count == 1, 10, "A's write everywhere")
    monkeypatch.setattr(catchup, "ANNOUNCE_INTERVAL_S", 60.0)
    for r in readers.values():
        r.stop()
    restarted = [restart(b, key=r.key, storage_url=urls[b]) for b, r in readers.items()]
    for again in restarted:
        assert again.started.wait(20), f"{again.node.branch} never heard A"
        assert again.error is None


def test_a_flood_of_hellos_gets_one_answer_a_second_and_the_last_one_is_answered(
    broker: MemoryBroker, node: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catchup, "ANNOUNCE_INTERVAL_S", 60.0)
    a = node("A")
    sync = wire.sync_topic("c")

    def answers(after: int = 0) -> int:
        sent = broker.sent[after:]
        return sum(1 for d, h, _ in sent if d == sync and h.get(wire.CLIENTID) == "A")

    before = answers()
    started = time.monotonic()
    for i in range(50):
        hello = {
            "type": "announce",
            "branch": f"X{i}",
            "revision": "",
            "hello": True,
            "time_ms": int(time.time() * 1000),
        }
        body = orjson.dumps(sign(hello, NodeKey.generate()))
        broker.publish(sync, {wire.CLIENTID: f"X{i}"}, body)
    last_hello = len(broker.sent)
    wait_for(lambda: "X49" in a.status()["peers"], 10, "the flood processed")
    sent = answers() - before
    assert 1 <= sent <= catchup.HELLO_ANSWER_BURST + int(time.monotonic() - started) + 1
    # Past the burst a hello is owed an answer, sent at a tick: the last one gets it.
    wait_for(lambda: answers(last_hello) >= 1, 10, "an answer after the last hello")


def test_a_node_takes_writes_while_changesets_still_stream_in(
    broker: MemoryBroker, node: Make
) -> None:
    """The start check waits for what was queued by the end of its listening, not for
    the end of a stream that keeps arriving (a catch-up answer lasts minutes in a
    bootstrap). Before, it waited for an empty queue, which such a stream leaves only
    by chance, between two receive batches: this test passes on that rule too, most
    of the time; the one below pins what the new rule counts."""
    a = node("A")
    b = MemoryNode(broker, "B")
    apply_parsed = b.store.apply_parsed

    def slowly(parsed: list[Any]) -> Any:
        time.sleep(0.002 * len(parsed))  # slower than A writes: B falls further behind
        return apply_parsed(parsed)

    b.store.apply_parsed = slowly  # type: ignore[method-assign]
    writes, writing = 4_000, threading.Event()

    def write() -> None:
        writing.set()
        for i in range(writes):
            a.store.create({"id": f"o{i}"})
            time.sleep(0.001)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writing.wait()
    starting = Starting(b)
    try:
        assert starting.started.wait(60), "B never took writes"
        assert starting.error is None
        assert writer.is_alive(), "B took writes only once A stopped writing"
        assert b.store.create({"id": "from-B"}).changeset == "B.1"
        writer.join()
        wait_for(lambda: b.store.count == writes + 1, 60, lambda: f"B has {b.store.count}")
    finally:
        b.stop()


def test_the_worker_counts_a_delivery_as_handled_only_once_processed(
    broker: MemoryBroker, node: Make
) -> None:
    """What the start check counts on: deliveries taken from the queue but still being
    applied are not yet handled, so a mark taken then waits for them."""
    a, b = node("A"), node("B")
    gate, applying = threading.Event(), threading.Event()
    apply_parsed = b.store.apply_parsed

    def gated(parsed: list[Any]) -> Any:
        applying.set()
        assert gate.wait(30), "the test never opened the gate"
        return apply_parsed(parsed)

    b.store.apply_parsed = gated  # type: ignore[method-assign]
    worker = b.service.worker
    try:
        a.store.create({"id": "x"})
        assert applying.wait(10), "B never applied x"
        mark = worker.received  # x among them, taken from the queue, not yet applied
        assert not worker.handled_through(mark)
        gate.set()
        wait_for(lambda: worker.handled_through(mark), 10, "x handled")
        assert b.store.get("x") is not None
    finally:
        gate.set()
