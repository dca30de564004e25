"""What each broker needs, in one place (docs/replication.md).

The product is read from the CONNECTED frame's ``server`` header unless the
``replication_broker`` setting names it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

PREFETCH = 1000
"""Unacknowledged messages a broker may push to one subscription (flow control)."""

COILMQ = "coilmq"
COILMQ_FRAME_BYTES = 4096
"""coilmq's frame parser reads 4 KiB at a time and takes the end of a read for the end
of the frame's headers, or of its body when the final NUL byte is alone in the next
read: it closes the connection then. A frame of at most 4 KiB, written once while
coilmq has nothing else unread from this connection, arrives in one read (on loopback,
or any link whose packets hold 4 KiB)."""
COILMQ_REFUSES_12 = "Virtual hosting is not supported"
"""coilmq's ERROR to a STOMP 1.2 CONNECT whose ``host`` is not the broker machine's
fully qualified name: it speaks STOMP 1.1, which has no such check."""


@dataclass(frozen=True)
class BrokerProfile:
    name: str
    """activemq, rabbitmq, vesper, coilmq or unknown."""
    server: str
    """The CONNECTED frame's ``server`` header, for status."""
    queue_type: str = "classic"
    """On RabbitMQ, the type of the durable queues this node declares:
    ``replication_queue_type`` (see ``rabbitmq_queue``)."""

    @property
    def max_frame_bytes(self) -> int | None:
        """The largest frame, headers included, this broker takes (None: only the body
        ceiling of ``parts.PART_BYTES`` applies)."""
        return COILMQ_FRAME_BYTES if self.name == COILMQ else None

    @property
    def one_frame_in_flight(self) -> bool:
        """Whether every frame must wait for the broker's RECEIPT of the one before:
        coilmq fails on a frame that starts in the same read as the end of another."""
        return self.name == COILMQ

    @property
    def durable_topics(self) -> bool:
        """coilmq's topics keep nothing for a subscriber that is away and ignore
        acknowledgements: its topic subscriptions are plain ones, acknowledged
        automatically (catch-up brings what a node missed)."""
        return self.name != COILMQ

    def durable_topic_headers(self, branch_id: str, channel: str) -> dict[str, str]:
        """SUBSCRIBE headers for this node's durable subscription to a channel topic.

        ActiveMQ keys durable subscriptions on (client-id, subscriptionName); RabbitMQ
        on the subscription id, with durable:true and auto-delete:false (otherwise the
        queue is deleted on disconnect). The embedded broker takes either; headers of
        the other style are harmless elsewhere, but we send only what each needs.

        On RabbitMQ the queue is named here (``x-queue-name``) under the channel's own
        prefix, ``<channel>.<branch>~changesets`` (and ``~sync`` for announcements):
        its default name
        (``stomp-subscription-<hash>``) is one namespace for every channel, so no
        permission regex could keep a user of one channel off another channel's
        queues. Branch ids hold no ``.`` or ``~``, so this never names a node queue.
        """
        if self.name == COILMQ:
            return {}
        headers = {"activemq.prefetchSize": str(PREFETCH), "prefetch-count": str(PREFETCH)}
        if self.name in ("activemq", "unknown"):
            headers["activemq.subscriptionName"] = f"vesper-{channel}-{branch_id}"
        if self.name in ("rabbitmq", "vesper", "unknown"):
            headers.update({"durable": "true", "auto-delete": "false"})
        if self.name == "rabbitmq":
            headers["x-queue-name"] = subscription_queue(channel, branch_id)
            headers.update(self.rabbitmq_queue())
        if self.name == "vesper":
            # The embedded broker keeps this node's own changesets out of its
            # subscription: storing, delivering and acknowledging each of them only to
            # be skipped here cost a writer a third of its rate. (ActiveMQ's
            # activemq.noLocal would do the same, but changing a durable
            # subscription's options recreates it, dropping what it holds; RabbitMQ
            # has no equivalent.)
            headers["no-local"] = "true"
        return headers

    def sync_topic_headers(self, branch_id: str, channel: str) -> dict[str, str]:
        """SUBSCRIBE headers for the live (non-durable) announcements subscription:
        on RabbitMQ its auto-deleted queue is named under the channel's prefix too."""
        if self.name == "rabbitmq":
            return {"x-queue-name": f"{channel}.{branch_id}~sync"}
        return {}

    def expiry_headers(self, ttl_s: int) -> dict[str, str]:
        """SEND headers that make a message expire ``ttl_s`` seconds from now.

        RabbitMQ takes a relative ``expiration`` (milliseconds, counted on the broker
        from the message's arrival); ActiveMQ an absolute ``expires`` (milliseconds
        since 1970) from this node's clock, so a clock ahead of the broker's keeps
        messages longer and one behind shortens their life by the skew. The embedded
        broker takes either: the relative one, which skew does not touch.
        """
        ttl_ms = ttl_s * 1000
        if self.name in ("rabbitmq", "vesper"):
            return {"expiration": str(ttl_ms)}
        return {"expires": str(time.time_ns() // 1_000_000 + ttl_ms)}

    def queue_headers(self) -> dict[str, str]:
        # Queues are durable on every broker by default (RabbitMQ declares /queue/
        # destinations durable and not auto-deleted). coilmq keeps a queue's messages
        # (in memory) and sends a client-acknowledged subscription one at a time.
        if self.name == COILMQ:
            return {}
        headers = {"activemq.prefetchSize": str(PREFETCH), "prefetch-count": str(PREFETCH)}
        return {**headers, **self.rabbitmq_queue()}

    def send_headers(self, destination: str) -> dict[str, str]:
        """Headers every SEND to ``destination`` carries: on RabbitMQ a SEND to
        ``/queue/Q`` declares Q too, and refuses it if the type differs from Q's."""
        return self.rabbitmq_queue() if destination.startswith("/queue/") else {}

    def rabbitmq_queue(self) -> dict[str, str]:
        """The queue type argument of a durable RabbitMQ queue this node declares.

        A quorum queue is replicated to a majority of a cluster's nodes, so it outlives
        the node that holds it; a classic one is unavailable while that node is down.
        Quorum queues cannot be auto-deleted or exclusive, so the live announcements
        queue stays classic. Classic, the broker's default, is declared without the
        argument, as nodes did before the setting existed. Every node of a channel
        must use the same type: RabbitMQ refuses a declaration of a type other than the
        existing queue's (``inequivalent arg 'x-queue-type'``) and closes the connection.
        """
        if self.name == "rabbitmq" and self.queue_type != "classic":
            return {"x-queue-type": self.queue_type}
        return {}


def detect(server: str | None, configured: str | None = None) -> BrokerProfile:
    server = server or ""
    if configured:
        return BrokerProfile(configured, server)
    lowered = server.lower()
    for name in ("activemq", "rabbitmq", "vesper", COILMQ):
        if lowered.startswith(name):
            return BrokerProfile(name, server)
    return BrokerProfile("unknown", server)


def stomp_version(configured: str | None) -> str:
    """The STOMP version to speak before the broker is known: 1.2, but 1.1 to coilmq
    (named in ``replication_broker``, or after it refused 1.2)."""
    return "1.1" if configured == COILMQ else "1.2"


def heartbeats(configured: str | None, heartbeat_ms: int) -> int:
    """The heart-beat interval to ask for: none from coilmq, whose parser stalls on a
    heart-beat's lone end of line (a dead connection is then noticed by TCP alone)."""
    return 0 if configured == COILMQ else heartbeat_ms


def subscription_queue(channel: str, branch_id: str) -> str:
    """The RabbitMQ queue that holds a node's durable subscription to a channel."""
    return f"{channel}.{branch_id}~changesets"


def client_id(branch_id: str) -> str:
    """The CONNECT ``client-id``: stable per node, so ActiveMQ resumes its durable
    subscriptions after a restart."""
    return f"vesper-{branch_id}"
