"""Subscriptions per connection, and durable subscriptions nobody comes back for."""

from __future__ import annotations

import contextlib
import sqlite3
import time

from tests.broker.clients import wait_until
from tests.broker.test_durable import STYLES, TOPIC
from vesper.broker.expiry import DurableExpiry


def test_subscription_flood_hits_the_cap(start_broker, raw, client, caplog) -> None:
    broker = start_broker(max_subscriptions_per_connection=50)
    r = raw(broker.port)
    r.connect()
    for i in range(200):  # pipelined, as a hostile client would
        r.frame("SUBSCRIBE", {"destination": f"/topic/t{i}", "id": str(i), "receipt": str(i)})
    frames = r.read_until_closed()
    assert [f.headers["receipt-id"] for f in frames[:-1]] == [str(i) for i in range(50)]
    assert frames[-1].command == "ERROR"
    assert frames[-1].headers["message"] == "too many subscriptions"
    assert "--max-subscriptions-per-connection" in frames[-1].body.decode()
    assert any(
        r.levelname == "WARNING" and "too many subscriptions" in r.getMessage()
        for r in caplog.records
    )
    r.close()
    wait_until(lambda: broker.stats()["subscriptions"] == 0, what="flood's subscriptions gone")
    # The cap counts what is open: unsubscribing frees room.
    ok = raw(broker.port)
    ok.connect()
    for round_ in range(3):
        for i in range(50):
            ok.frame("SUBSCRIBE", {"destination": "/topic/x", "id": f"{round_}-{i}"})
        for i in range(50):
            ok.frame("UNSUBSCRIBE", {"id": f"{round_}-{i}"})
    ok.frame("SEND", {"destination": "/topic/x", "receipt": "alive"}, b"x")
    assert ok.read().headers["receipt-id"] == "alive"


def test_durable_flood_is_capped_per_connection(start_broker, raw, tmp_path) -> None:
    broker = start_broker(data_dir=tmp_path / "d", max_subscriptions_per_connection=10)
    r = raw(broker.port)
    r.connect()
    for i in range(100):
        headers = {"destination": TOPIC, "id": f"d{i}", "durable": "true", "auto-delete": "false"}
        r.frame("SUBSCRIBE", headers)
    assert r.read_until_closed()[-1].headers["message"] == "too many subscriptions"
    assert len(broker.stats()["durables"]) == 10


def test_inactive_durable_subscription_expires(start_broker, client, tmp_path, caplog) -> None:
    broker = start_broker(data_dir=tmp_path / "d", durable_expiry=0.5)
    away = STYLES["rabbitmq"](client, broker.port)
    away.close()
    stays = client(broker.port)
    stays.conn.subscribe(
        TOPIC, id="present", headers={"durable": "true", "auto-delete": "false", "receipt": "r"}
    )
    stays.wait_receipt("r")
    pub = client(broker.port)
    pub.send_sync(TOPIC, "kept for nobody")
    wait_until(
        lambda: "rabbitmq:node-1@/topic/changes" not in broker.stats()["durables"],
        what="the abandoned durable subscription expired",
    )
    assert broker.stats()["expired_durables"] == 1
    assert any(
        r.levelname == "WARNING"
        and "rabbitmq:node-1@/topic/changes" in r.getMessage()
        and "--durable-expiry" in r.getMessage()
        for r in caplog.records
    )
    # The one with a consumer stays, however long it is connected.
    deadline = time.monotonic() + 1.5  # three expiry periods
    wait_until(lambda: time.monotonic() > deadline, what="three expiry periods")
    assert "rabbitmq:present@/topic/changes" in broker.stats()["durables"]
    assert stays.wait_messages(1)[0].body == "kept for nobody"


def last_active(db_path, name: str) -> float:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        row = db.execute("SELECT last_active FROM mailboxes WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def test_last_activity_is_stored_and_expiry_runs_at_start(broker_process, client, tmp_path):
    data = tmp_path / "d"
    broker = broker_process(data, args=("--durable-expiry", "1h"))
    name = "rabbitmq:node-1@/topic/changes"
    sub = STYLES["rabbitmq"](client, broker.port)
    sub.close()
    wait_until(lambda: broker.status()["connections"] == 1, what="subscriber gone")
    assert broker.stop() == 0
    db = data / "broker.sqlite3"
    assert abs(last_active(db, name) - time.time()) < 30  # written when the consumer left
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE mailboxes SET last_active = ?", (time.time() - 7200,))
        conn.commit()
    broker.start()  # two hours idle, expiry one hour: deleted at start
    assert name not in broker.status()["durables"]
    assert "over --durable-expiry 3600 s: deleted" in broker.log_text()
    assert last_active(db, name) is None


def test_expiry_zero_never_deletes(start_broker, client) -> None:
    broker = start_broker(durable_expiry=0)
    sub = STYLES["activemq"](client, broker.port)
    sub.close()
    expiry = DurableExpiry(broker.broker.router, 0)
    assert not expiry.enabled
    assert broker.call(lambda: expiry.check(time.time() + 10**9)) == []
    assert "activemq:node-1:replication" in broker.stats()["durables"]
