"""Changeset messages that expire (``replication_message_ttl``): a node away for longer
than the TTL leaves no backlog on the broker, and gets everything it missed from its
peers by catch-up when it comes back."""

from __future__ import annotations

import time

import pytest

from tests.replication.broker_stats import durable_backlog
from tests.replication.harness import Node, wait_converged, wait_for
from vesper.broker.control import broker_status
from vesper.replication.brokers import BrokerProfile

TTL_S = 3
CHANGESETS = 1_000
OBJECTS_PER_CHANGESET = 10


def test_expiry_headers_follow_each_brokers_convention() -> None:
    before = time.time_ns() // 1_000_000
    absolute = int(BrokerProfile("activemq", "").expiry_headers(60)["expires"])
    assert before + 60_000 <= absolute <= time.time_ns() // 1_000_000 + 60_000
    assert BrokerProfile("rabbitmq", "").expiry_headers(60) == {"expiration": "60000"}
    assert BrokerProfile("vesper", "").expiry_headers(60) == {"expiration": "60000"}


def _backlog(request: pytest.FixtureRequest, host: tuple[str, int], a: Node, b: Node) -> int | None:
    """Messages the broker holds for B's durable subscription; None where this
    broker's count cannot be read (RabbitMQ's needs rabbitmqctl on the broker's host)."""
    if not request.config.getoption("--mq"):
        name = f"vesper-{b.channel}-{b.branch}"
        durables = broker_status(*host)["durables"]
        return sum(depth for key, depth in durables.items() if name in key)
    if a.status()["broker_kind"] == "activemq":
        # Exact here: B's is the only subscription away, and A acknowledges everything.
        return durable_backlog(*host, b.channel)
    return None


def test_a_node_away_past_the_ttl_leaves_no_backlog_and_catches_up(
    request: pytest.FixtureRequest, shared_broker, cluster
) -> None:
    a, b = cluster(["ttlA", "ttlB"], [shared_broker], message_ttl_s=TTL_S)
    a.s.create({"id": "first"})
    wait_converged([a, b])
    b.stop()  # its durable subscription stays on the broker and fills up
    for i in range(CHANGESETS):
        a.s.create([{"id": f"o{i}-{j}", "n": j} for j in range(OBJECTS_PER_CHANGESET)])
    wait_for(lambda: a.s.outbox_count == 0, what="A's changesets on the broker")
    all_expired_at = time.monotonic() + TTL_S
    if _backlog(request, shared_broker, a, b) is not None:
        # Read at once, so some of it is still there unless the machine stalled for
        # the whole TTL: either way it must be gone after it.
        wait_for(
            lambda: _backlog(request, shared_broker, a, b) == 0,
            TTL_S + 30,
            "B's backlog to expire on the broker",
        )
    # Where the backlog cannot be read, B comes back once the last message's TTL has
    # run out: the broker must not deliver any of it then.
    wait_for(lambda: time.monotonic() > all_expired_at, TTL_S + 1, "the TTL to run out")
    b.start()
    wait_converged([a, b])
    assert b.s.get("o999-9") == {"id": "o999-9", "n": 9}
    # What expired came by catch-up, not by the subscription. The counter follows the
    # last batch's commit, which B's data shows first.
    wait_for(
        lambda: b.status()["catchup_changesets_received"] >= CHANGESETS,
        what=lambda: f"all {CHANGESETS} changesets by catch-up: {b.status()}",
    )
