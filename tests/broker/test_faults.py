"""Fault injection, from Python in-process and through the control channel."""

from __future__ import annotations

import time

import pytest

from tests.broker.clients import wait_until
from vesper.broker import BrokerConfigError, ControlError, FaultSettings
from vesper.broker.control import send_control


def durable_sub(client, port, version="1.2"):
    c = client(port, version, **{"client-id": "f"})
    c.rec.on_message_hook = c.ack
    c.conn.subscribe(
        "/topic/f",
        id="1",
        ack="client-individual",
        headers={"activemq.subscriptionName": "f", "receipt": "s"},
    )
    c.wait_receipt("s")
    return c


def test_drop_all_counts_as_consumed(broker, client) -> None:
    broker.faults.set(drop=1.0)
    sub = durable_sub(client, broker.port)
    sub.send_sync("/topic/f", "gone")
    sub.send_sync("/topic/f", "gone too")
    assert sub.messages == []
    assert broker.stats()["durables"]["activemq:f:f"] == 0
    broker.faults.reset()
    sub.send_sync("/topic/f", "back")
    assert sub.wait_messages(1)[0].body == "back"


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_duplicates_need_and_accept_one_ack_each(broker, client, version) -> None:
    broker.faults.set(duplicate=1.0)
    sub = durable_sub(client, broker.port, version)
    for i in range(3):
        sub.conn.send("/topic/f", f"m{i}")
    msgs = sub.wait_messages(6)
    assert [m.body for m in msgs] == ["m0", "m0", "m1", "m1", "m2", "m2"]
    sub.send_sync("/queue/sync", "sync")  # every ACK above was accepted
    assert not sub.rec.errors
    wait_until(lambda: broker.stats()["durables"]["activemq:f:f"] == 0, what="all acked")


def test_delay_holds_deliveries_back(broker, client) -> None:
    broker.faults.set(delay=1.0, delay_ms=300)
    sub = durable_sub(client, broker.port)
    start = time.monotonic()
    sub.conn.send("/topic/f", "late")
    sub.wait_messages(1)
    assert time.monotonic() - start >= 0.29


def test_pause_and_resume(broker, client) -> None:
    sub = durable_sub(client, broker.port)
    broker.faults.pause()
    for i in range(5):
        sub.conn.send("/topic/f", f"m{i}")
    sub.send_sync("/queue/sync", "sync")
    assert sub.messages == []
    broker.faults.resume()
    assert [m.body for m in sub.wait_messages(5)] == [f"m{i}" for i in range(5)]


def test_drop_fraction_is_roughly_honoured(start_broker, client) -> None:
    broker = start_broker(faults=FaultSettings(drop=0.3, seed=7))
    sub = durable_sub(client, broker.port)
    for i in range(999):
        sub.conn.send("/topic/f", f"m{i}")
    sub.send_sync("/topic/f", "last")
    wait_until(lambda: broker.stats()["durables"]["activemq:f:f"] == 0, what="all settled")
    assert 600 < len(sub.messages) < 800


def test_bad_fault_settings_are_refused(broker) -> None:
    with pytest.raises(BrokerConfigError, match="drop"):
        broker.faults.set(drop=1.5)


def test_control_channel_steers_a_subprocess(broker_process, client) -> None:
    broker = broker_process()
    sub = durable_sub(client, broker.port)
    broker.set_faults(drop=1.0)
    sub.send_sync("/topic/f", "dropped")
    broker.reset_faults()
    sub.send_sync("/topic/f", "kept")
    assert [m.body for m in sub.wait_messages(1)] == ["kept"]
    broker.pause()
    sub.send_sync("/topic/f", "held")
    assert len(sub.messages) == 1
    broker.resume()
    sub.wait_messages(2)
    broker.disconnect_clients()
    sub.wait_disconnected()
    with pytest.raises(ControlError, match="unknown fault setting"):
        broker.set_faults(lose=0.5)
    with pytest.raises(ControlError, match="must be within"):
        broker.set_faults(drop=2)


def test_control_channel_is_off_by_default(broker) -> None:
    with pytest.raises(ControlError, match="control channel disabled"):
        send_control(broker.host, broker.port, {"drop": 0.5})
    assert broker.faults.settings.drop == 0


def test_fault_flags_on_the_command_line(broker_process, client) -> None:
    broker = broker_process(args=("--duplicate", "1", "--fault-seed", "1"))
    sub = durable_sub(client, broker.port)
    sub.send_sync("/topic/f", "twice")
    assert [m.body for m in sub.wait_messages(2)] == ["twice", "twice"]


def test_disconnect_clients_in_process(broker, client) -> None:
    a = client(broker.port, **{"client-id": "a"})
    b = client(broker.port, **{"client-id": "b"})
    assert broker.disconnect_clients("a") == 1
    a.wait_disconnected()
    b.send_sync("/queue/x", "b is still connected")
