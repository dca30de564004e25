"""Every frame type against the broker, with stomp.py 9 (the client Vesper uses)."""

from __future__ import annotations

import pytest

from tests.broker.clients import wait_until
from vesper import __version__


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_connect_negotiates_each_version(broker, client, version) -> None:
    c = client(broker.port, version)
    (connected,) = c.rec.connected_frames
    assert connected.headers["server"] == f"vesper/{__version__}"
    assert connected.headers.get("version", "1.0") == version
    assert connected.headers["session"]
    c.conn.subscribe("/queue/v", id="1", ack="auto")
    c.send_sync("/queue/v", "hi")
    assert c.wait_messages(1)[0].body == "hi"


def test_unsupported_version_gets_error(broker, raw) -> None:
    r = raw(broker.port)
    r.frame("CONNECT", {"accept-version": "2.0"})
    frames = r.read_until_closed()
    assert frames[0].command == "ERROR"
    assert frames[0].headers["message"] == "unsupported protocol version"


def test_stomp_command_and_host_header(broker, raw) -> None:
    r = raw(broker.port)
    r.frame("STOMP", {"accept-version": "1.1,1.2", "host": "anything"})
    reply = r.read()
    assert reply.command == "CONNECTED"
    assert reply.headers["version"] == "1.2"


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_receipt_for_every_frame_type(broker, client, version) -> None:
    c = client(broker.port, version)
    conn = c.conn
    conn.subscribe("/queue/r", id="s", ack="client-individual", headers={"receipt": "sub"})
    c.wait_receipt("sub")
    conn.send("/queue/r", "one", headers={"receipt": "send1"})
    conn.send("/queue/r", "two", headers={"receipt": "send2"})
    c.wait_receipt("send2")
    one, two = c.wait_messages(2)
    c.ack(one, receipt="ack")
    c.nack(two, receipt="nack", requeue="false")
    conn.begin("tx1", headers={"receipt": "begin"})
    conn.commit("tx1", headers={"receipt": "commit"})
    conn.begin("tx2")
    conn.abort("tx2", headers={"receipt": "abort"})
    conn.unsubscribe(id="s", headers={"receipt": "unsub"})
    for receipt in ("ack", "nack", "begin", "commit", "abort", "unsub"):
        c.wait_receipt(receipt)
    c.disconnect()  # waits for the DISCONNECT receipt
    assert c.rec.errors == []


def test_error_carries_receipt_id_and_closes(broker, client) -> None:
    c = client(broker.port)
    other = client(broker.port)
    other.conn.subscribe("/topic/e", id="1")
    c.conn.send("/nowhere/x", "boom", headers={"receipt": "bad"})
    error = c.wait_error()
    assert error.headers["message"] == "unsupported destination"
    assert error.headers["receipt-id"] == "bad"
    c.wait_disconnected()
    other.send_sync("/topic/e", "still fine")
    assert other.wait_messages(1)[0].body == "still fine"


def test_frame_before_connect_is_refused(broker, raw) -> None:
    r = raw(broker.port)
    r.frame("SEND", {"destination": "/queue/x"}, b"x")
    (error,) = r.read_until_closed()
    assert error.headers["message"] == "not connected"


def test_topic_delivers_to_every_subscriber(broker, client) -> None:
    subs = [client(broker.port) for _ in range(3)]
    for i, s in enumerate(subs):
        s.conn.subscribe("/topic/fan", id=f"s{i}", headers={"receipt": "r"})
        s.wait_receipt("r")
    pub = client(broker.port)
    for i in range(10):
        pub.conn.send("/topic/fan", f"m{i}")
    pub.send_sync("/topic/fan", "end")
    for s in subs:
        s.wait_messages(11)
        assert s.bodies() == [f"m{i}" for i in range(10)] + ["end"]


def test_topic_without_subscribers_drops_and_headers_pass_through(broker, client) -> None:
    pub = client(broker.port)
    pub.send_sync("/topic/none", "lost")
    sub = client(broker.port)
    sub.conn.subscribe("/topic/none", id="1", headers={"receipt": "r"})
    sub.wait_receipt("r")
    pub.send_sync(
        "/topic/none",
        "kept",
        **{
            "clientid": "A",
            "content-type": "application/json",
            "persistent": "true",
            "odd": "a:b\\c",
        },
    )
    (m,) = sub.wait_messages(1)
    assert m.body == "kept"
    assert m.headers["clientid"] == "A"
    assert m.headers["content-type"] == "application/json"
    assert m.headers["odd"] == "a:b\\c"  # escaped on the wire both ways
    assert m.headers["destination"] == "/topic/none"
    assert m.headers["subscription"] == "1"
    assert m.headers["message-id"]


