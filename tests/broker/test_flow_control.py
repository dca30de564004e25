"""Slow or paused consumers cost bounded memory: publishers are paused, nothing is lost."""

from __future__ import annotations

import threading

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
    sub = client(broker.port)
    sub.conn.subscribe("/topic/flow", id="1", headers={"receipt": "s"})
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


def test_a_consumer_that_stops_reading_pauses_the_publisher(start_broker, client, raw) -> None:
    broker = start_broker(max_pending_bytes=LIMIT)
    stuck = raw(broker.port)
    stuck.connect()
    stuck.frame("SUBSCRIBE", {"destination": "/topic/slow", "id": "1", "receipt": "s"})
    assert stuck.read().command == "RECEIPT"  # and never reads again
    errors: list = []
    thread = _publish_in_thread(broker.port, "/topic/slow", errors)
    wait_until(lambda: broker.stats()["blocked_publishers"] == 1, what="publisher paused")
    assert _pending_bytes(broker) < LIMIT + SLACK
    stuck.close()  # the slow subscription goes away, and so does the back-pressure
    thread.join(60)
    assert not thread.is_alive() and not errors
