"""Per-user rights on destinations, and durable subscriptions that belong to their
creator. Every check is attacked the way a hostile (authenticated) client would."""

from __future__ import annotations

import json

import pytest

from tests.broker.clients import make_users, wait_until
from vesper.broker import ControlError
from vesper.broker.control import broker_status, send_control
from vesper.broker.permissions import Permissions

CHANNEL = "orders"


def node(branch: str) -> dict:
    """The rights a Vesper node of branch ``branch`` needs on channel ``orders``."""
    return {
        "passcode": f"pw-{branch}",
        "read": ["/topic/orders", "/topic/orders.*", f"/queue/orders.{branch}"],
        "write": ["/topic/orders", "/topic/orders.*", "/queue/orders.*"],
    }


USERS = {
    "node-a": node("a"),
    "node-b": node("b"),
    "reader": {"passcode": "pw-reader", "read": ["/topic/orders"]},
    "writer": {"passcode": "pw-writer", "write": ["/topic/orders"]},
    "admin": {
        "passcode": "pw-admin",
        "read": ["/**"],
        "write": ["/**"],
        "admin": ["/topic/*", "/vesper-control/*"],
    },
}


@pytest.fixture(scope="module")
def users_path(tmp_path_factory):
    return make_users(tmp_path_factory.mktemp("users") / "users.toml", USERS)


@pytest.fixture
def secure(start_broker, users_path):
    return start_broker(users=users_path, control=True)


def login(client, broker, name, **headers):
    return client(broker.port, login=name, passcode=USERS[name]["passcode"], **headers)


def denied(c, fragment: str) -> str:
    error = c.wait_error()
    assert error.headers["message"] == "access denied"
    assert fragment in error.body, error.body
    c.wait_disconnected()
    return error.body


def warned(caplog, *words: str) -> None:
    assert any(
        r.levelname == "WARNING" and all(w in r.getMessage() for w in words) for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    ("pattern", "destination", "matches"),
    [
        ("/topic/orders", "/topic/orders", True),
        ("/topic/orders", "/topic/orders.sync", False),
        ("/topic/orders", "/topic/ordersX", False),
        ("/topic/orders.*", "/topic/orders.sync", True),
        ("/topic/orders.*", "/topic/orders", False),
        ("/topic/orders.*", "/topic/orders.a.b", True),
        ("/topic/orders.*", "/topic/orders./x", False),
        ("/queue/orders.*", "/queue/orders.N1", True),
        ("/topic/*", "/topic/anything.at.all", True),
        ("/topic/*", "/queue/x", False),
        ("/**", "/vesper-control/faults", True),
        ("/topic/a.b", "/topic/aXb", False),  # . is literal
        ("/topic/(x)+", "/topic/(x)+", True),  # so is every regex character
        ("/topic/(x)+", "/topic/xx", False),
    ],
)
def test_pattern_semantics(pattern, destination, matches) -> None:
    assert Permissions(read=(pattern,)).allows("read", destination) is matches
    assert not Permissions(write=(pattern,)).allows("read", destination)


def test_reader_cannot_publish(secure, client, caplog) -> None:
    sub = login(client, secure, "reader")
    sub.conn.subscribe("/topic/orders", id="1", headers={"receipt": "s"})
    sub.wait_receipt("s")
    hostile = login(client, secure, "reader")
    hostile.conn.send("/topic/orders", "forged")
    body = denied(hostile, "user 'reader' may not send to '/topic/orders'")
    assert "write list" in body
    warned(caplog, "'reader'", "/topic/orders")
    login(client, secure, "writer").send_sync("/topic/orders", "real")
    assert sub.wait_messages(1)[0].body == "real"
    assert sub.bodies() == ["real"]


def test_writer_cannot_subscribe(secure, client, caplog) -> None:
    c = login(client, secure, "writer")
    c.conn.subscribe("/topic/orders", id="1")
    denied(c, "user 'writer' may not subscribe to '/topic/orders'")
    warned(caplog, "'writer'", "/topic/orders")


def test_a_node_cannot_read_another_nodes_queue_but_can_answer_it(secure, client) -> None:
    a = login(client, secure, "node-a")
    a.send_sync("/queue/orders.b", "catch-up answer for b")
    a.conn.subscribe("/queue/orders.b", id="steal")
    denied(a, "may not subscribe to '/queue/orders.b'")
    b = login(client, secure, "node-b")
    b.conn.subscribe("/queue/orders.b", id="mine")
    assert b.wait_messages(1)[0].body == "catch-up answer for b"


def test_no_right_outside_the_channel(secure, client) -> None:
    a = login(client, secure, "node-a")
    a.conn.send("/topic/payroll", "x")
    denied(a, "may not send to '/topic/payroll'")


def test_a_transactional_send_is_checked_when_sent(secure, client) -> None:
    c = login(client, secure, "reader")
    c.conn.begin("t")
    c.conn.send("/topic/orders", "forged", headers={"transaction": "t"})
    denied(c, "may not send to")


def rabbit_durable(c, receipt="s", destination="/topic/orders", sub_id="node"):
    headers = {"durable": "true", "auto-delete": "false", "receipt": receipt}
    c.conn.subscribe(destination, id=sub_id, ack="client-individual", headers=headers)


