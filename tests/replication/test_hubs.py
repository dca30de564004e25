"""Hierarchies of channels: a hub node on two channels relays between them."""

from __future__ import annotations

from collections.abc import Callable

from tests.replication.harness import Node, new_channel, wait_converged, wait_for


def test_hub_relays_between_channels_both_ways(
    cluster: Callable[..., list[Node]], shared_broker: tuple[str, int]
) -> None:
    top, leaf = new_channel(), new_channel()
    (a,) = cluster(["A"], [shared_broker], channel=top)
    (hub,) = cluster(["H"], [shared_broker], channel=(top, leaf))
    (c,) = cluster(["C"], [shared_broker], channel=leaf)
    nodes = [a, hub, c]
    wait_for(lambda: all(n.connected() for n in nodes), what="all connected")
    a.s.create({"id": "from-top", "v": 1})
    wait_for(lambda: c.s.get("from-top") is not None, what="A's object on the leaf channel")
    c.s.create({"id": "from-leaf"})
    wait_for(lambda: a.s.get("from-leaf") is not None, what="C's object on the top channel")
    for i in range(50):  # concurrent writers on both sides of the hub
        a.s.replace({"id": "shared", "by": "A", "i": i})
        c.s.replace({"id": "shared", "by": "C", "i": i})
    wait_converged(nodes)
    assert a.s.conflicts() == c.s.conflicts()


def test_late_leaf_node_catches_up_through_the_hub(
    cluster: Callable[..., list[Node]], shared_broker: tuple[str, int]
) -> None:
    top, leaf = new_channel(), new_channel()
    (a,) = cluster(["A"], [shared_broker], channel=top)
    (hub,) = cluster(["H"], [shared_broker], channel=(top, leaf))
    wait_for(lambda: a.connected() and hub.connected(), what="connected")
    a.s.create([{"id": f"o{i}"} for i in range(500)])
    wait_converged([a, hub])
    (c,) = cluster(["C"], [shared_broker], channel=leaf)
    wait_converged([a, hub, c])
    assert c.s.count == 500