def test_queue_keeps_messages_and_round_robins(broker, client) -> None:
    pub = client(broker.port)
    for i in range(4):
        pub.conn.send("/queue/rr", f"early{i}")
    pub.send_sync("/queue/rr", "early4")
    a = client(broker.port)
    a.conn.subscribe("/queue/rr", id="a", ack="auto")
    a.wait_messages(5)
    assert a.bodies() == [f"early{i}" for i in range(5)]
    b = client(broker.port)
    b.conn.subscribe("/queue/rr", id="b", ack="auto", headers={"receipt": "r"})
    b.wait_receipt("r")
    for i in range(10):
        pub.conn.send("/queue/rr", f"m{i}")
    wait_until(lambda: len(a.messages) + len(b.messages) == 15, what="15 deliveries")
    assert sorted(a.bodies()[5:] + b.bodies()) == sorted(f"m{i}" for i in range(10))
    assert len(b.messages) == 5  # one each, in turn


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_client_individual_and_client_ack_modes(broker, client, version) -> None:
    mode = "client" if version == "1.0" else "client-individual"
    pub = client(broker.port)
    for i in range(5):
        pub.conn.send("/queue/ack", f"m{i}")
    pub.send_sync("/queue/ack", "m5")
    c = client(broker.port, version)
    c.conn.subscribe("/queue/ack", id="s", ack=mode)
    msgs = c.wait_messages(6)
    if mode == "client":
        c.ack(msgs[2], receipt="acked")  # cumulative: m0..m2
    else:
        for m in (msgs[0], msgs[1], msgs[2]):
            c.ack(m, receipt="acked")
    c.wait_receipt("acked")
    c.close()  # without DISCONNECT: m3..m5 come back
    again = client(broker.port, version)
    again.conn.subscribe("/queue/ack", id="s2", ack="auto")
    redelivered = again.wait_messages(3)
    assert [m.body for m in redelivered] == ["m3", "m4", "m5"]
    assert all(m.headers.get("redelivered") == "true" for m in redelivered)


def test_client_mode_ack_is_cumulative(broker, client) -> None:
    c = client(broker.port)
    c.conn.subscribe("/queue/cum", id="s", ack="client")
    for i in range(4):
        c.conn.send("/queue/cum", f"m{i}")
    msgs = c.wait_messages(4)
    c.ack(msgs[2], receipt="r")
    c.wait_receipt("r")
    assert broker.stats()["queues"]["/queue/cum"] == 1
    c.ack(msgs[0])  # already covered by the cumulative ACK
    assert c.wait_error().headers["message"] == "unexpected ACK"


def test_ack_header_is_unique_per_delivery(broker, client) -> None:
    c = client(broker.port)
    c.conn.subscribe("/queue/u1", id="a", ack="client-individual")
    c.conn.subscribe("/queue/u2", id="b", ack="client-individual")
    c.conn.send("/queue/u1", "x")
    c.conn.send("/queue/u2", "x")
    acks = {m.headers["ack"] for m in c.wait_messages(2)}
    assert len(acks) == 2


def test_nack_requeues_or_discards(broker, client) -> None:
    c = client(broker.port)
    c.conn.subscribe("/queue/n", id="s", ack="client-individual")
    c.conn.send("/queue/n", "again")
    (first,) = c.wait_messages(1)
    c.nack(first)
    second = c.wait_messages(2)[1]
    assert second.body == "again" and second.headers["redelivered"] == "true"
    c.nack(second, requeue="false", receipt="gone")
    c.wait_receipt("gone")
    assert broker.stats()["queues"]["/queue/n"] == 0


def test_prefetch_bounds_unacked_messages(broker, client) -> None:
    pub = client(broker.port)
    for i in range(20):
        pub.conn.send("/queue/pf", f"m{i}")
    pub.send_sync("/queue/pf", "m20")
    c = client(broker.port)
    c.conn.subscribe("/queue/pf", id="s", ack="client-individual", headers={"prefetch-count": "5"})
    c.wait_messages(5)
    pub.send_sync("/queue/pf", "nudge")  # a full round trip: nothing more was due
    assert len(c.messages) == 5
    c.ack(c.messages[0])
    c.wait_messages(6)
    assert len(c.messages) == 6