def test_durable_subscription_cannot_be_resumed_or_drained_by_another_user(
    secure, client, caplog
) -> None:
    owner = login(client, secure, "node-a")
    rabbit_durable(owner)
    owner.wait_receipt("s")
    owner.close()
    wait_until(lambda: secure.stats()["connections"] == 0, what="owner gone")
    login(client, secure, "node-b").send_sync("/topic/orders", "for node-a only")
    thief = login(client, secure, "node-b")  # node-b may read /topic/orders itself
    rabbit_durable(thief)
    body = denied(thief, "belongs to user 'node-a'")
    assert "may not resume it" in body
    warned(caplog, "'node-b'", "rabbitmq:node@/topic/orders")
    # While the owner is connected, joining its queue (RabbitMQ's round robin) would
    # take half of its messages: refused the same way.
    back = login(client, secure, "node-a")
    rabbit_durable(back, "again")
    back.wait_receipt("again")
    assert back.wait_messages(1)[0].body == "for node-a only"
    sharer = login(client, secure, "node-b")
    rabbit_durable(sharer)
    denied(sharer, "belongs to user 'node-a'")
    assert secure.stats()["durables"]["rabbitmq:node@/topic/orders"] == 1  # unacked, kept


def test_resubscribing_another_users_durable_elsewhere_cannot_delete_it(secure, client):
    owner = login(client, secure, "node-a")
    rabbit_durable(owner, sub_id="n")
    owner.wait_receipt("s")
    owner.close()
    hostile = login(client, secure, "admin")  # admin may delete, but not take over
    hostile.conn.subscribe(
        "/topic/other",
        id="n",
        headers={"durable": "true", "auto-delete": "false", "x-queue-name": "n@/topic/orders"},
    )
    denied(hostile, "belongs to user 'node-a'")
    assert "rabbitmq:n@/topic/orders" in secure.stats()["durables"]


def test_only_the_owner_or_an_admin_deletes_a_durable(secure, client, caplog) -> None:
    owner = login(client, secure, "node-a")
    rabbit_durable(owner)
    owner.wait_receipt("s")
    owner.close()
    hostile = login(client, secure, "node-b")
    hostile.conn.unsubscribe(id="node", headers={"durable": "true", "destination": "/topic/orders"})
    denied(hostile, "may not delete it")
    warned(caplog, "'node-b'", "may not delete")
    assert "rabbitmq:node@/topic/orders" in secure.stats()["durables"]
    admin = login(client, secure, "admin")
    admin.conn.unsubscribe(
        id="node", headers={"durable": "true", "destination": "/topic/orders", "receipt": "u"}
    )
    admin.wait_receipt("u")
    assert secure.stats()["durables"] == {}
    mine = login(client, secure, "node-b")
    rabbit_durable(mine, sub_id="b")
    mine.wait_receipt("s")
    mine.conn.unsubscribe(id="b", headers={"durable": "true", "receipt": "u"})
    mine.wait_receipt("u")
    assert secure.stats()["durables"] == {}


def test_activemq_client_id_of_another_users_durable_cannot_be_taken(secure, client) -> None:
    owner = login(client, secure, "node-a", **{"client-id": "vesper-a"})
    owner.conn.subscribe(
        "/topic/orders",
        id="1",
        headers={"activemq.subscriptionName": "repl", "receipt": "s"},
    )
    owner.wait_receipt("s")
    owner.close()
    wait_until(lambda: secure.stats()["connections"] == 0, what="owner gone")
    squatter = client(secure.port, connect=False)
    squatter.connect(wait=False, login="node-b", passcode="pw-b", **{"client-id": "vesper-a"})
    denied(squatter, "client-id 'vesper-a' holds durable subscriptions of another user")
    # ... so the owner can always come back; a client-id that merely shares a prefix
    # (here "vesper-a:repl", which would collide without escaping) is someone else's.
    login(client, secure, "node-b", **{"client-id": "vesper-a:repl"}).close()
    back = login(client, secure, "node-a", **{"client-id": "vesper-a"})
    back.conn.subscribe(
        "/topic/orders", id="1", headers={"activemq.subscriptionName": "repl", "receipt": "r"}
    )
    back.wait_receipt("r")


def test_control_and_status_need_admin(secure, client, caplog) -> None:
    with pytest.raises(ControlError, match="access denied"):
        send_control("127.0.0.1", secure.port, {"drop": 1.0}, login="node-a", passcode="pw-a")
    assert secure.faults.settings.drop == 0
    warned(caplog, "'node-a'", "/vesper-control/faults")
    with pytest.raises(ControlError, match="access denied"):
        broker_status("127.0.0.1", secure.port, login="node-a", passcode="pw-a")
    send_control("127.0.0.1", secure.port, {"drop": 0.5}, login="admin", passcode="pw-admin")
    assert secure.faults.settings.drop == 0.5
    status = broker_status("127.0.0.1", secure.port, login="admin", passcode="pw-admin")
    assert status["memory"]["limit"] == 256 * 1024 * 1024
    assert status["connections"] >= 1


def test_status_refreshes_on_send(secure, client) -> None:
    admin = login(client, secure, "admin")
    admin.conn.subscribe("/vesper-control/status", id="st")
    first = json.loads(admin.wait_messages(1)[0].body)
    admin.conn.send("/vesper-control/status", "")
    second = json.loads(admin.wait_messages(2)[1].body)
    assert first.keys() == second.keys() and "memory" in second
    admin.conn.subscribe("/vesper-control/status", id="st2", ack="client")
    assert admin.wait_error().headers["message"] == "bad ack mode"


def test_broker_process_with_users_logs_in_for_control(broker_process, users_path) -> None:
    broker = broker_process(users=users_path, control_login=("admin", "pw-admin"))
    broker.set_faults(duplicate=0.5)
    assert broker.status()["memory"]["used"] == 0
    broker.reset_faults()
    anonymous = broker_process(users=users_path)  # no control_login: refused
    with pytest.raises(ControlError, match="authentication failed"):
        anonymous.status()
