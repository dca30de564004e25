"""Heart-beating in both directions, and what happens when either side goes silent."""

from __future__ import annotations

import os
import signal
import time

from tests.broker.clients import wait_until


def test_broker_sends_heartbeats_at_the_negotiated_rate(broker, raw) -> None:
    r = raw(broker.port)
    connected = r.connect(**{"heart-beat": "0,150"})
    assert connected.headers["heart-beat"] == "150,0"
    start = time.monotonic()
    r.wait_heartbeats(4, timeout=5)
    assert time.monotonic() - start >= 0.3  # sent a little early, never late


def test_heartbeat_floor(broker, raw) -> None:
    r = raw(broker.port)
    assert r.connect(**{"heart-beat": "5,5"}).headers["heart-beat"] == "100,100"


def test_silent_client_is_dropped_and_its_messages_redelivered(broker, raw, client) -> None:
    pub = client(broker.port)
    r = raw(broker.port)
    r.connect(**{"heart-beat": "500,0", "client-id": "quiet"})  # promises a beat per 500 ms
    start = time.monotonic()
    r.frame(
        "SUBSCRIBE",
        {"destination": "/queue/hb", "id": "1", "ack": "client-individual", "receipt": "s"},
    )  # ... and this is the last thing it ever sends
    assert r.read().command == "RECEIPT"
    pub.send_sync("/queue/hb", "unacked")
    assert r.read().body == b"unacked"
    r.read_until_closed(timeout=10)
    # Dropped after twice the promised interval of silence, checked every half of that.
    assert 0.9 < time.monotonic() - start < 5
    other = client(broker.port)
    other.conn.subscribe("/queue/hb", id="1")
    (m,) = other.wait_messages(1)
    assert m.body == "unacked" and m.headers["redelivered"] == "true"
    client(broker.port, **{"client-id": "quiet"})  # the client-id was released


def test_heartbeating_stomp_py_client_stays_connected(broker, client) -> None:
    c = client(broker.port, heartbeats=(500, 500))
    assert c.rec.connected_frames[0].headers["heart-beat"] == "500,500"
    c.conn.subscribe("/queue/idle", id="1", headers={"receipt": "r"})
    c.wait_receipt("r")
    deadline = time.monotonic() + 2.0  # four heart-beat intervals of silence otherwise
    wait_until(lambda: time.monotonic() > deadline, what="idle time")
    assert c.rec.heartbeat_timeouts == 0 and c.rec.disconnects == 0
    c.send_sync("/queue/idle", "alive")
    assert c.wait_messages(1)[0].body == "alive"


def test_stomp_py_notices_a_frozen_broker(broker_process, client) -> None:
    broker = broker_process()
    c = client(broker.port, heartbeats=(200, 200))
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        c.rec.wait(lambda: c.rec.heartbeat_timeouts, 10, "heart-beat timeout")
    finally:
        os.kill(broker.pid, signal.SIGCONT)
