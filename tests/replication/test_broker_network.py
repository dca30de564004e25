"""Replication through a network (or cluster) of brokers: nodes attached to different
brokers of one network, a node that comes back on another broker, and the last broker
killed during writes; and, on ActiveMQ, the statistics ``broker_stats`` reads for an
offline durable subscriber whose messages expire. Runs only with ``--mq-network`` (and
``--mq-network-pids`` for the kill), against brokers that
``scripts/brokers/*-network.sh`` started.

The kill test kills the LAST broker of the list and runs last in this module: the same
pytest run may use the first broker as ``--mq`` for the tests after this module. The
other tests use brokers 0 and 1 only, and skip if one of them is gone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import stomp

from tests.replication.broker_stats import destination_stats, durable_backlog
from tests.replication.harness import Node, wait_converged, wait_for

Host = tuple[str, int]
NETWORK_DEADLINE_S = 120.0
"""Convergence across bridges and failovers on a loaded 2-core machine."""


@dataclass
class BrokerNetwork:
    hosts: list[Host]
    pids: list[int] | None
    queue_type: str = "classic"
    """The nodes' ``replication_queue_type`` (``--mq-network-queue-type``)."""
    killed: set[int] = field(default_factory=set)

    def use(self, *indexes: int) -> list[Host]:
        """The brokers a test needs (skipped if one of them was killed)."""
        gone = [i for i in indexes if i in self.killed]
        if gone:
            pytest.skip(f"needs broker {gone[0]}, killed by an earlier test")
        return [self.hosts[i] for i in indexes]

    def kill(self, index: int) -> None:
        assert self.pids is not None
        self.killed.add(index)
        os.kill(self.pids[index], signal.SIGKILL)
        wait_for(lambda: not _running(self.pids[index]), 30, f"broker {index} gone")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _hosts(option: str) -> list[Host]:
    hosts = []
    for address in option.split(","):
        host, _, port = address.strip().rpartition(":")
        hosts.append((host or "127.0.0.1", int(port)))
    return hosts


@pytest.fixture(scope="module")
def network(request: pytest.FixtureRequest) -> BrokerNetwork:
    option = request.config.getoption("--mq-network")
    if not option:
        pytest.skip("needs a network of brokers: --mq-network HOST:PORT,HOST:PORT")
    hosts = _hosts(option)
    if len(hosts) < 2:
        pytest.fail("--mq-network needs at least two brokers")
    pids_option = request.config.getoption("--mq-network-pids")
    pids = [int(p) for p in pids_option.split(",")] if pids_option else None
    if pids is not None and len(pids) != len(hosts):
        pytest.fail("--mq-network-pids needs one process per --mq-network broker")
    return BrokerNetwork(hosts, pids, request.config.getoption("--mq-network-queue-type"))


def address(host: Host) -> str:
    return f"{host[0]}:{host[1]}"


def connected_to(node: Node, host: Host) -> bool:
    return node.connected() and node.status()["connected"] == address(host)


