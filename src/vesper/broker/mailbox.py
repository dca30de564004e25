"""A mailbox: the messages of one queue or subscription and the consumers draining it.

``/queue/X`` is one mailbox with any number of consumers (round robin). A durable
topic subscription is a mailbox that outlives its consumers. A plain topic
subscription has a private mailbox that dies with it.

With a persistent store, queue and durable mailboxes write every entry to it and keep
at most ``max_pending_bytes`` of undelivered entries in memory (less while the
broker's memory budget is under pressure): beyond that, new entries stay on disk only
("disk_only") and are loaded back in order as consumers drain the head. Without one,
a queue or durable mailbox over its limit pauses the publishers that feed it (flow
control) until it drains to half; a plain topic subscription over its limit has a
consumer that does not keep up, and the router disconnects it instead.

Every byte a mailbox holds in memory (pending or in flight) is counted in the
broker's ``MemoryBudget``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from vesper.broker.message import Entry, Message

if TYPE_CHECKING:
    from vesper.broker.faults import Faults
    from vesper.broker.memory import MemoryBudget
    from vesper.broker.persistence import Row, Store

#: Entries read back from the store at a time.
LOAD_ROWS = 256
#: Undelivered bytes a stored mailbox without consumers keeps in memory.
IDLE_LIMIT_BYTES = 1024 * 1024

QUEUE = "queue"
DURABLE = "durable"
PRIVATE = "subscription"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Consumer(Protocol):
    """What a mailbox needs from a subscription."""

    connection: object

    def ready(self) -> bool: ...
    def deliver(self, entry: Entry) -> None: ...
    def overflow(self) -> None: ...


class Publisher(Protocol):
    """What a mailbox needs from a publishing connection it pauses."""

    def unblock(self, blocker: object) -> None: ...


class Mailbox:
    """Undelivered and in-flight entries of one queue or subscription."""

    def __init__(
        self,
        kind: str,
        name: str,
        destination: str,
        store: Store,
        faults: Faults,
        limit_bytes: int,
        budget: MemoryBudget,
        store_id: int | None = None,
        owner: str = "",
        last_active: float | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.destination = destination
        self.store = store
        self.faults = faults
        self.limit_bytes = limit_bytes
        self.budget = budget
        self.owner = owner
        """Login of the client that created it ('' = anonymous); durable ones only."""
        self.last_active = time.time() if last_active is None else last_active
        """Unix time it last had a consumer; durable subscriptions expire from it."""
        self.idle_limit_bytes = min(limit_bytes, IDLE_LIMIT_BYTES)
        #: Whether entries are written to the store (queues and durable subscriptions).
        self.stored = store.persistent and kind != PRIVATE
        self.id = (
            store_id
            if store_id is not None
            else (
                store.create_mailbox(kind, name, destination, owner, self.last_active)
                if self.stored
                else 0
            )
        )
        self.pending: deque[Entry] = deque()
        self.pending_bytes = 0
        self.held_bytes = 0
        """Pending plus in-flight bytes in memory: this mailbox's share of the budget."""
        self.inflight: dict[int, Entry] = {}
        self.disk_only = 0
        """Entries in the store, not in memory; all come after those in ``pending``."""
        self._last_loaded = 0
        self._loading = False
        self.consumers: list[Consumer] = []
        self._rr = 0
        self.blocked: set[Publisher] = set()
        self.closed = False
        self.may_expire = False
        """Whether it may hold messages that expire (one arrived, or some were stored
        before a restart); cleared once it is empty."""
        self.expired = 0
        """Messages dropped undelivered because they expired."""
        self.no_local: object | None = None
        """Set by a SUBSCRIBE with ``no-local:true``: the publisher (its client-id, or
        its connection without one) whose messages this topic mailbox does not take."""

    def __repr__(self) -> str:
        return f"<Mailbox {self.kind} {self.name!r} pending={len(self.pending)}>"

    @property
    def depth(self) -> int:
        """Messages not yet acknowledged: pending, on disk and in flight."""
        return len(self.pending) + self.disk_only + len(self.inflight)

    # -- producing ---------------------------------------------------------------------

    def push(self, message: Message) -> None:
        if message.expires:
            self.may_expire = True
        store = self.store
        entry = Entry(store.next_key(), message)
        if self.stored:
            store.put(self.id, entry)
            # Nobody is reading: keep only a little in memory, the rest waits on disk.
            limit = self.limit_bytes if self.consumers else self.idle_limit_bytes
            if self.disk_only or self.pending_bytes > limit or self.budget.held_full():
                self.disk_only += 1
                return
            self._last_loaded = entry.key
        self.pending.append(entry)
        size = message.size
        self.pending_bytes += size
        self.held_bytes += size
        self.budget.take(size)
        if self.consumers:
            self.dispatch()

    def over_limit(self) -> bool:
        """True when publishers must pause (only mailboxes that cannot spill to disk)."""
        return self.pending_bytes > self.limit_bytes and not self.stored

    def overflow(self) -> None:
        """A plain topic subscription is over its limit: its consumer is too slow."""
        for consumer in list(self.consumers):
            consumer.overflow()

    def _release(self, size: int) -> None:
        self.held_bytes -= size
        self.budget.give(size)

    def block(self, publisher: Publisher) -> None:
        self.blocked.add(publisher)

    def _unblock_all(self) -> None:
        blocked, self.blocked = self.blocked, set()
        for publisher in blocked:
            publisher.unblock(self)

    # -- consuming ---------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self.touch()
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        self.consumers.remove(consumer)
        self.touch()

    def touch(self) -> None:
        """Record that it is in use now (persisted for durable subscriptions)."""
        self.last_active = time.time()
        if self.stored and self.kind == DURABLE and not self.closed:
            self.store.touch(self.id, self.last_active)

    def dispatch(self) -> None:
        """Deliver pending entries to ready consumers, round robin."""
        if self.faults.paused or self.closed:
            return
        pending = self.pending
        consumers = self.consumers
        now_ms = _now_ms() if self.may_expire else 0
        while pending and consumers:
            if len(consumers) == 1:
                consumer = consumers[0]
                if not consumer.ready():
                    break
            else:
                consumer = self._pick()
                if consumer is None:
                    break
            entry = pending.popleft()
            self.pending_bytes -= entry.message.size
            if now_ms and entry.message.expired(now_ms):
                self._drop_expired(entry)
                continue
            consumer.deliver(entry)
        half = self.limit_bytes // 2
        if (
            self.disk_only
            and not self._loading
            and consumers
            and self.pending_bytes <= half
            and not self.budget.held_full()
        ):
            self._load()
        if self.blocked and self.pending_bytes <= half:
            self._unblock_all()

    def sweep(self) -> None:
        """Drop the expired messages no consumer took: those waiting in memory here,
        and (through the store) those waiting on disk. Delivered ones awaiting an ACK
        are left to their consumer."""
        if not self.may_expire or self.closed:
            return
        now_ms = _now_ms()
        if any(e.message.expired(now_ms) for e in self.pending):
            keep: deque[Entry] = deque()
            for entry in self.pending:
                if entry.message.expired(now_ms):
                    self.pending_bytes -= entry.message.size
                    self._drop_expired(entry)
                else:
                    keep.append(entry)
            self.pending = keep
        if self.disk_only and not self._loading:
            # No load is pending, so every entry after _last_loaded is on disk only.
            self.store.expire(self.id, self._last_loaded, now_ms, self._expired_on_disk)
        elif not self.depth:
            self.may_expire = False
        if self.blocked and self.pending_bytes <= self.limit_bytes // 2:
            self._unblock_all()

    def _drop_expired(self, entry: Entry) -> None:
        self.expired += 1
        self._release(entry.message.size)
        if self.stored:
            self.store.delete(entry.key)

    def _expired_on_disk(self, count: int) -> None:
        if count and not self.closed:
            self.expired += count
            self.disk_only = max(0, self.disk_only - count)

    def _pick(self) -> Consumer | None:
        consumers = self.consumers
        n = len(consumers)
        for i in range(n):
            j = (self._rr + i) % n
            if consumers[j].ready():
                self._rr = j + 1
                return consumers[j]
        return None

    def track(self, entry: Entry) -> None:
        """The entry was delivered and waits for an acknowledgement."""
        self.inflight[entry.key] = entry

    def consumed(self, entry: Entry) -> None:
        """The entry is done with (acknowledged, auto-acked or dropped)."""
        if self.closed:
            return
        self.inflight.pop(entry.key, None)
        self._release(entry.message.size)
        if self.stored:
            self.store.delete(entry.key)

    def ack(self, entry: Entry) -> None:
        """Acknowledge an in-flight entry; a second ACK of it (a duplicate) is a no-op."""
        if self.inflight.pop(entry.key, None) is not None and not self.closed:
            self._release(entry.message.size)
            if self.stored:
                self.store.delete(entry.key)

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Put unacknowledged entries back at the head, marked redelivered."""
        back = [e for e in entries if self.inflight.pop(e.key, None) is not None]
        if not back or self.closed:
            return
        back.sort(key=lambda e: e.key)
        for e in back:
            if not e.redelivered:
                e.redelivered = True
                if self.stored:
                    self.store.mark_redelivered(e.key)
            self.pending_bytes += e.message.size
        self.pending.extendleft(reversed(back))
        self.dispatch()

    def close(self) -> None:
        """Delete the mailbox (unsubscribe of a durable subscription, end of a private one)."""
        self.closed = True
        if self.stored:
            self.store.delete_mailbox(self.id)
        self.pending.clear()
        self.inflight.clear()
        self.pending_bytes = 0
        self._release(self.held_bytes)
        self.disk_only = 0
        self._unblock_all()

    # -- reading back from the store ---------------------------------------------------

    def _load(self) -> None:
        self._loading = True
        self.store.load(self.id, self._last_loaded, LOAD_ROWS, self._loaded)

    def _loaded(self, rows: list[Row]) -> None:
        self._loading = False
        if self.closed:
            return
        dest = self.destination
        headers_from_blob = Message.headers_from_blob
        for key, message_id, headers, body, redelivered, expires in rows:
            message = Message(message_id, dest, headers_from_blob(headers), body, expires)
            self.pending.append(Entry(key, message, bool(redelivered)))
            self.pending_bytes += message.size
            self.held_bytes += message.size
            self.budget.take(message.size)
        if rows:
            self._last_loaded = rows[-1][0]
            self.disk_only = max(0, self.disk_only - len(rows))
        else:
            # Nothing left on disk after all (the count was stale): stop reloading.
            self.disk_only = 0
        self.dispatch()
