"""One STOMP connection to one broker of the list, over stomp.py.

stomp.py neither reconnects nor re-subscribes by itself, and calls listeners on its
receiver thread, where nothing may block (waiting for a receipt there deadlocks). So
this class only translates: frames go to the callbacks given, which must hand work to
other threads; the replication service decides when to reconnect.

A broker whose profile wants one frame in flight (coilmq) gets every frame with a
``receipt`` header, and the next frame only once that RECEIPT is back, whichever thread
sends it; a RECEIPT that does not come within ``FRAME_RECEIPT_TIMEOUT_S`` ends the
connection (so do not call ``send`` or ``ack`` from a stomp.py callback).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import stomp
import stomp.exception

from vesper.replication import wire
from vesper.replication.brokers import (
    COILMQ,
    COILMQ_REFUSES_12,
    BrokerProfile,
    client_id,
    detect,
    heartbeats,
    stomp_version,
)
from vesper.replication.tls import BrokerTls
from vesper.replication.transport import Delivery, Link, LinkError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
FRAME_RECEIPT_TIMEOUT_S = 10.0
"""With one frame in flight: how long a frame's RECEIPT may take before the connection
is taken for stalled."""


class StompLink(stomp.ConnectionListener):
    def __init__(
        self,
        host: tuple[str, int],
        branch_id: str,
        *,
        generation: int,
        login: str | None,
        passcode: str | None,
        heartbeat_ms: int,
        broker: str | None,
        queue_type: str = "classic",
        tls: BrokerTls | None = None,
        on_message: Callable[[Delivery], None],
        on_receipt: Callable[[str], None],
        on_lost: Callable[[Link], None],
    ) -> None:
        self.host = host
        self.generation = generation
        self._branch_id = branch_id
        self._login = login
        self._passcode = passcode
        self._configured_broker = broker
        self._queue_type = queue_type
        self._on_message = on_message
        self._on_receipt = on_receipt
        self._on_lost = on_lost
        self._lost = False
        self._acked_subscriptions: set[str] = set()
        self._connected_frame = threading.Event()
        self._heartbeat_ms = heartbeat_ms
        self._gate = threading.Lock()
        """Held from writing a frame until its RECEIPT (one frame in flight)."""
        self._awaited: str | None = None
        self._forward_awaited = False
        self._answered = threading.Event()
        self.profile: BrokerProfile | None = None
        self.error: str | None = None
        self.tls = tls
        self.version = stomp_version(broker)
        self.conn = self._connection(self.version, heartbeats(broker, heartbeat_ms))

    def _connection(
        self, version: str, heartbeat_ms: int
    ) -> stomp.Connection11 | stomp.Connection12:
        make = stomp.Connection11 if version == "1.1" else stomp.Connection12
        conn = make(
            host_and_ports=[self.host],
            reconnect_attempts_max=1,
            timeout=CONNECT_TIMEOUT_S,
            heartbeats=(heartbeat_ms, heartbeat_ms),
            # RabbitMQ wants the vhost in CONNECT's host header; others ignore it.
            vhost="/",
            auto_decode=False,
        )
        if self.tls is not None:
            conn.set_ssl(
                for_hosts=[self.host],
                ca_certs=self.tls.ca_file,
                cert_file=self.tls.cert_file,
                key_file=self.tls.key_file,
                verify=self.tls.verify,
            )
        conn.set_listener("vesper", self)
        return conn

    def connect(self) -> BrokerProfile:
        try:
            self._connect_frame()
        except LinkError:
            if self.version != "1.2" or COILMQ_REFUSES_12 not in (self.error or ""):
                raise
            # coilmq, not named in replication_broker: it takes STOMP 1.1, without
            # heart-beats, which its parser cannot take.
            log.info("%s refuses STOMP 1.2 as coilmq does: connecting with 1.1", self.address)
            self.version, self.error, self._lost = "1.1", None, False
            self.conn = self._connection("1.1", heartbeats(COILMQ, self._heartbeat_ms))
            self._connect_frame()
        return self._connected()

    def _connect_frame(self) -> None:
        try:
            self.conn.connect(
                self._login,
                self._passcode,
                wait=True,
                headers={"client-id": client_id(self._branch_id)},
            )
        except (stomp.exception.StompException, OSError) as exc:
            self.close()
            reason = self.error or f"{type(exc).__name__}: {exc}"
            if self.error is None and self.tls is not None:
                reason = self.tls.diagnose(self.host, CONNECT_TIMEOUT_S) or reason
            raise LinkError(reason) from None

    def _connected(self) -> BrokerProfile:
        # stomp.py leaves Nagle's algorithm on: a lone small SEND then waits for the
        # broker's delayed ACK (40 ms on Linux), which was most of the replication lag.
        with contextlib.suppress(OSError, AttributeError):
            self.conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # stomp.py wakes connect() before it calls on_connected: wait for the profile.
        if not self._connected_frame.wait(CONNECT_TIMEOUT_S) or not self.conn.is_connected():
            self.close()
            raise LinkError(self.error or "connection closed during CONNECT")
        assert self.profile is not None
        return self.profile

    @property
    def address(self) -> str:
        scheme = "stomp+ssl://" if self.tls is not None else ""
        return f"{scheme}{self.host[0]}:{self.host[1]}"

    @property
    def connected(self) -> bool:
        return not self._lost and self.conn.is_connected()

    def subscribe(self, kind: str, channel: str, sub_id: str, acked: bool) -> None:
        assert self.profile is not None, "subscribe after connect"
        ack = "client" if acked else "auto"
        if kind == wire.CHANGESETS:
            destination = wire.topic(channel)
            headers = self.profile.durable_topic_headers(self._branch_id, channel)
            if not self.profile.durable_topics:
                ack = "auto"  # nothing would be redelivered: an ACK is a wasted frame
        elif kind == wire.ANNOUNCE:
            # Announcements are only useful live: a plain subscription.
            destination, ack = wire.sync_topic(channel), "auto"
            headers = self.profile.sync_topic_headers(self._branch_id, channel)
        else:
            destination = wire.node_queue(channel, self._branch_id)
            headers = self.profile.queue_headers()
        self._frame(
            lambda r: self.conn.subscribe(
                destination, sub_id, ack=ack, headers={**headers, **_receipt(r)}
            )
        )
        if ack != "auto":
            self._acked_subscriptions.add(sub_id)

    def send(
        self, destination: str, body: bytes, headers: dict[str, str], receipt: str | None = None
    ) -> None:
        if self.profile is not None:
            headers = {**headers, **self.profile.send_headers(destination)}
        try:
            self._frame(
                lambda r: self.conn.send(
                    destination,
                    body,
                    content_type="application/json",
                    headers={**headers, **_receipt(r)},
                ),
                receipt,
            )
        except (stomp.exception.StompException, OSError) as exc:
            raise LinkError(f"{self.address}: send failed: {type(exc).__name__}: {exc}") from None

    def ack(self, headers: dict[str, str]) -> None:
        subscription = headers.get("subscription")
        if subscription not in self._acked_subscriptions:
            return  # an auto-acknowledged subscription: an ACK would be an error
        if self.version == "1.1":
            message_id = headers["message-id"]
            self._frame(lambda r: self.conn.ack(message_id, subscription, receipt=r))
        else:
            # STOMP 1.2: ACK carries the MESSAGE's ``ack`` header as its id.
            ack_id = headers.get("ack") or headers["message-id"]
            self._frame(lambda r: self.conn.ack(ack_id, receipt=r))

    def _frame(self, write: Callable[[str | None], None], receipt: str | None = None) -> None:
        """Write one frame: ``write(receipt)`` puts the receipt header (None: none) on
        it. With one frame in flight every frame gets one, and this returns once the
        RECEIPT is back; a receipt the caller asked for still reaches ``on_receipt``."""
        if self.profile is None or not self.profile.one_frame_in_flight:
            write(receipt)
            return
        with self._gate:
            if self._lost:
                raise LinkError(f"{self.address}: {self.error or 'disconnected'}")
            self._answered.clear()
            self._awaited = receipt or uuid.uuid4().hex
            self._forward_awaited = receipt is not None
            write(self._awaited)
            # coilmq writes the RECEIPT right after another frame (the echo of a SEND to
            # a topic this node reads, the next message of a queue after an ACK) with
            # Nagle's algorithm on: it waits for this side's ACK of the first, which
            # Linux delays by 40 ms unless told to send it now (no such option elsewhere).
            with contextlib.suppress(OSError, AttributeError):
                self.conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            if self._answered.wait(FRAME_RECEIPT_TIMEOUT_S) and self._awaited is None:
                return
            self._awaited = None
            problem = self.error or (
                "disconnected"
                if self._lost
                else f"no RECEIPT within {FRAME_RECEIPT_TIMEOUT_S:.0f} s: the broker stalled"
            )
            # Still holding the gate: close() writes no DISCONNECT behind this frame.
            self._lost_once()
            self.close()
        raise LinkError(f"{self.address}: {problem}")

    def close(self) -> None:
        # With one frame in flight, a DISCONNECT written while another frame awaits its
        # RECEIPT could reach the broker in the same read as that frame's end: the
        # socket is merely closed then.
        gated = self.profile is not None and self.profile.one_frame_in_flight
        polite = not gated or self._gate.acquire(blocking=False)
        self._lost = True
        self._answered.set()
        try:
            if polite and self.conn.is_connected():
                self.conn.disconnect()
            elif not polite:
                self.conn.transport.disconnect_socket()
        except Exception:
            pass
        finally:
            if gated and polite:
                self._gate.release()
        with contextlib.suppress(Exception):
            self.conn.transport.stop()

    # -- stomp.py callbacks (receiver thread: never block) ---------------------------

    def on_connected(self, frame: Any) -> None:
        profile = detect(frame.headers.get("server"), self._configured_broker)
        self.profile = dataclasses.replace(profile, queue_type=self._queue_type)
        self._connected_frame.set()

    def on_message(self, frame: Any) -> None:
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        self._on_message(Delivery(frame.headers, body, self.generation))

    def on_receipt(self, frame: Any) -> None:
        receipt = frame.headers.get("receipt-id")
        if receipt and receipt == self._awaited:
            self._awaited = None
            self._answered.set()
            if not self._forward_awaited:
                return  # asked for by _frame only
        if receipt:
            self._on_receipt(receipt)

    def on_error(self, frame: Any) -> None:
        message = frame.headers.get("message", "")
        body = frame.body.decode(errors="replace") if isinstance(frame.body, bytes) else ""
        self.error = f"broker error: {message} {body.strip()[:200]}".strip()
        # coilmq's refusal of STOMP 1.2 is answered by connecting again with 1.1.
        refused_12 = self.profile is None and COILMQ_REFUSES_12 in message
        log.log(
            logging.DEBUG if refused_12 else logging.WARNING, "%s: %s", self.address, self.error
        )
        self._answered.set()  # a frame in flight failed: no RECEIPT will come

    def on_disconnected(self) -> None:
        self._lost_once()

    def on_heartbeat_timeout(self) -> None:
        log.warning("%s: heart-beat timeout", self.address)
        self._lost_once()

    def _lost_once(self) -> None:
        self._answered.set()
        if not self._lost:
            self._lost = True
            self._on_lost(self)


def _receipt(receipt: str | None) -> dict[str, str]:
    return {"receipt": receipt} if receipt is not None else {}
