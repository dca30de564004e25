"""Durable topic subscriptions in both header styles, across a subscriber's absence."""

from __future__ import annotations

import pytest

from tests.broker.clients import wait_until

TOPIC = "/topic/changes"


def activemq(client, port, version="1.2", auto_ack=False):
    c = client(port, version, **{"client-id": "node-1"})
    if auto_ack:  # acknowledge from the listener, before the first MESSAGE can arrive
        c.rec.on_message_hook = c.ack
    sub = {"activemq.subscriptionName": "replication"}
    c.conn.subscribe(TOPIC, id="1", ack="client-individual", headers={**sub, "receipt": "sub"})
    c.wait_receipt("sub")
    return c


def rabbitmq(client, port, version="1.2", auto_ack=False):
    c = client(port, version)
    if auto_ack:
        c.rec.on_message_hook = c.ack
    sub = {"durable": "true", "auto-delete": "false"}
    c.conn.subscribe(TOPIC, id="node-1", ack="client-individual", headers={**sub, "receipt": "sub"})
    c.wait_receipt("sub")
    return c


STYLES = {"activemq": activemq, "rabbitmq": rabbitmq}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_messages_wait_for_the_subscriber_and_unacked_ones_come_back(
    broker, client, style, version
) -> None:
    subscribe = STYLES[style]
    sub = subscribe(client, broker.port, version)
    pub = client(broker.port)
    for i in range(3):
        pub.conn.send(TOPIC, f"m{i}", headers={"persistent": "true"})
    m0, m1, m2 = sub.wait_messages(3)
    sub.ack(m0)
    sub.ack(m2, receipt="acked")
    sub.wait_receipt("acked")
    sub.close()  # m1 is unacknowledged
    wait_until(lambda: broker.stats()["connections"] == 1, what="subscriber gone")
    for i in range(3, 6):
        pub.conn.send(TOPIC, f"m{i}", headers={"persistent": "true"})
    pub.send_sync("/queue/sync", "sync")
    back = subscribe(client, broker.port, version)
    msgs = back.wait_messages(4)
    assert [m.body for m in msgs] == ["m1", "m3", "m4", "m5"]
    assert msgs[0].headers["redelivered"] == "true"
    assert all("redelivered" not in m.headers for m in msgs[1:])
    # ActiveMQ keeps message-id across redelivery; Vesper must not rely on it either way.
    assert msgs[0].headers["message-id"] == m1.headers["message-id"]


def test_rabbitmq_durable_without_auto_delete_false_is_not_kept(broker, client) -> None:
    sub = client(broker.port)
    sub.conn.subscribe(TOPIC, id="x", headers={"durable": "true", "receipt": "r"})
    sub.wait_receipt("r")
    sub.disconnect()
    pub = client(broker.port)
    pub.send_sync(TOPIC, "lost")
    assert broker.stats()["durables"] == {}


def test_activemq_name_needs_client_id(broker, client) -> None:
    c = client(broker.port)
    c.conn.subscribe(TOPIC, id="1", headers={"activemq.subscriptionName": "x"})
    assert c.wait_error().headers["message"] == "durable subscription needs a client-id"


def test_client_id_is_exclusive_while_connected(broker, client) -> None:
    client(broker.port, **{"client-id": "solo"})
    second = client(broker.port, connect=False)
    second.connect(wait=False, **{"client-id": "solo"})
    assert second.wait_error().headers["message"] == "client-id already connected"


def test_client_id_is_free_again_after_disconnect(broker, client) -> None:
    first = client(broker.port, **{"client-id": "again"})
    first.disconnect()
    wait_until(lambda: broker.stats()["connections"] == 0, what="first connection gone")
    client(broker.port, **{"client-id": "again"})


def test_activemq_unsubscribe_with_name_deletes(broker, client) -> None:
    c = activemq(client, broker.port)
    c.conn.unsubscribe(id="1", headers={"receipt": "u1"})
    c.wait_receipt("u1")
    assert list(broker.stats()["durables"]) == ["activemq:node-1:replication"]  # detached only
    c.conn.unsubscribe(
        id="1", headers={"activemq.subscriptionName": "replication", "receipt": "u2"}
    )
    c.wait_receipt("u2")
    assert broker.stats()["durables"] == {}


