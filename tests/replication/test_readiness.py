"""``ReplicationService.ready_problems``: what turns ``/ready`` 503, and back.

On the in-memory transport: no broker for longer than the timeout, changesets pending
for a predecessor nobody sends, and an apply that does not finish. (The HTTP side, with
a real broker stopped and restarted, is in tests/api/test_status.py.)
"""

from __future__ import annotations

import threading
from typing import Any

from tests.replication.harness import wait_for
from tests.replication.memory_transport import Make, MemoryBroker, MemoryNode
from vesper.replication import wire

TIMEOUT_S = 1.0


def problems(n: MemoryNode) -> list[str]:
    return n.service.ready_problems()


def has_problem(n: MemoryNode, words: str) -> bool:
    return any(words in p for p in problems(n))


def test_no_broker_for_longer_than_the_timeout_and_back(broker: MemoryBroker, node: Make) -> None:
    a = node("A", ready_timeout_s=TIMEOUT_S)
    assert problems(a) == []
    assert a.status()["connected_since"] is not None
    assert a.status()["disconnected_since"] is None
    broker.up = False
    a.link.lose()
    wait_for(lambda: has_problem(a, "disconnected from every broker"), 10, lambda: str(problems(a)))
    status = a.status()
    assert status["connected"] is None and status["disconnected_since"].endswith("Z")
    assert "memory broker is down" in status["last_error"]
    assert status["problems"] == problems(a)
    broker.up = True
    wait_for(lambda: problems(a) == [], 20, lambda: str(problems(a)))
    assert a.status()["connected"] is not None


def test_changesets_pending_for_a_predecessor_nobody_sends(
    broker: MemoryBroker, node: Make
) -> None:
    a = node("A")
    b = node("B", ready_timeout_s=TIMEOUT_S)
    held = True

    def lose(destination: str, headers: dict[str, str], body: bytes) -> bool:
        # A.1 never reaches B, and neither does a catch-up answer while held.
        first = destination == wire.topic("c") and b'"id":"A.1"' in body
        return first or (held and destination == wire.node_queue("c", "B"))

    broker.drop = lose
    a.store.create({"id": "one"})
    wait_for(lambda: a.store.outbox_count == 0, 10, "A.1 sent (and lost) alone")
    a.store.create({"id": "two"})
    wait_for(lambda: b.store.pending_count == 1, 10, "A.2 pending on B")
    wait_for(lambda: has_problem(b, "changesets pending"), 10, lambda: str(problems(b)))
    held = False
    wait_for(lambda: b.store.pending_count == 0, 30, "A.1 fetched by catch-up")
    wait_for(lambda: problems(b) == [], 10, lambda: str(problems(b)))


def test_an_apply_that_does_not_finish(broker: MemoryBroker, node: Make) -> None:
    a = node("A")
    b = node("B", ready_timeout_s=TIMEOUT_S)
    release = threading.Event()
    apply = b.store.apply_parsed

    def slow_apply(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return apply(*args, **kwargs)

    b.store.apply_parsed = slow_apply  # type: ignore[method-assign]
    try:
        a.store.create({"id": "x"})
        wait_for(
            lambda: has_problem(b, "the apply worker has run one batch"),
            10,
            lambda: str(problems(b)),
        )
    finally:
        release.set()
    wait_for(lambda: b.store.get("x"), 10, "x applied on B")
    wait_for(lambda: problems(b) == [], 10, lambda: str(problems(b)))
