"""With --data-dir, queues and durable subscriptions survive a broker restart or a kill -9."""

from __future__ import annotations

import pytest

from tests.broker.clients import wait_until
from tests.broker.test_durable import STYLES, TOPIC


def _publish(pub, destination, bodies):
    """Pipelined SENDs with receipts; returns once every receipt has arrived."""
    for body in bodies:
        pub.conn.send(destination, body, headers={"persistent": "true", "receipt": body})
    for body in bodies:
        pub.wait_receipt(body)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_durable_subscription_survives_restart(broker_process, client, tmp_path, style, stop):
    subscribe = STYLES[style]
    broker = broker_process(tmp_path / "data")
    sub = subscribe(client, broker.port)
    pub = client(broker.port)
    _publish(pub, TOPIC, ["before-0", "before-1"])
    first = sub.wait_messages(2)
    sub.ack(first[0], receipt="acked")
    sub.wait_receipt("acked")
    sub.close()  # before-1 stays unacknowledged
    _publish(pub, TOPIC, [f"away-{i}" for i in range(50)])
    pub.close()
    if stop == "sigkill":
        broker.kill()  # every RECEIPT above promised the message was on disk
        broker.start()
    else:
        assert broker.restart() is broker
    back = subscribe(client, broker.port)
    msgs = back.wait_messages(51)
    assert [m.body for m in msgs] == ["before-1"] + [f"away-{i}" for i in range(50)]
    assert msgs[0].headers["redelivered"] == "true"
    for m in msgs:
        back.ack(m, receipt=m.body)
    back.wait_receipt("away-49")
    back.disconnect()
    broker.restart()
    again = subscribe(client, broker.port)
    again.send_sync("/queue/sync", "sync")
    assert again.messages == []  # acknowledged before the restart: gone for good


def test_queue_survives_restart_and_memory_mode_does_not(broker_process, client, tmp_path):
    stored = broker_process(tmp_path / "data")
    memory = broker_process()
    for broker in (stored, memory):
        pub = client(broker.port)
        _publish(pub, "/queue/work", [f"job-{i}" for i in range(20)])
        pub.close()
        broker.restart()
    c = client(stored.port)
    c.conn.subscribe("/queue/work", id="1", ack="client-individual")
    assert [m.body for m in c.wait_messages(20)] == [f"job-{i}" for i in range(20)]
    m = client(memory.port)
    m.conn.subscribe("/queue/work", id="1")
    m.send_sync("/queue/sync", "sync")
    assert m.messages == []


def test_unsubscribed_durable_is_gone_after_restart(broker_process, client, tmp_path):
    broker = broker_process(tmp_path / "data")
    sub = STYLES["rabbitmq"](client, broker.port)
    sub.conn.unsubscribe(id="node-1", headers={"durable": "true", "receipt": "u"})
    sub.wait_receipt("u")
    pub = client(broker.port)
    _publish(pub, TOPIC, ["nobody"])
    broker.kill()
    broker.start()
    back = STYLES["rabbitmq"](client, broker.port)
    back.send_sync("/queue/sync", "sync")
    assert back.messages == []


def test_offline_subscriber_messages_spill_to_disk(start_broker, client, tmp_path):
    """Beyond max_pending_bytes, a stored mailbox keeps messages on disk only, and
    loads them back in order when the subscriber returns."""
    limit = 20_000
    broker = start_broker(data_dir=tmp_path / "data", max_pending_bytes=limit)
    sub = STYLES["activemq"](client, broker.port)
    sub.close()
    pub = client(broker.port)
    body = "x" * 300
    for i in range(2000):
        pub.conn.send(TOPIC, f"{i:05d}{body}", headers={"persistent": "true"})
    pub.send_sync("/queue/sync", "sync")

    def memory_held():
        box = broker.broker.router.durables["activemq:node-1:replication"]
        return box.pending_bytes, box.disk_only

    pending_bytes, disk_only = broker.call(memory_held)
    assert pending_bytes <= limit + 1000
    assert disk_only > 1500
    back = STYLES["activemq"](client, broker.port, auto_ack=True)
    msgs = back.wait_messages(2000, timeout=30)
    assert [m.body[:5] for m in msgs] == [f"{i:05d}" for i in range(2000)]
    wait_until(
        lambda: broker.stats()["durables"]["activemq:node-1:replication"] == 0,
        what="all acknowledged",
    )
