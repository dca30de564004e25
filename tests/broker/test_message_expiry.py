"""Messages that expire: ActiveMQ's absolute ``expires`` and RabbitMQ's relative
``expiration``, dropped undelivered once past, also from a subscription nobody reads
and from what waits on disk."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.broker.clients import wait_until

TOPIC = "/topic/changes"
SUBSCRIPTION = "activemq:node-1:replication"


def durable(client, port):
    c = client(port, **{"client-id": "node-1"})
    headers = {"activemq.subscriptionName": "replication", "receipt": "sub"}
    c.conn.subscribe(TOPIC, id="1", ack="client-individual", headers=headers)
    c.wait_receipt("sub")
    return c


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.parametrize("stored", [False, True], ids=["memory", "sqlite"])
def test_expired_messages_leave_a_subscription_nobody_reads(
    start_broker, client, tmp_path: Path, stored: bool
) -> None:
    broker = start_broker(data_dir=tmp_path / "data" if stored else None)
    durable(client, broker.port).close()
    wait_until(lambda: broker.stats()["connections"] == 0, what="subscriber gone")
    pub = client(broker.port)
    pub.conn.send(TOPIC, "kept-1", headers={"persistent": "true"})
    # On SQLite, 1.5 MiB is more than an idle subscription keeps in memory: most of
    # these wait on disk only, and expire there.
    payload = "x" * 1024
    for i in range(1500):
        headers = {"persistent": "true"}
        headers["expiration" if i % 2 else "expires"] = "300" if i % 2 else str(now_ms() + 300)
        pub.conn.send(TOPIC, payload, headers=headers)
    pub.conn.send(TOPIC, "kept-2", headers={"persistent": "true", "expires": "0"})
    pub.send_sync("/queue/sync", "sync")
    assert broker.stats()["durables"][SUBSCRIPTION] == 1502
    wait_until(
        lambda: broker.stats()["durables"][SUBSCRIPTION] == 2,
        timeout=15,
        what="the expired messages dropped",
    )
    assert broker.stats()["expired_messages"] == 1500
    back = durable(client, broker.port)
    assert [m.body for m in back.wait_messages(2)] == ["kept-1", "kept-2"]
    back.send_sync("/queue/sync", "sync")
    assert back.bodies() == ["kept-1", "kept-2"]


def test_a_message_past_its_expiry_is_not_delivered(broker, client) -> None:
    sub = client(broker.port)
    sub.conn.subscribe(TOPIC, id="1", ack="auto", headers={"receipt": "sub"})
    sub.wait_receipt("sub")
    pub = client(broker.port)
    pub.conn.send(TOPIC, "late", headers={"expires": str(now_ms() - 1000)})
    pub.conn.send(TOPIC, "never-expires", headers={"expires": "0"})
    pub.conn.send(TOPIC, "fresh", headers={"expiration": "60000"})
    # Deliveries keep their order: once "fresh" is in, "late" would have been too.
    sub.wait_messages(2)
    assert sub.bodies() == ["never-expires", "fresh"]


def test_what_waits_on_disk_expires_after_a_restart(start_broker, client, tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = start_broker(data_dir=data)
    durable(client, broker.port).close()
    pub = client(broker.port)
    for i in range(3):
        pub.conn.send(TOPIC, f"m{i}", headers={"persistent": "true", "expiration": "1500"})
    pub.send_sync("/queue/sync", "sync")
    pub.close()
    broker.stop()
    again = start_broker(data_dir=data)
    assert again.stats()["durables"][SUBSCRIPTION] == 3
    wait_until(
        lambda: again.stats()["durables"][SUBSCRIPTION] == 0,
        timeout=15,
        what="the stored messages expired",
    )


@pytest.mark.parametrize(
    "header", [("expires", "soon"), ("expiration", "-5"), ("expires", "1.5")], ids=str
)
def test_a_malformed_expiry_is_refused_and_nothing_is_stored(
    broker, client, header: tuple[str, str]
) -> None:
    durable(client, broker.port).close()
    pub = client(broker.port)
    pub.conn.send(TOPIC, "m", headers={header[0]: header[1]})
    error = pub.wait_error()
    assert header[0] in error.headers["message"]
    assert broker.stats()["durables"][SUBSCRIPTION] == 0


def test_a_store_made_before_expiry_opens_and_keeps_its_messages(
    start_broker, client, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "broker.sqlite3")
    db.executescript(
        """
        CREATE TABLE mailboxes (
            id INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
            destination TEXT NOT NULL, owner TEXT NOT NULL DEFAULT '',
            last_active REAL NOT NULL DEFAULT 0
        );
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY, mailbox INTEGER NOT NULL, message_id TEXT NOT NULL,
            headers BLOB NOT NULL, body BLOB NOT NULL, redelivered INTEGER NOT NULL
        );
        """
    )
    db.execute("INSERT INTO mailboxes VALUES (1, 'queue', '/queue/old', '/queue/old', '', 0)")
    db.execute("INSERT INTO entries VALUES (1, 1, 'old-1', X'', X'6F6C64', 0)")
    db.commit()
    db.close()
    broker = start_broker(data_dir=data)
    c = client(broker.port)
    c.conn.subscribe("/queue/old", id="1", ack="auto")
    assert [m.body for m in c.wait_messages(1)] == ["old"]
