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
from vesper.broker.control import CONTROL_PREFIX, STATUS, handle_control, send_status
from vesper.broker.destinations import QUEUE_PREFIX, TOPIC_PREFIX, check_destination
from vesper.broker.errors import AccessDenied, LimitExceeded, ProtocolError
from vesper.broker.frames import Frame, encode_frame
from vesper.broker.mailbox import Mailbox
from vesper.broker.message import Message
from vesper.broker.permissions import ADMIN, READ, WRITE
from vesper.broker.subscription import ACK_MODES, Subscription
from vesper.broker.users import ANONYMOUS_USER, User

if TYPE_CHECKING:
    from vesper.broker.connection import StompConnection

SUPPORTED_VERSIONS = ("1.2", "1.1", "1.0")
PREFETCH_HEADERS = ("activemq.prefetchSize", "prefetch-count")
_VERBS = {READ: "subscribe to", WRITE: "send to", ADMIN: "administer"}


def require(conn: StompConnection, right: str, destination: str) -> None:
    """Raise AccessDenied unless the connection's user has ``right`` on ``destination``."""
    user = conn.user
    if not user.may(right, destination):
        raise AccessDenied(
            "access denied",
            f"user {user.label} may not {_VERBS[right]} {destination[:200]!r}: add a"
            f" pattern matching it to the user's {right} list in the users file",
        )


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
    if conn.connected or conn.session:
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
    if version != "1.0":
        _heartbeat(h.get("heart-beat"))  # refuse a bad one before any slow work
    conn.session = broker.new_session_id()  # marks the CONNECT as under way
    login = h.get("login")
    if broker.users is None or (not login and broker.config.allow_anonymous):
        _finish_connect(conn, frame, version, ANONYMOUS_USER)
        return
    if not login:
        raise AccessDenied(
            "authentication failed", "this broker needs login and passcode on CONNECT"
        )

    def checked(user: User | None) -> None:
        if conn.closing or conn.transport is None:
            return
        try:
            if user is None:
                raise AccessDenied(
                    "authentication failed", f"login {login!r} or its passcode is wrong"
                )
            _finish_connect(conn, frame, version, user)
        except ProtocolError as exc:
            conn.fail(exc, frame)
            return
        conn.release_frames()

    # scrypt takes tens of milliseconds: off the event loop, later frames wait.
    conn.hold_frames()
    broker.authenticate(login, h.get("passcode"), checked)


def _finish_connect(conn: StompConnection, frame: Frame, version: str, user: User) -> None:
    h = frame.headers
    broker = conn.broker
    cx, cy = _heartbeat(h.get("heart-beat")) if version != "1.0" else (0, 0)
    client_id = h.get("client-id") or None
    if client_id is not None:
        if client_id in broker.client_ids:
            # ActiveMQ's rule: one live connection per client-id.
            raise ProtocolError("client-id already connected", f"client-id {client_id!r} is in use")
        _check_client_id_owner(user, client_id, broker.router.durables)
        broker.client_ids[client_id] = conn
        conn.client_id = client_id
    conn.user = user
    conn.version = conn.parser.version = version
    conn.connected = True
    # Mirror the client (as ActiveMQ and RabbitMQ do), with a floor so it cannot make
    # the broker spin: we beat as often as it asks, and expect what it offers.
    send_ms = max(cy, MIN_HEARTBEAT_MS) if cy else 0
    expect_ms = max(cx, MIN_HEARTBEAT_MS) if cx else 0
    headers = [("server", f"vesper/{__version__}"), ("session", conn.session)]
    if h.get("accept-version") is not None:
        headers = [("version", version), *headers, ("heart-beat", f"{send_ms},{expect_ms}")]
    conn.write(encode_frame("CONNECTED", headers))
    conn.start_heartbeats(send_ms, expect_ms)


def _check_client_id_owner(user: User, client_id: str, durables: dict[str, Mailbox]) -> None:
    """An ActiveMQ-style durable subscription is keyed on the client-id: a client-id that
    names another user's durable subscriptions is that user's (or an admin's) only, so
    nobody else can squat it while its owner is away."""
    if user.permissions.everything:
        return
    prefix = durable.activemq_prefix(client_id)
    for name, box in durables.items():
        if (
            name.startswith(prefix)
            and box.owner != user.name
            and not user.may(ADMIN, box.destination)
        ):
            raise AccessDenied(
                "access denied",
                f"client-id {client_id!r} holds durable subscriptions of another user;"
                f" user {user.label} may not use it: pick another client-id",
            )


