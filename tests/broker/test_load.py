"""Many connections and pipelined load (coilmq's failure modes)."""

from __future__ import annotations

import pytest

from tests.broker.clients import wait_until

CONNECTIONS = 200
PIPELINED = 20_000


def test_200_concurrent_connections(broker, raw, client) -> None:
    conns = [raw(broker.port) for _ in range(CONNECTIONS)]
    for r in conns:  # everything pipelined before any reply is read
        r.frame("CONNECT", {"accept-version": "1.2", "host": "/"})
        r.frame("SUBSCRIBE", {"destination": "/topic/many", "id": "t", "receipt": "sub"})
    for r in conns:
        assert r.read().command == "CONNECTED"
        assert r.read().headers["receipt-id"] == "sub"
    assert broker.stats()["connections"] == CONNECTIONS
    for i, r in enumerate(conns):
        r.frame("SEND", {"destination": "/queue/many"}, f"from {i}".encode())
    pub = client(broker.port)
    pub.send_sync("/topic/many", "to all")
    for r in conns:
        m = r.read()
        assert (m.command, m.body) == ("MESSAGE", b"to all")
    sink = client(broker.port)
    sink.conn.subscribe("/queue/many", id="q")
    sink.wait_messages(CONNECTIONS)
    assert sorted(sink.bodies()) == sorted(f"from {i}" for i in range(CONNECTIONS))


@pytest.mark.parametrize("data_dir", [False, True], ids=["memory", "sqlite"])
def test_20000_pipelined_sends_from_one_stomp_py_connection(
    broker_process, client, tmp_path, data_dir
) -> None:
    broker = broker_process(tmp_path / "data" if data_dir else None)
    sub = client(broker.port, **{"client-id": "sub"})
    sub.rec.on_message_hook = sub.ack
    sub.conn.subscribe(
        "/topic/load",
        id="1",
        ack="client-individual",
        headers={"activemq.subscriptionName": "load", "receipt": "s"},
    )
    sub.wait_receipt("s")
    pub = client(broker.port)
    body = "p" * 200
    for i in range(PIPELINED - 1):
        pub.conn.send("/topic/load", f"{i:05d}{body}", headers={"persistent": "true"})
    pub.conn.send("/topic/load", f"{PIPELINED - 1:05d}{body}", headers={"receipt": "last"})
    pub.wait_receipt("last", timeout=60)
    msgs = sub.wait_messages(PIPELINED, timeout=60)
    assert [int(m.body[:5]) for m in msgs] == list(range(PIPELINED))
    assert not pub.rec.errors and not sub.rec.errors
    wait_until(lambda: pub.conn.is_connected(), what="publisher still connected")
