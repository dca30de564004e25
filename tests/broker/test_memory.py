"""The global memory budget (``--max-memory``): unfinished frames and held messages of
all connections together, counted by the broker itself."""

from __future__ import annotations

import contextlib
import socket

import pytest

from tests.broker.clients import wait_until
from vesper.broker import BrokerConfigError
from vesper.broker.memory import MemoryBudget
from vesper.broker.units import parse_duration, parse_size

MiB = 1024 * 1024
BUDGET = 8 * MiB
FRAME = 6 * MiB
ATTACKERS = 5
#: Each attacker sends this much of its FRAME-byte frame, and never the rest.
SENT = 5 * MiB
CHUNK = 64 * 1024


def test_partial_frame_attack_stays_within_budget(start_broker, client, raw, caplog) -> None:
    broker = start_broker(max_memory=BUDGET, max_frame_bytes=FRAME)
    bystander = client(broker.port)
    bystander.conn.subscribe("/queue/ok", id="1", headers={"receipt": "r"})
    bystander.wait_receipt("r")
    attackers = [raw(broker.port) for _ in range(ATTACKERS)]
    head = b"SEND\ndestination:/queue/big\ncontent-length:%d\n\n" % (FRAME - 100)
    for a in attackers:
        a.connect()
        a.send(head)
    alive = set(range(ATTACKERS))
    peak_seen = 0
    chunk = b"x" * CHUNK
    for _ in range(SENT // CHUNK):  # interleaved, as five slow clients would
        for i in sorted(alive):
            try:
                attackers[i].send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                alive.discard(i)
        memory = broker.stats()["memory"]
        peak_seen = max(peak_seen, memory["used"])
        assert memory["used"] <= BUDGET, memory
    memory = broker.stats()["memory"]
    assert memory["peak"] <= BUDGET and peak_seen <= BUDGET
    assert memory["evicted_connections"] >= ATTACKERS - 1  # one 5 MiB frame fits in 8
    assert memory["partial_frames"] <= BUDGET
    refused = 0
    for a in attackers:
        with contextlib.suppress(TimeoutError, socket.timeout):
            frames = a.read_until_closed(timeout=0.5)
            if frames and frames[-1].headers.get("message") == "memory budget exceeded":
                assert "--max-memory" in frames[-1].body.decode()
                refused += 1
    assert refused >= ATTACKERS - 1
    assert any(
        r.levelname == "WARNING" and "unfinished frame holds" in r.getMessage()
        for r in caplog.records
    )
    # Everybody else is served, big frames included.
    bystander.send_sync("/queue/ok", "y" * MiB)
    assert len(bystander.wait_messages(1)[0].body) == MiB
    wait_until(lambda: broker.stats()["memory"]["held_messages"] == 0, what="message acked")


def test_largest_unfinished_frame_goes_first() -> None:
    closed: list[str] = []

    class Holder:
        def __init__(self, name: str) -> None:
            self.name = name
            self.partial = 0

        def evict_for_memory(self, used: int, limit: int) -> None:
            closed.append(self.name)
            budget.set_partial(self, 0)

    budget = MemoryBudget(1000)
    small, big, new = Holder("small"), Holder("big"), Holder("new")
    budget.set_partial(small, 200)
    budget.set_partial(big, 700)
    budget.set_partial(new, 300)  # 1200 > 1000: "big" goes, not the newcomer
    assert closed == ["big"]
    assert budget.used == 500 and budget.peak == 900 and budget.evicted == 1  # never 1200
    budget.take(400)
    budget.set_partial(new, 500)  # 1100: "new" is now the largest
    assert closed == ["big", "new"]
    assert budget.stats()["held_messages"] == 400


def test_held_messages_are_counted_and_released(start_broker, client) -> None:
    broker = start_broker()
    pub = client(broker.port)
    for _ in range(10):
        pub.conn.send("/queue/held", "z" * 1000)
    pub.send_sync("/queue/held", "last")
    held = broker.stats()["memory"]["held_messages"]
    assert held >= 10 * 1000
    sub = client(broker.port)
    sub.conn.subscribe("/queue/held", id="1", ack="client-individual")
    msgs = sub.wait_messages(11)
    assert broker.stats()["memory"]["held_messages"] == held  # in flight: still held
    for m in msgs:
        sub.ack(m)
    wait_until(lambda: broker.stats()["memory"]["held_messages"] == 0, what="all released")


def test_stored_mailboxes_spill_when_the_budget_is_short(start_broker, client, tmp_path):
    """With a data folder, held messages beyond half the budget stay on disk only."""
    broker = start_broker(data_dir=tmp_path / "d", max_memory=2 * MiB, max_frame_bytes=MiB)
    pub = client(broker.port)
    for i in range(50):  # 50 x 100 KiB = 5 MiB into queues that nobody reads
        pub.conn.send(f"/queue/q{i % 5}", "b" * 100_000)
    pub.send_sync("/queue/sync", "sync")
    stats = broker.stats()
    assert stats["memory"]["held_messages"] <= MiB + 200_000
    assert sum(stats["queues"].values()) == 51  # nothing lost: the rest is on disk
    assert stats["blocked_publishers"] == 0


def test_memory_only_queues_pause_pure_publishers(start_broker, client, raw) -> None:
    broker = start_broker(max_memory=2 * MiB, max_frame_bytes=MiB, max_pending_bytes=64 * MiB)
    r = raw(broker.port)
    r.connect()
    for _ in range(30):  # 3 MB into a memory-only queue: over half the budget
        with contextlib.suppress(TimeoutError):
            r.frame("SEND", {"destination": "/queue/mem"}, b"m" * 100_000)
    wait_until(lambda: broker.stats()["blocked_publishers"] == 1, what="publisher paused")
    assert broker.stats()["memory"]["paused_publishers"] == 1
    sub = raw(broker.port)
    sub.connect()
    sub.frame("SUBSCRIBE", {"destination": "/queue/mem", "id": "1"})
    for _ in range(30):
        assert sub.read().command == "MESSAGE"
    wait_until(lambda: broker.stats()["blocked_publishers"] == 0, what="publisher resumed")


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("256MiB", 256 << 20), ("512 KiB", 512 << 10), ("1GB", 10**9)],
)
def test_sizes(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000)]
)
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


def test_bad_units_name_the_option() -> None:
    with pytest.raises(BrokerConfigError, match="--max-memory '12 parsecs' is not a size"):
        parse_size("12 parsecs", "--max-memory")
    with pytest.raises(BrokerConfigError, match="--durable-expiry 'soon' is not a duration"):
        parse_duration("soon", "--durable-expiry")


def test_a_frame_larger_than_the_budget_is_a_config_error(start_broker) -> None:
    with pytest.raises(BrokerConfigError, match="exceeds max_memory"):
        start_broker(max_memory=MiB, max_frame_bytes=2 * MiB)
