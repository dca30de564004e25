"""One SUBSCRIBE of one connection: ack mode, prefetch window and in-flight deliveries."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from vesper.broker.errors import ProtocolError
from vesper.broker.frames import escape
from vesper.broker.mailbox import PRIVATE, Mailbox
from vesper.broker.message import Entry

if TYPE_CHECKING:
    from vesper.broker.connection import StompConnection

ACK_MODES = ("auto", "client", "client-individual")


class _Delivery:
    __slots__ = ("copies", "entry")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        # STOMP < 1.2 acknowledges by message-id, so a duplicated delivery (fault
        # injection) shares its key with the original and needs one ACK per copy.
        self.copies = 1


class Subscription:
    """Delivers a mailbox's entries to one connection and settles its ACKs and NACKs."""

    def __init__(
        self,
        connection: StompConnection,
        sub_id: str,
        num: int,
        ack_mode: str,
        prefetch: int,
        mailbox: Mailbox,
        durable_name: str | None = None,
    ) -> None:
        self.connection = connection
        self.id = sub_id
        self.num = num
        """Per-connection number, the prefix of this subscription's 1.2 ``ack`` ids."""
        self.ack_mode = ack_mode
        self.auto = ack_mode == "auto"
        self.cumulative = ack_mode == "client"
        self.prefetch = prefetch
        """Most unacknowledged deliveries at once; 0 means no bound."""
        self.mailbox = mailbox
        self.durable_name = durable_name
        self.unacked: OrderedDict[str, _Delivery] = OrderedDict()
        self.closed = False
        self._seq = 0
        self._v12 = connection.version == "1.2"
        self._prefix = f"MESSAGE\nsubscription:{escape(sub_id, connection.version)}\n".encode()

    def ready(self) -> bool:
        return self.connection.writable and (
            self.auto or not self.prefetch or len(self.unacked) < self.prefetch
        )

    def deliver(self, entry: Entry) -> None:
        box = self.mailbox
        faults = box.faults
        if faults.active:
            copies, delay = faults.decide()
            if not copies:
                box.consumed(entry)
                return
        else:
            copies, delay = 1, 0.0
        if self.auto:
            box.consumed(entry)
            for _ in range(copies):
                self._write(entry, None, delay)
            return
        box.track(entry)
        for _ in range(copies):
            if self._v12:
                self._seq += 1
                key = f"{self.num}-{self._seq}"
                self.unacked[key] = _Delivery(entry)
                self._write(entry, key, delay)
            else:
                key = entry.message.message_id
                d = self.unacked.get(key)
                if d is None:
                    self.unacked[key] = _Delivery(entry)
                else:
                    d.copies += 1
                self._write(entry, None, delay)

    def _write(self, entry: Entry, ack_id: str | None, delay: float) -> None:
        m = entry.message
        parts = [self._prefix]
        if ack_id is not None:
            parts.append(f"ack:{ack_id}\n".encode())
        if entry.redelivered:
            parts.append(b"redelivered:true\n")
        parts.append(m.head(self.connection.version))
        parts.append(m.body)
        parts.append(b"\x00")
        if delay:
            self.connection.loop.call_later(delay, self._write_late, parts, m.size)
        else:
            self.connection.write_parts(parts, m.size)

    def _write_late(self, parts: list[bytes], size: int) -> None:
        if not self.closed:
            self.connection.write_parts(parts, size)

    def overflow(self) -> None:
        """Its mailbox is over its limit because this consumer does not keep up."""
        self.connection.slow_consumer(self)

    def holds(self, key: str) -> bool:
        return key in self.unacked

    def settle(self, key: str, nack: bool = False, requeue: bool = True) -> None:
        """ACK or NACK the delivery ``key`` (cumulatively in ``client`` mode).

        A NACKed message goes back to the head of the queue for redelivery (RabbitMQ's
        behaviour) unless ``requeue`` is false, in which case it is discarded.
        """
        d = self.unacked.get(key)
        if d is None:
            what = "NACK" if nack else "ACK"
            raise ProtocolError(
                f"unexpected {what}",
                f"{what} {key!r} names no unacknowledged message of subscription {self.id!r}",
            )
        if self.cumulative:
            entries = []
            while True:
                k, d = self.unacked.popitem(last=False)
                entries.append(d.entry)
                if k == key:
                    break
        else:
            d.copies -= 1
            if not d.copies:
                del self.unacked[key]
            entries = [d.entry]
        box = self.mailbox
        if nack and requeue:
            box.requeue(entries)
            return
        for e in entries:
            box.ack(e)
        box.dispatch()

    def close(self) -> list[Entry]:
        """Detach from the mailbox; returns the entries that were still unacknowledged."""
        self.closed = True
        box = self.mailbox
        box.remove_consumer(self)
        entries = [d.entry for d in self.unacked.values()]
        self.unacked.clear()
        if box.kind != PRIVATE:
            box.requeue(entries)
        return entries
