"""What the broker does for each client command.

Each handler takes the connection and the frame; it raises ProtocolError for anything
the client got wrong (the connection then sends ERROR and closes). RECEIPTs are sent
by the caller once a handler succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vesper import __version__
from vesper.broker import durable
from vesper.broker.config import MIN_HEARTBEAT_MS
from vesper.broker.control import CONTROL_PREFIX, handle_control
from vesper.broker.destinations import QUEUE_PREFIX, check_destination
from vesper.broker.errors import ProtocolError
from vesper.broker.frames import Frame, encode_frame
from vesper.broker.message import Message
from vesper.broker.subscription import ACK_MODES, Subscription

if TYPE_CHECKING:
    from vesper.broker.connection import StompConnection

SUPPORTED_VERSIONS = ("1.2", "1.1", "1.0")
PREFETCH_HEADERS = ("activemq.prefetchSize", "prefetch-count")


def _required(frame: Frame, name: str) -> str:
    value = frame.headers.get(name)
    if value is None or value == "":
        raise ProtocolError(f"missing {name}", f"{frame.command} needs a {name} header")
    return value


def _heartbeat(value: str | None) -> tuple[int, int]:
    if not value:
        return 0, 0
    try:
        cx, cy = (int(v) for v in value.split(","))
    except ValueError:
        raise ProtocolError("bad heart-beat", f"heart-beat {value!r} is not x,y") from None
    if cx < 0 or cy < 0:
        raise ProtocolError("bad heart-beat", f"heart-beat {value!r} is negative")
    return cx, cy


def on_connect(conn: StompConnection, frame: Frame) -> None:
    if conn.connected:
        raise ProtocolError("already connected", "a second CONNECT on one connection")
    h = frame.headers
    broker = conn.broker
    accept = h.get("accept-version")
    if accept is None:
        version = "1.0"
    else:
        offered = {v.strip() for v in accept.split(",")}
        version = next((v for v in SUPPORTED_VERSIONS if v in offered), "")
        if not version:
            raise ProtocolError(
                "unsupported protocol version",
                f"accept-version {accept!r}; this broker speaks 1.0,1.1,1.2",
            )
    if broker.users is not None and not broker.users.check(h.get("login"), h.get("passcode")):
        raise ProtocolError(
            "authentication failed", f"login {h.get('login')!r} or its passcode is wrong"
        )
    cx, cy = _heartbeat(h.get("heart-beat")) if version != "1.0" else (0, 0)
    client_id = h.get("client-id") or None
    if client_id is not None:
        if client_id in broker.client_ids:
            # ActiveMQ's rule: one live connection per client-id.
            raise ProtocolError("client-id already connected", f"client-id {client_id!r} is in use")
        broker.client_ids[client_id] = conn
        conn.client_id = client_id
    conn.version = conn.parser.version = version
    conn.connected = True
    conn.session = broker.new_session_id()
    # Mirror the client (as ActiveMQ and RabbitMQ do), with a floor so it cannot make
    # the broker spin: we beat as often as it asks, and expect what it offers.
    send_ms = max(cy, MIN_HEARTBEAT_MS) if cy else 0
    expect_ms = max(cx, MIN_HEARTBEAT_MS) if cx else 0
    headers = [("server", f"vesper/{__version__}"), ("session", conn.session)]
    if accept is not None:
        headers = [("version", version), *headers, ("heart-beat", f"{send_ms},{expect_ms}")]
    conn.write(encode_frame("CONNECTED", headers))
    conn.start_heartbeats(send_ms, expect_ms)


def on_send(conn: StompConnection, frame: Frame) -> None:
    destination = _required(frame, "destination")
    if not destination.startswith(CONTROL_PREFIX):
        check_destination(destination)
    tx = frame.headers.get("transaction")
    if tx is not None:
        _transaction(conn, tx).append(frame)
        return
    publish(conn, frame)


def publish(conn: StompConnection, frame: Frame) -> None:
    destination = frame.headers["destination"]
    broker = conn.broker
    if destination.startswith(CONTROL_PREFIX):
        handle_control(conn, frame)
        return
    message = Message.from_send(frame, broker.new_message_id())
    for box in broker.router.route(message):
        # A client consuming the full mailbox itself must keep being read: its ACKs
        # are what drains the mailbox.
        if not any(c.connection is conn for c in box.consumers):
            box.block(conn)
            conn.block_on(box)
    store = broker.store
    if store.persistent and store.over_limit() and conn.block_on(store):
        store.when_drained(lambda: conn.unblock(store))


def on_subscribe(conn: StompConnection, frame: Frame) -> None:
    h = frame.headers
    destination = check_destination(h.get("destination"))
    sub_id = h.get("id") or (destination if conn.version == "1.0" else _required(frame, "id"))
    if sub_id in conn.subscriptions:
        raise ProtocolError("duplicate subscription", f"subscription id {sub_id!r} is in use")
    ack = h.get("ack", "auto")
    if ack not in ACK_MODES:
        raise ProtocolError("bad ack mode", f"ack:{ack} is not one of {', '.join(ACK_MODES)}")
    prefetch = conn.broker.config.default_prefetch
    for name in PREFETCH_HEADERS:
        if name in h:
            value = h[name].strip()
            if not value.isascii() or not value.isdigit():
                raise ProtocolError("bad prefetch", f"{name}:{value} is not a count")
            prefetch = int(value)
            break
    router = conn.broker.router
    name = durable.subscribe_name(h, conn.client_id, sub_id, destination)
    if destination.startswith(QUEUE_PREFIX):
        box = router.queue(destination)
    elif name is not None:
        box = router.durable(name, destination)
    else:
        box = router.private(destination)
    conn.sub_count += 1
    sub = Subscription(conn, sub_id, conn.sub_count, ack, prefetch, box, name)
    conn.subscriptions[sub_id] = sub
    conn.subs_by_num[str(sub.num)] = sub
    box.add_consumer(sub)


def on_unsubscribe(conn: StompConnection, frame: Frame) -> None:
    h = frame.headers
    sub_id = h.get("id") or (h.get("destination") if conn.version == "1.0" else None)
    if not sub_id:
        raise ProtocolError("missing id", "UNSUBSCRIBE needs an id header")
    sub = conn.subscriptions.get(sub_id)
    name = durable.unsubscribe_name(
        h,
        conn.client_id,
        sub_id,
        sub.durable_name if sub else None,
        sub.mailbox.destination if sub else None,
    )
    if sub is None and name is None:
        raise ProtocolError("unknown subscription", f"no subscription with id {sub_id!r}")
    if sub is not None:
        conn.end_subscription(sub)
    if name is not None:
        conn.broker.router.delete_durable(name)


def _find_delivery(conn: StompConnection, frame: Frame) -> tuple[Subscription, str]:
    h = frame.headers
    if conn.version == "1.2":
        key = _required(frame, "id")
        sub = conn.subs_by_num.get(key.partition("-")[0])
    else:
        key = _required(frame, "message-id")
        sub_id = h.get("subscription")
        if sub_id is not None:
            sub = conn.subscriptions.get(sub_id)
        else:  # STOMP 1.0 ACKs name only the message.
            sub = next((s for s in conn.subscriptions.values() if s.holds(key)), None)
    if sub is None or not sub.holds(key):
        raise ProtocolError(
            f"unexpected {frame.command}",
            f"{frame.command} {key!r} names no unacknowledged message on this connection",
        )
    return sub, key


def on_ack(conn: StompConnection, frame: Frame) -> None:
    sub, key = _find_delivery(conn, frame)
    tx = frame.headers.get("transaction")
    if tx is not None:
        _transaction(conn, tx).append(frame)
        return
    sub.settle(key)


def on_nack(conn: StompConnection, frame: Frame) -> None:
    sub, key = _find_delivery(conn, frame)
    tx = frame.headers.get("transaction")
    if tx is not None:
        _transaction(conn, tx).append(frame)
        return
    sub.settle(key, nack=True, requeue=frame.headers.get("requeue", "true") != "false")


def _transaction(conn: StompConnection, tx: str) -> list[Frame]:
    frames = conn.transactions.get(tx)
    if frames is None:
        raise ProtocolError("unknown transaction", f"transaction {tx!r} was not begun")
    return frames


def on_begin(conn: StompConnection, frame: Frame) -> None:
    tx = _required(frame, "transaction")
    if tx in conn.transactions:
        raise ProtocolError("duplicate transaction", f"transaction {tx!r} is already open")
    conn.transactions[tx] = []


def on_commit(conn: StompConnection, frame: Frame) -> None:
    tx = _required(frame, "transaction")
    frames = _transaction(conn, tx)
    del conn.transactions[tx]
    for f in frames:
        if f.command == "SEND":
            publish(conn, f)
        else:
            sub, key = _find_delivery(conn, f)
            nack = f.command == "NACK"
            sub.settle(key, nack=nack, requeue=f.headers.get("requeue", "true") != "false")


def on_abort(conn: StompConnection, frame: Frame) -> None:
    tx = _required(frame, "transaction")
    _transaction(conn, tx)
    del conn.transactions[tx]


def on_disconnect(conn: StompConnection, frame: Frame) -> None:
    # Nothing after DISCONNECT is processed or delivered; the RECEIPT still goes out.
    conn.closing = True
    conn.writable = False
    receipt = frame.headers.get("receipt")
    if receipt is None:
        conn.close()
        return
    data = encode_frame("RECEIPT", [("receipt-id", receipt)], version=conn.version)

    def done() -> None:
        conn.write(data)
        conn.close()

    conn.broker.store.after_writes(done)


HANDLERS: dict[str, Callable[[StompConnection, Frame], None]] = {
    "CONNECT": on_connect,
    "STOMP": on_connect,
    "SEND": on_send,
    "SUBSCRIBE": on_subscribe,
    "UNSUBSCRIBE": on_unsubscribe,
    "ACK": on_ack,
    "NACK": on_nack,
    "BEGIN": on_begin,
    "COMMIT": on_commit,
    "ABORT": on_abort,
    "DISCONNECT": on_disconnect,
}
