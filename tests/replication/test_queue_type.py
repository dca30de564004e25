"""replication_queue_type: what a node declares on RabbitMQ, and what it refuses.

The behaviour on a real RabbitMQ cluster (failover with quorum queues, a SIGKILLed
node) is in docs/rabbitmq-cluster.md; these tests pin the headers that produce it.
"""

from __future__ import annotations

from typing import Any

import pytest

from vesper.config import Settings
from vesper.errors import ConfigError
from vesper.replication import wire
from vesper.replication.brokers import BrokerProfile
from vesper.replication.link import StompLink
from vesper.replication.service import ReplicationConfig

REPLICATING: dict[str, object] = {
    "save_history": True,
    "replication_hosts": [("localhost", 61613)],
    "replication_channel": "orders",
}
QUORUM = {"x-queue-type": "quorum"}


def rabbitmq(queue_type: str) -> BrokerProfile:
    return BrokerProfile("rabbitmq", "RabbitMQ/3.10.8", queue_type)


def test_quorum_declares_the_durable_subscription_and_the_node_queue_quorum() -> None:
    profile = rabbitmq("quorum")
    durable = profile.durable_topic_headers("N1", "orders")
    assert (
        durable.items()
        >= {
            "durable": "true",
            "auto-delete": "false",
            "x-queue-name": "orders.N1~changesets",
            **QUORUM,
        }.items()
    )
    assert profile.queue_headers().items() >= QUORUM.items()
    # A SEND to a peer's queue declares it as well: it must name the same type.
    assert profile.send_headers("/queue/orders.N2") == QUORUM


def test_the_live_announcements_queue_stays_classic() -> None:
    # Quorum queues refuse auto-delete, and the announcements queue is auto-deleted.
    headers = rabbitmq("quorum").sync_topic_headers("N1", "orders")
    assert headers == {"x-queue-name": "orders.N1~sync"}


def test_sends_to_topics_carry_no_queue_type() -> None:
    assert rabbitmq("quorum").send_headers("/topic/orders") == {}
    assert rabbitmq("quorum").send_headers("/topic/orders.sync") == {}


def test_classic_declares_no_queue_type_argument() -> None:
    # Queues of nodes from before the setting have no argument; declaring the same
    # queues with one would be a different declaration.
    profile = rabbitmq("classic")
    for headers in (
        profile.durable_topic_headers("N1", "orders"),
        profile.queue_headers(),
        profile.send_headers("/queue/orders.N2"),
    ):
        assert "x-queue-type" not in headers


@pytest.mark.parametrize("name", ["activemq", "vesper", "unknown"])
def test_other_brokers_never_get_a_queue_type(name: str) -> None:
    profile = BrokerProfile(name, "", "quorum")
    for headers in (
        profile.durable_topic_headers("N1", "orders"),
        profile.sync_topic_headers("N1", "orders"),
        profile.queue_headers(),
        profile.send_headers("/queue/orders.N2"),
    ):
        assert "x-queue-type" not in headers


def test_the_setting_defaults_to_classic_and_reaches_the_replication_config() -> None:
    assert Settings().replication_queue_type == "classic"
    settings = Settings.from_mapping({**REPLICATING, "replication_queue_type": "Quorum"})
    assert settings.replication_queue_type == "quorum"
    assert ReplicationConfig.from_settings(settings).queue_type == "quorum"


@pytest.mark.parametrize("value", ["stream", "", None, 1])
def test_a_bad_queue_type_is_one_line_naming_the_variable(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping({**REPLICATING, "replication_queue_type": value})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("replication_queue_type: expected one of 'classic', 'quorum'")


def test_quorum_with_another_named_broker_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping(
            {**REPLICATING, "replication_queue_type": "quorum", "replication_broker": "activemq"}
        )
    assert "replication_queue_type" in str(caught.value)
    assert "'activemq'" in str(caught.value)
    # Named RabbitMQ, or detected from the CONNECTED frame: accepted.
    for broker in ("rabbitmq", None):
        Settings.from_mapping(
            {**REPLICATING, "replication_queue_type": "quorum", "replication_broker": broker}
        )


class _Frame:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def test_the_link_applies_the_queue_type_to_what_it_subscribes_and_sends() -> None:
    link = StompLink(
        ("127.0.0.1", 1),
        "N1",
        generation=1,
        login=None,
        passcode=None,
        heartbeat_ms=0,
        broker=None,
        queue_type="quorum",
        on_message=lambda delivery: None,
        on_receipt=lambda receipt: None,
        on_lost=lambda link: None,
    )
    frames: list[tuple[str, str, dict[str, Any]]] = []

    def subscribe(destination: str, id: str, ack: str, headers: dict[str, Any]) -> None:
        frames.append(("SUBSCRIBE", destination, headers))

    def send(destination: str, body: bytes, content_type: str, headers: dict[str, Any]) -> None:
        frames.append(("SEND", destination, headers))

    # The frames stomp.py would write, recorded instead: no broker is needed.
    link.conn.subscribe = subscribe  # type: ignore[method-assign]
    link.conn.send = send  # type: ignore[method-assign]
    link.on_connected(_Frame({"server": "RabbitMQ/3.10.8"}))
    link.subscribe(wire.CHANGESETS, "orders", "s1", acked=True)
    link.subscribe(wire.ANNOUNCE, "orders", "s2", acked=False)
    link.subscribe(wire.REQUEST, "orders", "s3", acked=True)
    link.send("/queue/orders.N2", b"{}", {"vesper-type": "request"}, receipt="r1")
    link.send("/topic/orders", b"{}", {"vesper-type": "changesets"})
    typed = [(kind, dest) for kind, dest, headers in frames if "x-queue-type" in headers]
    assert typed == [
        ("SUBSCRIBE", "/topic/orders"),
        ("SUBSCRIBE", "/queue/orders.N1"),
        ("SEND", "/queue/orders.N2"),
    ]
    assert frames[3][2]["receipt"] == "r1"
