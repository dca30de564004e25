"""The seam between replication and the broker: what the sender, the apply worker and
catch-up need from one connection, and nothing about STOMP.

``StompLink`` (``link.py``) implements it over stomp.py for ActiveMQ, RabbitMQ and the
embedded broker, with every broker quirk behind ``subscribe``; the tests' in-memory
transport implements it to drive the sender, the apply worker and catch-up step by
step. The replication suites run against real brokers with ``--mq`` are the contract
test of the real one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vesper.errors import VesperError
from vesper.replication.brokers import BrokerProfile


@dataclass(frozen=True)
class Delivery:
    """A message as the apply worker needs it."""

    headers: dict[str, str]
    body: bytes
    generation: int
    """Which connection delivered it: acknowledgements go only to that one."""


class LinkError(VesperError):
    """A connection to a broker could not be made or was refused."""

    retryable = True


class Link(Protocol):
    """One connection to one broker. Callbacks given at creation receive deliveries,
    receipts and the loss of the connection; they run on the transport's own thread and
    must not block."""

    generation: int
    """Distinguishes this connection from earlier ones to the same node."""
    error: str | None
    """The broker's last error message, for logs."""

    @property
    def address(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    def connect(self) -> BrokerProfile:
        """Connect and log in; raises LinkError."""
        ...

    def subscribe(self, kind: str, channel: str, sub_id: str, acked: bool) -> None:
        """Subscribe to what arrives for ``kind`` on ``channel`` (``wire.CHANGESETS``:
        the channel topic, durably; ``wire.ANNOUNCE``: the sync topic, live only;
        ``wire.REQUEST``: this node's queue). ``acked`` deliveries wait for ``ack``."""
        ...

    def send(
        self, destination: str, body: bytes, headers: dict[str, str], receipt: str | None = None
    ) -> None:
        """Send; with ``receipt``, the broker confirms it stored the message by calling
        ``on_receipt(receipt)``."""
        ...

    def ack(self, headers: dict[str, str]) -> None:
        """Acknowledge the delivery with these headers and every earlier one of its
        subscription (acknowledgements are cumulative)."""
        ...

    def close(self) -> None: ...


OnMessage = Callable[[Delivery], None]
OnReceipt = Callable[[str], None]
OnLost = Callable[["Link"], None]
LinkFactory = Callable[[tuple[str, int], int, OnMessage, OnReceipt, OnLost], "Link"]
"""``factory(host, generation, on_message, on_receipt, on_lost)`` makes an unconnected
link."""