def test_nodes_on_different_brokers_converge(
    network: BrokerNetwork, cluster: Callable[..., list[Node]]
) -> None:
    first, second = network.use(0, 1)
    (a,) = cluster(["A"], [first], queue_type=network.queue_type)
    b, c = cluster(["B", "C"], [second], channel=a.channel, queue_type=network.queue_type)
    wait_for(lambda: connected_to(a, first) and connected_to(b, second), what="A and B up")
    a.s.create({"id": "shared", "by": "A"})
    wait_converged([a, b, c], timeout=NETWORK_DEADLINE_S)

    def writer(node: Node) -> None:
        for i in range(150):
            node.s.create({"id": f"{node.branch}{i}"})
            if i % 10 == 0:
                node.s.update("shared", {"by": node.branch, "i": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in (a, b, c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_converged([a, b, c], timeout=NETWORK_DEADLINE_S)
    assert a.s.count == b.s.count == c.s.count == 451
    for n in (a, b, c):
        wait_for(lambda n=n: n.status()["outbox"] == 0, what=f"{n.branch}'s outbox confirmed")


def test_node_back_on_another_broker_catches_up(
    network: BrokerNetwork, cluster: Callable[..., list[Node]]
) -> None:
    first, second = network.use(0, 1)
    (a,) = cluster(["A"], [first], queue_type=network.queue_type)
    b, c = cluster(["B", "C"], [second], channel=a.channel, queue_type=network.queue_type)
    wait_for(lambda: connected_to(b, second), what="B on the second broker")
    b.s.create({"id": "from-b"})
    wait_converged([a, b, c], timeout=NETWORK_DEADLINE_S)
    b.stop()
    for i in range(300):
        writer = a if i % 2 == 0 else c
        writer.s.create({"id": f"{writer.branch}{i}"})
    # Its durable subscription on the second broker holds what it missed; on the first
    # it has none yet: catch-up must bring the rest.
    b.hosts = [first]
    b.start()
    wait_for(lambda: connected_to(b, first), what="B back, on the first broker")
    b.s.create({"id": "b-is-back"})
    wait_converged([a, b, c], timeout=NETWORK_DEADLINE_S)
    assert b.s.count == 302


def test_expired_messages_leave_an_offline_durable_subscription(
    network: BrokerNetwork,
) -> None:
    """ActiveMQ drops the expired messages of an offline durable subscriber by itself
    (its destinations' expireMessagesPeriod), keeps the others, and the statistics
    follow."""
    ((host, port),) = network.use(0)
    client = _Client(host, port, f"stats-{uuid.uuid4().hex[:8]}")
    if not client.server.lower().startswith("activemq"):
        client.close()
        pytest.skip(f"ActiveMQ statistics; broker 0 is {client.server or 'unknown'}")
    topic = f"stats{uuid.uuid4().hex[:10]}"
    client.subscribe_durably(topic)
    client.close()

    sender = _Client(host, port)
    ttl_ms = 8_000
    expires = int(time.time() * 1000) + ttl_ms
    for i in range(10):
        sender.send(topic, f"expiring{i}", {"expires": str(expires)})
    for i in range(5):
        sender.send(topic, f"kept{i}", {})
    sender.close()
    dead_letters = destination_stats(host, port, "/queue/ActiveMQ.DLQ")
    assert durable_backlog(host, port, topic) == 15, "counted before the expiry"
    assert time.time() * 1000 < expires, f"the machine took over {ttl_ms} ms to count"

    wait_for(lambda: durable_backlog(host, port, topic) == 5, 60, "the expired messages dropped")
    stats = destination_stats(host, port, f"/topic/{topic}")
    assert stats is not None and stats.expired == 10
    assert destination_stats(host, port, "/queue/ActiveMQ.DLQ") == dead_letters, (
        "expired messages went to the dead-letter queue"
    )
    back = _Client(host, port, client.client_id)
    back.subscribe_durably(topic)
    wait_for(lambda: len(back.received) == 5, what="the 5 kept messages")
    assert sorted(back.received) == [f"kept{i}" for i in range(5)]
    wait_for(lambda: durable_backlog(host, port, topic) == 0, what="the backlog acknowledged")
    back.unsubscribe_durably()
    back.close()


class _Client(stomp.ConnectionListener):
    """A plain STOMP client: a durable subscriber (with ``client_id``) or a sender.
    Every frame it sends waits for the broker's RECEIPT."""

    def __init__(self, host: str, port: int, client_id: str | None = None) -> None:
        self.client_id = client_id
        self.server = ""
        self.received: list[str] = []
        self._receipts: set[str] = set()
        self._receipt_arrived = threading.Condition()
        self.conn = stomp.Connection12([(host, port)], heartbeats=(0, 0), vhost="/")
        self.conn.set_listener("client", self)
        headers = {"client-id": client_id} if client_id else {}
        self.conn.connect(wait=True, headers=headers)

    def on_connected(self, frame: stomp.utils.Frame) -> None:
        self.server = frame.headers.get("server", "")

    def on_message(self, frame: stomp.utils.Frame) -> None:
        self.received.append(frame.body)
        self.conn.ack(frame.headers["ack"])

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        with self._receipt_arrived:
            self._receipts.add(frame.headers["receipt-id"])
            self._receipt_arrived.notify_all()

    def _receipt(self) -> dict[str, str]:
        return {"receipt": uuid.uuid4().hex}

    def _wait(self, headers: dict[str, str]) -> None:
        receipt = headers["receipt"]
        with self._receipt_arrived:
            if not self._receipt_arrived.wait_for(lambda: receipt in self._receipts, 30):
                raise AssertionError("no RECEIPT from the broker in 30 s")

    def subscribe_durably(self, topic: str) -> None:
        headers = {"activemq.subscriptionName": "s", **self._receipt()}
        self.conn.subscribe(
            f"/topic/{topic}", id="durable", ack="client-individual", headers=headers
        )
        self._wait(headers)

    def unsubscribe_durably(self) -> None:
        # The first UNSUBSCRIBE ends the live subscription, the second one (with the
        # subscription's name) deletes the durable subscription.
        self.conn.unsubscribe("durable")
        headers = {"activemq.subscriptionName": "s", **self._receipt()}
        self.conn.unsubscribe("durable", headers=headers)
        self._wait(headers)

    def send(self, topic: str, body: str, headers: dict[str, str]) -> None:
        headers = {"persistent": "true", **headers, **self._receipt()}
        self.conn.send(f"/topic/{topic}", body, headers=headers)
        self._wait(headers)

    def close(self) -> None:
        self.conn.disconnect()


def test_last_broker_killed_during_writes(
    network: BrokerNetwork, cluster: Callable[..., list[Node]], request: pytest.FixtureRequest
) -> None:
    """Must stay the last test of the module: it kills the last broker for good."""
    if network.pids is None:
        pytest.skip("kills a broker: needs --mq-network-pids")
    last = len(network.hosts) - 1
    hosts = network.use(*range(len(network.hosts)))
    mq = request.config.getoption("--mq")
    if mq and _hosts(mq)[0] == hosts[last]:
        pytest.skip("--mq names the last broker of --mq-network, which this test kills")

    def failover_list(own: int) -> list[Host]:
        return hosts[own:] + hosts[:own]

    # One node on each broker, and a second one on the broker that dies.
    homes = [*range(len(hosts)), last]
    nodes: list[Node] = []
    for i, home in enumerate(homes):
        nodes += cluster(
            [chr(ord("A") + i)],
            failover_list(home),
            channel=nodes[0].channel if nodes else None,
            queue_type=network.queue_type,
        )
    on_last = [n for n, home in zip(nodes, homes, strict=True) if home == last]
    wait_for(
        lambda: all(connected_to(n, hosts[h]) for n, h in zip(nodes, homes, strict=True)),
        what="every node on its own broker",
    )
    nodes[0].s.create({"id": "start"})
    wait_converged(nodes, timeout=NETWORK_DEADLINE_S)

    stop = threading.Event()
    written = {n.branch: 0 for n in nodes}

    def write(node: Node) -> None:
        # Every create returns once committed locally: that is the acknowledgement a
        # client gets, so each one must end up on every node.
        while not stop.is_set():
            node.s.create({"id": f"{node.branch}-{written[node.branch]}"})
            written[node.branch] += 1
            stop.wait(0.01)

    writers = [threading.Thread(target=write, args=(n,)) for n in nodes]
    for t in writers:
        t.start()
    try:
        wait_for(lambda: min(written.values()) >= 50, what="writes under way")
        network.kill(last)
        wait_for(
            lambda: all(n.connected() and not connected_to(n, hosts[last]) for n in on_last),
            NETWORK_DEADLINE_S,
            "the last broker's nodes failed over",
        )
        after_kill = dict(written)
        wait_for(
            lambda: all(written[b] >= after_kill[b] + 50 for b in written),
            what="writes after the failover",
        )
    finally:
        stop.set()
        for t in writers:
            t.join()
    wait_converged(nodes, timeout=NETWORK_DEADLINE_S)
    total = 1 + sum(written.values())
    for n in nodes:
        assert n.s.count == total, f"{n.branch} has {n.s.count} of {total} objects"
        for branch, count in written.items():
            assert n.s.get(f"{branch}-{count - 1}") is not None, f"{branch}'s last write"
        wait_for(lambda n=n: n.status()["outbox"] == 0, what=f"{n.branch}'s outbox confirmed")