def test_rabbitmq_unsubscribe_with_durable_deletes(broker, client) -> None:
    c = rabbitmq(client, broker.port)
    c.conn.unsubscribe(id="node-1", headers={"durable": "true", "receipt": "u"})
    c.wait_receipt("u")
    assert broker.stats()["durables"] == {}


def test_resubscribing_to_another_topic_recreates(broker, client) -> None:
    c = activemq(client, broker.port)
    c.close()
    pub = client(broker.port)
    pub.send_sync(TOPIC, "old")
    assert broker.stats()["durables"]["activemq:node-1:replication"] == 1
    again = client(broker.port, **{"client-id": "node-1"})
    again.conn.subscribe(
        "/topic/elsewhere", id="1", headers={"activemq.subscriptionName": "replication"}
    )
    again.send_sync("/topic/elsewhere", "new")
    assert again.wait_messages(1)[0].body == "new"
    assert len(again.messages) == 1


def test_two_rabbitmq_consumers_share_one_durable_queue(broker, client) -> None:
    a = rabbitmq(client, broker.port)
    b = rabbitmq(client, broker.port)
    pub = client(broker.port)
    for i in range(10):
        pub.conn.send(TOPIC, f"m{i}")
    wait_until(lambda: len(a.messages) + len(b.messages) == 10, what="10 deliveries")
    assert len(a.messages) == len(b.messages) == 5


def test_durable_and_plain_subscribers_on_one_topic(broker, client) -> None:
    durable = activemq(client, broker.port)
    plain = client(broker.port)
    plain.conn.subscribe(TOPIC, id="p", headers={"receipt": "r"})
    plain.wait_receipt("r")
    pub = client(broker.port)
    pub.send_sync(TOPIC, "both")
    assert durable.wait_messages(1)[0].body == "both"
    assert plain.wait_messages(1)[0].body == "both"


# -- no-local: a subscriber's own messages stay out of its subscription -----------------


def test_no_local_durable_skips_its_own_client_ids_messages_across_reconnects(
    broker, client
) -> None:
    def node() -> object:
        c = client(broker.port, **{"client-id": "node-1"})
        headers = {"activemq.subscriptionName": "replication", "no-local": "true"}
        c.conn.subscribe(
            TOPIC, id="1", ack="client-individual", headers={**headers, "receipt": "s"}
        )
        c.wait_receipt("s")
        return c

    me = node()
    other = client(broker.port)
    me.send_sync(TOPIC, "mine")
    other.send_sync(TOPIC, "theirs")
    assert [m.body for m in me.wait_messages(1)] == ["theirs"]
    me.ack(me.messages[0], receipt="a")
    me.wait_receipt("a")
    me.close()
    wait_until(lambda: broker.stats()["connections"] == 1, what="subscriber gone")
    # Away: another client's messages are kept for it; a client that takes its
    # client-id meanwhile publishes as it, so those stay out too (it is offline, and
    # a message under its own id is one it does not need).
    other.send_sync(TOPIC, "while away")
    impostor = client(broker.port, **{"client-id": "node-1"})
    impostor.send_sync(TOPIC, "as node-1")
    impostor.close()
    wait_until(lambda: broker.stats()["connections"] == 1, what="impostor gone")
    back = node()
    other.send_sync(TOPIC, "after")
    assert [m.body for m in back.wait_messages(2)] == ["while away", "after"]
    assert [m.body for m in back.messages] == ["while away", "after"]


def test_no_local_only_for_the_subscriber_that_asks(broker, client) -> None:
    quiet = client(broker.port)
    quiet.conn.subscribe(TOPIC, id="q", headers={"no-local": "true", "receipt": "q"})
    quiet.wait_receipt("q")
    everything = client(broker.port)
    everything.conn.subscribe(TOPIC, id="e", headers={"receipt": "e"})
    everything.wait_receipt("e")
    quiet.send_sync(TOPIC, "from quiet")
    everything.send_sync(TOPIC, "from everything")
    assert [m.body for m in everything.wait_messages(2)] == ["from quiet", "from everything"]
    assert [m.body for m in quiet.wait_messages(1)] == ["from everything"]
    assert len(quiet.messages) == 1


def test_no_local_must_be_true_or_false(broker, client) -> None:
    c = client(broker.port)
    c.conn.subscribe(TOPIC, id="x", headers={"no-local": "yes"})
    error = c.wait_error()
    assert "no-local" in error.headers.get("message", "") + error.body