def on_send(conn: StompConnection, frame: Frame) -> None:
    destination = _required(frame, "destination")
    if destination.startswith(CONTROL_PREFIX):
        require(conn, ADMIN, destination)
    else:
        check_destination(destination)
        require(conn, WRITE, destination)
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
    for full in broker.router.route(message, _publisher(conn)):
        if isinstance(full, Mailbox):
            # A client consuming the full mailbox itself must keep being read: its
            # ACKs are what drains the mailbox.
            if not any(c.connection is conn for c in full.consumers):
                full.block(conn)
                conn.block_on(full)
        elif not conn.subscriptions:
            # The memory budget: only pure publishers are paused, for the same reason.
            full.pause(conn)
            conn.block_on(full)
    store = broker.store
    if store.persistent and store.over_limit() and conn.block_on(store):
        store.when_drained(lambda: conn.unblock(store))


def on_subscribe(conn: StompConnection, frame: Frame) -> None:
    h = frame.headers
    raw_destination = h.get("destination")
    destination = (
        raw_destination if raw_destination == STATUS else check_destination(raw_destination)
    )
    sub_id = h.get("id") or (destination if conn.version == "1.0" else _required(frame, "id"))
    if sub_id in conn.subscriptions or sub_id in conn.status_subscriptions:
        raise ProtocolError("duplicate subscription", f"subscription id {sub_id!r} is in use")
    cap = conn.broker.config.max_subscriptions_per_connection
    if len(conn.subscriptions) + len(conn.status_subscriptions) >= cap:
        raise LimitExceeded(
            "too many subscriptions",
            f"this connection already has {cap} subscriptions, the most the broker's"
            " --max-subscriptions-per-connection allows: UNSUBSCRIBE some first",
        )
    ack = h.get("ack", "auto")
    if ack not in ACK_MODES:
        raise ProtocolError("bad ack mode", f"ack:{ack} is not one of {', '.join(ACK_MODES)}")
    if destination == STATUS:
        require(conn, ADMIN, destination)
        if ack != "auto":
            raise ProtocolError("bad ack mode", f"subscribe to {STATUS} with ack:auto")
        conn.status_subscriptions.add(sub_id)
        send_status(conn, sub_id)
        return
    require(conn, READ, destination)
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
        existing = router.durables.get(name)
        user = conn.user
        if existing is not None and existing.owner != user.name and not user.permissions.everything:
            # Resuming would hand this user the owner's backlog; re-subscribing it to
            # another topic would delete it.
            raise AccessDenied(
                "access denied",
                f"durable subscription {name!r} on {existing.destination} belongs to"
                f" {_owner_label(existing)}; user {user.label} may not resume it: use"
                " another subscription name",
            )
        box = router.durable(name, destination, owner=user.name)
    else:
        box = router.private(destination)
    if destination.startswith(TOPIC_PREFIX):
        box.no_local = _publisher(conn) if _flag(h, "no-local") else None
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
    if sub_id in conn.status_subscriptions:
        conn.status_subscriptions.discard(sub_id)
        return
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
    router = conn.broker.router
    existing = router.durables.get(name) if name is not None else None
    user = conn.user
    if (
        existing is not None
        and existing.owner != user.name
        and not user.may(ADMIN, existing.destination)
    ):
        raise AccessDenied(
            "access denied",
            f"durable subscription {name!r} on {existing.destination} belongs to"
            f" {_owner_label(existing)}; user {user.label} may not delete it (that takes"
            " admin on its destination)",
        )
    if sub is not None:
        conn.end_subscription(sub)
    if name is not None:
        router.delete_durable(name)


def _publisher(conn: StompConnection) -> object:
    """Who published, for ``no-local``: the client-id, which one connection at a time
    holds and a durable subscription outlives connections by, else the connection."""
    return conn.client_id if conn.client_id is not None else conn


def _flag(headers: dict[str, str], name: str) -> bool:
    value = headers.get(name)
    if value is None:
        return False
    if value not in ("true", "false"):
        raise ProtocolError(f"bad {name}", f"{name}:{value} is neither true nor false")
    return value == "true"


def _owner_label(box: Mailbox) -> str:
    return f"user {box.owner!r}" if box.owner else "an anonymous client"


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
