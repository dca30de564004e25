"""Destinations: ``/topic/<name>`` fans out to every subscription, ``/queue/<name>``
hands each message to one consumer and keeps it until one consumes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vesper.broker.errors import ProtocolError
from vesper.broker.mailbox import DURABLE, PRIVATE, QUEUE, Mailbox
from vesper.broker.message import Message

if TYPE_CHECKING:
    from vesper.broker.faults import Faults
    from vesper.broker.persistence import Store, StoredMailbox

TOPIC_PREFIX = "/topic/"
QUEUE_PREFIX = "/queue/"


def check_destination(destination: str | None) -> str:
    """Return a routable destination or raise the ProtocolError its sender gets."""
    if not destination:
        raise ProtocolError("missing destination", "the frame needs a destination header")
    for prefix in (TOPIC_PREFIX, QUEUE_PREFIX):
        if destination.startswith(prefix) and len(destination) > len(prefix):
            return destination
    raise ProtocolError(
        "unsupported destination",
        f"destination {destination[:200]!r} must be /topic/<name> or /queue/<name>",
    )


class Router:
    """Every queue, durable subscription and topic subscription of one broker."""

    def __init__(self, store: Store, faults: Faults, limit_bytes: int) -> None:
        self.store = store
        self.faults = faults
        self.limit_bytes = limit_bytes
        self.topics: dict[str, list[Mailbox]] = {}
        self.queues: dict[str, Mailbox] = {}
        self.durables: dict[str, Mailbox] = {}

    def _new(self, kind: str, name: str, destination: str, store_id: int | None = None) -> Mailbox:
        return Mailbox(kind, name, destination, self.store, self.faults, self.limit_bytes, store_id)

    def recover(self, stored: list[StoredMailbox]) -> None:
        """Recreate the queues and durable subscriptions found in the store."""
        for s in stored:
            box = self._new(s.kind, s.name, s.destination, s.id)
            box.disk_only = s.count
            if s.kind == QUEUE:
                self.queues[s.destination] = box
            else:
                self.durables[s.name] = box
                self.topics.setdefault(s.destination, []).append(box)

    def route(self, message: Message) -> list[Mailbox]:
        """Hand a message to its destination; returns the mailboxes now over their limit."""
        dest = message.destination
        if dest.startswith(TOPIC_PREFIX):
            boxes = self.topics.get(dest)
            if not boxes:
                return []
        else:
            boxes = [self.queue(dest)]
        full = []
        for box in boxes:
            box.push(message)
            if box.pending_bytes > box.limit_bytes and not box.stored:
                full.append(box)
        return full

    def queue(self, destination: str) -> Mailbox:
        box = self.queues.get(destination)
        if box is None:
            box = self.queues[destination] = self._new(QUEUE, destination, destination)
        return box

    def durable(self, name: str, destination: str) -> Mailbox:
        """The durable subscription ``name``; made anew if it was on another topic."""
        box = self.durables.get(name)
        if box is not None and box.destination != destination:
            # As ActiveMQ: re-subscribing elsewhere recreates it, dropping its messages.
            self.delete_durable(name)
            box = None
        if box is None:
            box = self.durables[name] = self._new(DURABLE, name, destination)
            self.topics.setdefault(destination, []).append(box)
        return box

    def delete_durable(self, name: str) -> bool:
        box = self.durables.pop(name, None)
        if box is None:
            return False
        self._detach(box)
        return True

    def private(self, destination: str) -> Mailbox:
        """A mailbox for one plain topic subscription."""
        box = self._new(PRIVATE, destination, destination)
        self.topics.setdefault(destination, []).append(box)
        return box

    def release(self, box: Mailbox) -> None:
        """A private mailbox's subscription ended."""
        self._detach(box)

    def _detach(self, box: Mailbox) -> None:
        boxes = self.topics.get(box.destination)
        if boxes is not None and box in boxes:
            boxes.remove(box)
            if not boxes:
                del self.topics[box.destination]
        box.close()

    def all(self) -> list[Mailbox]:
        boxes = list(self.queues.values())
        for topic in self.topics.values():
            boxes.extend(topic)
        return boxes

    def redispatch(self) -> None:
        """Try to deliver everywhere (after a resume)."""
        for box in self.all():
            box.dispatch()
