"""One STOMP connection to one broker of the list, over stomp.py.

stomp.py neither reconnects nor re-subscribes by itself, and calls listeners on its
receiver thread, where nothing may block (waiting for a receipt there deadlocks). So
this class only translates: frames go to the callbacks given, which must hand work to
other threads; the replication service decides when to reconnect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import stomp
import stomp.exception

from vesper.replication import wire
from vesper.replication.brokers import BrokerProfile, client_id, detect
from vesper.replication.tls import BrokerTls
from vesper.replication.transport import Delivery, Link, LinkError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


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
        self.profile: BrokerProfile | None = None
        self.error: str | None = None
        self.conn = stomp.Connection12(
            host_and_ports=[host],
            reconnect_attempts_max=1,
            timeout=CONNECT_TIMEOUT_S,
            heartbeats=(heartbeat_ms, heartbeat_ms),
            # RabbitMQ wants the vhost in CONNECT's host header; others ignore it.
            vhost="/",
            auto_decode=False,
        )
        self.tls = tls
        if tls is not None:
            self.conn.set_ssl(
                for_hosts=[host],
                ca_certs=tls.ca_file,
                cert_file=tls.cert_file,
                key_file=tls.key_file,
                verify=tls.verify,
            )
        self.conn.set_listener("vesper", self)

    def connect(self) -> BrokerProfile:
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
        elif kind == wire.ANNOUNCE:
            # Announcements are only useful live: a plain subscription.
            destination, ack = wire.sync_topic(channel), "auto"
            headers = self.profile.sync_topic_headers(self._branch_id, channel)
        else:
            destination = wire.node_queue(channel, self._branch_id)
            headers = self.profile.queue_headers()
        self.conn.subscribe(destination, sub_id, ack=ack, headers=headers)
        if ack != "auto":
            self._acked_subscriptions.add(sub_id)

    def send(
        self, destination: str, body: bytes, headers: dict[str, str], receipt: str | None = None
    ) -> None:
        if receipt is not None:
            headers = {**headers, "receipt": receipt}
        if self.profile is not None:
            headers = {**headers, **self.profile.send_headers(destination)}
        try:
            self.conn.send(destination, body, content_type="application/json", headers=headers)
        except (stomp.exception.StompException, OSError) as exc:
            raise LinkError(f"{self.address}: send failed: {type(exc).__name__}: {exc}") from None

    def ack(self, headers: dict[str, str]) -> None:
        if headers.get("subscription") not in self._acked_subscriptions:
            return  # an auto-acknowledged subscription: an ACK would be an error
        # STOMP 1.2: ACK carries the MESSAGE's ``ack`` header as its id.
        self.conn.ack(headers.get("ack") or headers["message-id"])

    def close(self) -> None:
        self._lost = True
        try:
            if self.conn.is_connected():
                self.conn.disconnect()
        except Exception:
            pass
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
        if receipt:
            self._on_receipt(receipt)

    def on_error(self, frame: Any) -> None:
        message = frame.headers.get("message", "")
        body = frame.body.decode(errors="replace") if isinstance(frame.body, bytes) else ""
        self.error = f"broker error: {message} {body.strip()[:200]}".strip()
        log.warning("%s: %s", self.address, self.error)

    def on_disconnected(self) -> None:
        self._lost_once()

    def on_heartbeat_timeout(self) -> None:
        log.warning("%s: heart-beat timeout", self.address)
        self._lost_once()

    def _lost_once(self) -> None:
        if not self._lost:
            self._lost = True
            self._on_lost(self)
