"""Destinations: ``/topic/<name>`` fans out to every subscription, ``/queue/<name>``
hands each message to one consumer and keeps it until one consumes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vesper.broker.errors import ProtocolError
from vesper.broker.mailbox import DURABLE, PRIVATE, QUEUE, Mailbox
from vesper.broker.message import Message

if TYPE_CHECKING:
    from vesper.broker.faults import Faults
    from vesper.broker.memory import MemoryBudget
    from vesper.broker.persistence import Store, StoredMailbox

TOPIC_PREFIX = "/topic/"
QUEUE_PREFIX = "/queue/"
#: Under memory pressure, a plain topic subscription holding at least this much is
#: one of the slow consumers the broker drops to make room.
SLOW_CONSUMER_FLOOR_BYTES = 1024 * 1024


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

    def __init__(
        self, store: Store, faults: Faults, limit_bytes: int, budget: MemoryBudget
    ) -> None:
        self.store = store
        self.faults = faults
        self.limit_bytes = limit_bytes
        self.budget = budget
        self.topics: dict[str, list[Mailbox]] = {}
        self.queues: dict[str, Mailbox] = {}
        self.durables: dict[str, Mailbox] = {}

    def _new(
        self,
        kind: str,
        name: str,
        destination: str,
        store_id: int | None = None,
        owner: str = "",
        last_active: float | None = None,
    ) -> Mailbox:
        return Mailbox(
            kind,
            name,
            destination,
            self.store,
            self.faults,
            self.limit_bytes,
            self.budget,
            store_id,
            owner,
            last_active,
        )

    def recover(self, stored: list[StoredMailbox]) -> None:
        """Recreate the queues and durable subscriptions found in the store."""
        for s in stored:
            box = self._new(s.kind, s.name, s.destination, s.id, s.owner, s.last_active)
            box.disk_only = s.count
            box.may_expire = s.count > 0  # what it holds may expire: the first sweep sees
            if s.kind == QUEUE:
                self.queues[s.destination] = box
            else:
                self.durables[s.name] = box
                self.topics.setdefault(s.destination, []).append(box)

    def route(self, message: Message, publisher: object = None) -> list[Mailbox | MemoryBudget]:
        """Hand a message to its destination; returns what its publisher must wait for:
        memory-only mailboxes over their limit, or the budget when memory is short.
        Topic mailboxes whose ``no_local`` is ``publisher`` are passed over.

        Mailboxes that can spill to disk do so by themselves. A plain topic
        subscription over its limit is never waited for: its consumer is too slow and
        is disconnected, so that it cannot hold up the publisher or the other
        subscribers (unless fault injection paused deliveries: then nobody is slow).
        """
        dest = message.destination
        if dest.startswith(TOPIC_PREFIX):
            boxes = self.topics.get(dest)
            if not boxes:
                return []
            boxes = list(boxes)  # a slow consumer's mailbox is removed on the way
        else:
            boxes = [self.queue(dest)]
        budget = self.budget
        full: list[Mailbox | MemoryBudget] = []
        for box in boxes:
            if box.closed or (publisher is not None and box.no_local == publisher):
                continue
            box.push(message)
            if box.stored:
                continue
            over_own = box.pending_bytes > box.limit_bytes
            if not over_own and not budget.held_full():
                continue
            if box.kind == PRIVATE and not self.faults.paused:
                if over_own or box.pending_bytes >= SLOW_CONSUMER_FLOOR_BYTES:
                    box.overflow()
                continue
            full.append(box if over_own else budget)
        return full

    def queue(self, destination: str) -> Mailbox:
        box = self.queues.get(destination)
        if box is None:
            box = self.queues[destination] = self._new(QUEUE, destination, destination)
        return box

    def durable(self, name: str, destination: str, owner: str = "") -> Mailbox:
        """The durable subscription ``name``; made anew if it was on another topic."""
        box = self.durables.get(name)
        if box is not None and box.destination != destination:
            # As ActiveMQ: re-subscribing elsewhere recreates it, dropping its messages.
            self.delete_durable(name)
            box = None
        if box is None:
            box = self.durables[name] = self._new(DURABLE, name, destination, owner=owner)
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

    def sweep(self) -> None:
        """Drop expired messages that wait undelivered (see ``Mailbox.sweep``)."""
        for box in self.all():
            box.sweep()

    def redispatch(self) -> None:
        """Try to deliver everywhere (after a resume)."""
        for box in self.all():
            box.dispatch()