def test_activemq_prefetch_header(broker, client) -> None:
    c = client(broker.port)
    c.conn.subscribe("/queue/apf", id="s", ack="client", headers={"activemq.prefetchSize": "2"})
    for i in range(5):
        c.conn.send("/queue/apf", f"m{i}")
    c.send_sync("/queue/other", "sync")
    c.wait_messages(2)
    assert len(c.messages) == 2


def test_transactions_commit_and_abort(broker, client) -> None:
    c = client(broker.port)
    c.conn.subscribe("/queue/tx", id="s", ack="client-individual")
    c.conn.begin("t1")
    c.conn.send("/queue/tx", "in-tx", headers={"transaction": "t1"})
    c.send_sync("/queue/other", "sync")
    assert c.messages == []
    c.conn.commit("t1")
    (m,) = c.wait_messages(1)
    c.conn.begin("t2")
    c.ack(m, transaction="t2")
    c.conn.send("/queue/tx", "aborted", headers={"transaction": "t2"})
    c.conn.abort("t2", headers={"receipt": "ab"})
    c.wait_receipt("ab")
    assert broker.stats()["queues"]["/queue/tx"] == 1  # the ACK was rolled back too
    c.conn.begin("t3")
    c.ack(m, transaction="t3")
    c.conn.commit("t3", headers={"receipt": "cm"})
    c.wait_receipt("cm")
    assert broker.stats()["queues"]["/queue/tx"] == 0
    assert [x.body for x in c.messages] == ["in-tx"]


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([("COMMIT", {"transaction": "nope"})], "unknown transaction"),
        (
            [("BEGIN", {"transaction": "a"}), ("BEGIN", {"transaction": "a"})],
            "duplicate transaction",
        ),
        (
            [
                ("SUBSCRIBE", {"destination": "/queue/a", "id": "1"}),
                ("SUBSCRIBE", {"destination": "/queue/b", "id": "1"}),
            ],
            "duplicate subscription",
        ),
        (
            [("SUBSCRIBE", {"destination": "/queue/a", "id": "1", "ack": "sometimes"})],
            "bad ack mode",
        ),
        ([("UNSUBSCRIBE", {"id": "9"})], "unknown subscription"),
        ([("ACK", {"id": "1-1"})], "unexpected ACK"),
        ([("SUBSCRIBE", {"destination": "/queue/a"})], "missing id"),
        ([("CONNECT", {"accept-version": "1.2"})], "already connected"),
    ],
)
def test_protocol_misuse_gets_error(broker, raw, frames, message) -> None:
    r = raw(broker.port)
    r.connect()
    for command, headers in frames:
        r.frame(command, headers)
    replies = r.read_until_closed()
    assert replies[-1].command == "ERROR"
    assert replies[-1].headers["message"] == message


def test_disconnect_receipt_comes_last(broker, raw) -> None:
    r = raw(broker.port)
    r.connect()
    r.frame("SEND", {"destination": "/queue/d", "receipt": "s"}, b"x")
    r.frame("DISCONNECT", {"receipt": "bye"})
    r.frame("SEND", {"destination": "/queue/d"}, b"ignored after DISCONNECT")
    frames = r.read_until_closed()
    assert [f.headers["receipt-id"] for f in frames] == ["s", "bye"]
    assert broker.stats()["queues"]["/queue/d"] == 1


def test_stomp_10_without_ids(broker, raw) -> None:
    r = raw(broker.port)
    r.frame("CONNECT", {"login": "x", "passcode": "y"})
    connected = r.read()
    assert connected.command == "CONNECTED" and "version" not in connected.headers
    r.frame("SUBSCRIBE", {"destination": "/queue/old", "ack": "client"})
    r.frame("SEND", {"destination": "/queue/old"}, b"a:b")
    m = r.read()
    assert m.headers["subscription"] == "/queue/old" and "ack" not in m.headers
    r.frame("ACK", {"message-id": m.headers["message-id"], "receipt": "a"})
    assert r.read().headers["receipt-id"] == "a"
    r.frame("UNSUBSCRIBE", {"destination": "/queue/old", "receipt": "u"})
    assert r.read().headers["receipt-id"] == "u"
    assert broker.stats()["queues"]["/queue/old"] == 0
