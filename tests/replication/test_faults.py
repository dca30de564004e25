"""Replication through failures: lossy brokers, broker restarts, failover, nodes that
go away. Each test runs embedded brokers of its own, since it kills or degrades them."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.replication.harness import Node, wait_converged, wait_for
from vesper.broker.process import BrokerProcess


def hosts_of(*brokers: BrokerProcess) -> list[tuple[str, int]]:
    return [(b.host, b.port) for b in brokers]


def test_lossy_broker_dropping_and_duplicating_10_percent(
    brokers: Callable[..., BrokerProcess], cluster: Callable[..., list[Node]]
) -> None:
    broker = brokers()
    nodes = cluster(["A", "B", "C"], hosts_of(broker))
    wait_for(lambda: all(n.connected() for n in nodes), what="all connected")
    broker.set_faults(drop=0.1, duplicate=0.1)
    for i in range(300):
        node = nodes[i % 3]
        node.s.create({"id": f"{node.branch}{i}", "i": i})
        if i % 10 == 0:
            nodes[0].s.replace({"id": "shared", "by": node.branch, "i": i})
    wait_converged(nodes, timeout=90)
    assert nodes[0].s.count == nodes[2].s.count == 301


def test_node_offline_while_others_commit_1000_changes(
    brokers: Callable[..., BrokerProcess], cluster: Callable[..., list[Node]]
) -> None:
    broker = brokers()
    a, b = cluster(["A", "B"], hosts_of(broker))
    wait_for(lambda: a.connected() and b.connected(), what="both connected")
    b.stop()
    for i in range(1_000):
        a.s.create({"id": f"o{i}"}) if i % 2 == 0 else a.s.update(f"o{i - 1}", {"v": i})
    b.start()
    wait_converged([a, b], timeout=90)
    assert b.s.count == 500


def test_broker_restarted_in_the_middle_of_a_stream(
    brokers: Callable[..., BrokerProcess], cluster: Callable[..., list[Node]]
) -> None:
    broker = brokers()
    a, b = cluster(["A", "B"], hosts_of(broker))
    wait_for(lambda: a.connected() and b.connected(), what="both connected")
    done = threading.Event()

    def stream() -> None:
        for i in range(1_500):
            a.s.create({"id": f"o{i}"})
        done.set()

    writer = threading.Thread(target=stream)
    writer.start()
    wait_for(lambda: b.s.count >= 200, what="the stream under way")
    broker.stop()
    wait_for(lambda: not a.connected(), what="A noticing the broker is gone")
    broker.start()
    writer.join()
    wait_converged([a, b], timeout=90)
    assert b.s.count == 1_500
    wait_for(lambda: a.status()["outbox"] == 0, what="A's outbox confirmed")


def test_failover_to_the_second_broker_recovers_stranded_changesets(
    brokers: Callable[..., BrokerProcess], cluster: Callable[..., list[Node]]
) -> None:
    first, second = brokers(), brokers()
    a, b = cluster(["A", "B"], hosts_of(first, second))
    wait_for(lambda: a.connected() and b.connected(), what="both connected")
    assert a.status()["connected"] == f"{first.host}:{first.port}"
    a.s.create({"id": "before"})
    wait_converged([a, b])
    # Strand changesets in the first broker: stored and confirmed to A, never
    # delivered to B.
    first.pause()
    for i in range(100):
        a.s.create({"id": f"stranded{i}"})
    wait_for(lambda: a.status()["outbox"] == 0, what="A's outbox confirmed by the broker")
    first.kill()
    wait_for(
        lambda: (
            a.status()["connected"] == f"{second.host}:{second.port}"
            and b.status()["connected"] == f"{second.host}:{second.port}"
        ),
        what="both nodes on the second broker",
    )
    a.s.create({"id": "after-failover"})
    b.s.create({"id": "from-b"})
    wait_converged([a, b], timeout=90)
    assert b.s.count == 103


def test_a_broker_that_stays_down_never_blocks_local_work(
    brokers: Callable[..., BrokerProcess], cluster: Callable[..., list[Node]]
) -> None:
    broker = brokers()
    a, b = cluster(["A", "B"], hosts_of(broker))
    wait_for(lambda: a.connected() and b.connected(), what="both connected")
    broker.stop()
    for i in range(200):
        a.s.create({"id": f"o{i}"})
    assert a.s.count == 200 and a.status()["outbox"] == 200 and a.status()["connected"] is None
    broker.start()
    wait_converged([a, b], timeout=90)
