"""Slow or paused consumers cost bounded memory, and a consumer that does not read
never holds up publishers or other subscribers.

- A memory-only queue or durable subscription over its limit pauses its publishers
  (the messages have nowhere else to go); so does a plain subscription while fault
  injection has paused deliveries.
- A plain topic subscription that falls further behind is its consumer's problem:
  the consumer is disconnected, everybody else goes on at full speed.
"""

from __future__ import annotations

import threading
import time

from tests.broker.clients import RawClient, wait_until

LIMIT = 64 * 1024
#: One socket read the broker finishes before pausing a publisher, plus bookkeeping.
SLACK = 512 * 1024
COUNT = 20_000


def _publish_in_thread(port: int, destination: str, errors: list) -> threading.Thread:
    blob = b"".join(
        b"SEND\ndestination:%s\ncontent-length:1000\n\n%05d%s\x00"
        % (destination.encode(), i, b"x" * 995)
        for i in range(COUNT)
    )

    def run() -> None:
        r = RawClient(port, timeout=60)
        try:
            r.connect()
            r.send(blob)  # 20 MB: blocks once the broker stops reading
            r.frame("SEND", {"destination": destination, "receipt": "done"}, b"99999")
            assert r.read().headers["receipt-id"] == "done"
        except Exception as exc:
            errors.append(exc)
        finally:
            r.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _pending_bytes(broker) -> int:
    return broker.call(lambda: max(b.pending_bytes for b in broker.broker.router.all()))


def test_paused_delivery_pauses_the_publisher(start_broker, client) -> None:
    broker = start_broker(max_pending_bytes=LIMIT)
    sub = client(broker.port, **{"client-id": "flow"})  # a memory-only durable subscription
    sub.rec.on_message_hook = sub.ack
    sub.conn.subscribe(
        "/topic/flow",
        id="1",
        ack="client-individual",
        headers={"activemq.subscriptionName": "flow", "receipt": "s"},
    )
    sub.wait_receipt("s")
    broker.faults.pause()
    errors: list = []
    thread = _publish_in_thread(broker.port, "/topic/flow", errors)
    wait_until(lambda: broker.stats()["blocked_publishers"] == 1, what="publisher paused")
    assert _pending_bytes(broker) < LIMIT + SLACK
    other = client(broker.port)
    other.send_sync("/queue/unrelated", "the broker still serves others")
    broker.faults.resume()
    msgs = sub.wait_messages(COUNT + 1, timeout=60)
    thread.join(30)
    assert not errors
    assert [int(m.body[:5]) for m in msgs] == [*range(COUNT), 99999]


def test_paused_delivery_to_a_plain_subscriber_pauses_rather_than_drops(start_broker, client):
    broker = start_broker(max_pending_bytes=LIMIT)
    sub = client(broker.port)
    sub.conn.subscribe("/topic/flow", id="1", headers={"receipt": "s"})
    sub.wait_receipt("s")
    broker.faults.pause()  # nobody is slow: the broker itself holds deliveries back
    errors: list = []
    _publish_in_thread(broker.port, "/topic/flow", errors)
    wait_until(lambda: broker.stats()["blocked_publishers"] == 1, what="publisher paused")
    assert _pending_bytes(broker) < LIMIT + SLACK
    assert broker.stats()["subscriptions"] == 1 and not sub.rec.errors


class Counter(threading.Thread):
    """Reads a raw connection as fast as it can, counting frames and their times."""

    def __init__(self, r: RawClient, marker: bytes) -> None:
        super().__init__(daemon=True)
        self.r, self.marker = r, marker
        self.count = 0
        self.times: list[float] = []

    def run(self) -> None:
        self.r.sock.settimeout(60)
        tail = b""
        while True:
            try:
                data = self.r.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            data = tail + data
            n = data.count(self.marker)
            if n:
                now = time.monotonic()
                self.times.extend([now] * n)
                self.count += n
            tail = data[-len(self.marker) + 1 :]


def test_a_consumer_that_never_reads_is_disconnected_and_nobody_waits(broker_process, raw) -> None:
    # A subprocess, so that the broker does not share a GIL with the clients below.
    count, size = 16_000, 1000  # 16 MB: past any socket buffer of the stuck consumer
    broker = broker_process(args=("--max-pending-bytes", str(1024 * 1024)))
    stuck = raw(broker.port)
    stuck.connect(**{"client-id": "stuck-node"})
    stuck.frame("SUBSCRIBE", {"destination": "/topic/slow", "id": "never-read", "receipt": "s"})
    assert stuck.read().command == "RECEIPT"  # ... and it never reads again
    good = raw(broker.port)
    good.connect()
    good.frame("SUBSCRIBE", {"destination": "/topic/slow", "id": "reads", "receipt": "s"})
    assert good.read().command == "RECEIPT"
    reader = Counter(good, b"\nsubscription:reads\n")
    reader.start()
    pub = raw(broker.port, timeout=60)
    pub.connect()
    # Like Vesper's outbox: a window of SENDs, then their receipts, again and again.
    window = 200
    body = b"p" * size
    start = time.monotonic()
    slowest = 0.0
    for first in range(0, count, window):
        sent = time.monotonic()
        pub.send(
            b"".join(
                b"SEND\ndestination:/topic/slow\nreceipt:%d\ncontent-length:%d\n\n%s\x00"
                % (i, size, body)
                for i in range(first, first + window)
            )
        )
        for i in range(first, first + window):
            assert pub.read().headers["receipt-id"] == str(i)
        slowest = max(slowest, time.monotonic() - sent)
    elapsed = time.monotonic() - start
    wait_until(lambda: reader.count == count, timeout=60, what="the reading subscriber's copies")
    assert slowest < 2.0, f"a window of receipts took {slowest:.1f} s"
    assert elapsed < 30, elapsed
    status = broker.status()
    assert status["blocked_publishers"] == 0
    # The stuck consumer was dropped, with a WARNING naming it and its subscription.
    assert status["subscriptions"] == 1
    warnings = [line for line in broker.log_text().splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert "slow consumer" in warnings[0] and "'stuck-node'" in warnings[0]
    assert "'never-read'" in warnings[0]
    frames_read = stuck.read_until_closed(timeout=10)  # what was buffered, then ERROR
    assert frames_read[-1].command == "ERROR"
    assert frames_read[-1].headers["message"] == "slow consumer"
