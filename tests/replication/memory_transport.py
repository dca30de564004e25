"""An in-memory broker and links implementing ``vesper.replication.transport.Link``.

Enough of a broker for the unit tests of the sender, the apply worker and catch-up:
topics with durable subscriptions that keep unacknowledged messages and redeliver them
to a new connection, live-only subscriptions, queues, cumulative acknowledgements and
receipts. Deliveries run on one thread per link, as stomp.py's receiver thread does.
``hold_receipts`` and ``drop`` let a test stall or lose traffic.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vesper.replication import wire
from vesper.replication.brokers import BrokerProfile
from vesper.replication.service import ReplicationConfig, ReplicationService
from vesper.replication.transport import Delivery, LinkError, OnLost, OnMessage, OnReceipt
from vesper.store import open_store
from vesper.trust.keys import NodeKey

#: What the ``node`` fixture gives: makes a started MemoryNode for a branch id.
Make = Callable[..., "MemoryNode"]


@dataclass
class _Subscription:
    client: str
    sub_id: str
    acked: bool
    durable: bool
    held: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    """Messages not yet acknowledged (durable), in order."""
    link: MemoryLink | None = None


class MemoryBroker:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self._subs: dict[str, list[_Subscription]] = {}
        self._queues: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
        self._queue_readers: dict[str, _Subscription] = {}
        self.sent: list[tuple[str, dict[str, str], bytes]] = []
        """Every message sent, for assertions."""
        self.hold_receipts = False
        self.failing_sends = 0
        """The next this many sends raise LinkError with the link left open."""
        self.drop: Callable[[str, dict[str, str], bytes], bool] = lambda d, h, b: False
        self.up = True

    def links(self, client: str) -> Callable[..., MemoryLink]:
        """A ``LinkFactory`` for the node ``client``."""

        def make(
            host: tuple[str, int],
            generation: int,
            on_message: OnMessage,
            on_receipt: OnReceipt,
            on_lost: OnLost,
        ) -> MemoryLink:
            return MemoryLink(self, client, generation, on_message, on_receipt, on_lost)

        return make

    def publish(self, destination: str, headers: dict[str, str], body: bytes) -> None:
        """Send as a plain broker client would (an attacker, in the tests)."""
        with self.lock:
            self.sent.append((destination, headers, body))
            if self.drop(destination, headers, body):
                return
            msg_id = next(self._ids)
            if destination.startswith("/queue/"):
                reader = self._queue_readers.get(destination)
                if reader is not None and reader.link is not None and reader.link.connected:
                    reader.held.append((msg_id, headers, body))
                    reader.link.push(reader, msg_id, destination, headers, body)
                else:
                    self._queues.setdefault(destination, []).append((msg_id, headers, body))
                return
            for sub in self._subs.get(destination, []):
                if sub.durable and sub.acked:
                    sub.held.append((msg_id, headers, body))
                live = sub.link is not None and sub.link.connected
                if live:
                    sub.link.push(sub, msg_id, destination, headers, body)  # type: ignore[union-attr]

    def subscribe(self, link: MemoryLink, destination: str, sub: _Subscription) -> None:
        with self.lock:
            if destination.startswith("/queue/"):
                old = self._queue_readers.get(destination)
                if old is not None:
                    sub.held = old.held
                self._queue_readers[destination] = sub
                sub.held.extend(self._queues.pop(destination, []))
                sub.link = link
                for msg_id, headers, body in sub.held:
                    link.push(sub, msg_id, destination, headers, body)
                return
            subs = self._subs.setdefault(destination, [])
            for existing in subs:
                if existing.durable and (existing.client, existing.sub_id) == (
                    sub.client,
                    sub.sub_id,
                ):
                    existing.link = link
                    for msg_id, headers, body in existing.held:
                        link.push(existing, msg_id, destination, headers, body)
                    return
            sub.link = link
            subs.append(sub)

    def ack(self, sub: _Subscription, msg_id: int) -> None:
        with self.lock:
            sub.held = [m for m in sub.held if m[0] > msg_id]


class MemoryLink:
    def __init__(
        self,
        broker: MemoryBroker,
        client: str,
        generation: int,
        on_message: OnMessage,
        on_receipt: OnReceipt,
        on_lost: OnLost,
    ) -> None:
        self.broker = broker
        self.client = client
        self.generation = generation
        self.error: str | None = None
        self._on_message = on_message
        self._on_receipt = on_receipt
        self._on_lost = on_lost
        self._open = False
        self._subs: dict[str, _Subscription] = {}
        self._inbox: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._deliver, daemon=True)
        self.held_receipts: list[str] = []

    @property
    def address(self) -> str:
        return "memory:0"

    @property
    def connected(self) -> bool:
        return self._open and self.broker.up

    def connect(self) -> BrokerProfile:
        if not self.broker.up:
            raise LinkError("memory broker is down")
        self._open = True
        self._thread.start()
        return BrokerProfile("vesper", "memory")

    def subscribe(self, kind: str, channel: str, sub_id: str, acked: bool) -> None:
        if kind == wire.CHANGESETS:
            destination, durable = wire.topic(channel), True
        elif kind == wire.ANNOUNCE:
            destination, durable, acked = wire.sync_topic(channel), False, False
        else:
            destination, durable = wire.node_queue(channel, self.client), True
        sub = _Subscription(self.client, sub_id, acked, durable)
        self._subs[sub_id] = sub
        self.broker.subscribe(self, destination, sub)

    def send(
        self, destination: str, body: bytes, headers: dict[str, str], receipt: str | None = None
    ) -> None:
        if not self.connected:
            raise LinkError("not connected")
        if self.broker.failing_sends > 0:
            self.broker.failing_sends -= 1
            raise LinkError("send failed")
        self.broker.publish(destination, dict(headers), bytes(body))
        if receipt is not None:
            if self.broker.hold_receipts:
                self.held_receipts.append(receipt)
            else:
                self._inbox.put(lambda: self._on_receipt(receipt))

    def release_receipts(self) -> None:
        for receipt in self.held_receipts:
            self._inbox.put(lambda r=receipt: self._on_receipt(r))
        self.held_receipts = []

    def ack(self, headers: dict[str, str]) -> None:
        sub = self._subs.get(headers.get("subscription", ""))
        if sub is not None and sub.acked:
            self.broker.ack(sub, int(headers["ack"]))

    def push(
        self,
        sub: _Subscription,
        msg_id: int,
        destination: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        frame = {
            **headers,
            "subscription": sub.sub_id,
            "destination": destination,
            "message-id": str(msg_id),
            "ack": str(msg_id),
        }
        self._inbox.put(lambda: self._on_message(Delivery(frame, body, self.generation)))

    def close(self) -> None:
        if self._open:
            self._open = False
            self._inbox.put(None)

    def lose(self) -> None:
        """The connection drops (as a broker restart would)."""
        self.close()
        self._on_lost(self)

    def _deliver(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None or not self._open:
                return
            item()


class MemoryNode:
    """A store and its replication service on a MemoryBroker."""

    def __init__(
        self, broker: MemoryBroker, branch: str, channels: tuple[str, ...] = ("c",), **config: Any
    ) -> None:
        self.branch = branch
        self.key = config.pop("key", None) or NodeKey.generate()
        url = config.pop("storage_url", "mem://")
        self.store = open_store(url, branch, save_history=True, outbox=True)
        self.service = ReplicationService(
            self.store,
            ReplicationConfig(branch, (("memory", 0),), channels, key=self.key, **config),
            links=broker.links(branch),
        )

    def start(self) -> MemoryNode:
        self.service.start()
        self.service.wait_started()
        return self

    @property
    def link(self) -> MemoryLink:
        link = self.service.current_link()
        assert isinstance(link, MemoryLink)
        return link

    def status(self) -> dict[str, Any]:
        return self.service.status()

    def stop(self) -> None:
        self.service.stop()
        self.store.close()
