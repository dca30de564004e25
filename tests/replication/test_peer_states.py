"""Where each peer stands: ``behind_us``, ``ahead_of_us``, their ages and the state.

The rules are unit-tested on ``peer_state.Standing`` with a hand-moved clock; the
in-memory transport then shows them on real services: a peer that cannot get what it
lacks turns stuck on both sides, catches up and is in sync again, a silent one is gone,
and a thousand invented peers keep the status small.
"""

from __future__ import annotations

import logging
import re
import time

import orjson
import pytest

from tests.replication.harness import wait_for
from tests.replication.memory_transport import Make, MemoryBroker, MemoryNode
from vesper.replication import catchup, peer_state, wire
from vesper.replication.peer_state import (
    CATCHING_UP,
    GONE,
    IN_SYNC,
    STUCK,
    ChangesetTimes,
    Standing,
)

# -- the rules -----------------------------------------------------------------------


def test_no_difference_is_in_sync_and_silence_is_gone() -> None:
    standing = Standing()
    standing.update({"A": 3}, {"A": 3}, now=100.0)
    assert (standing.behind_us, standing.ahead_of_us) == (0, 0)
    assert standing.state(100.0, silent_s=1.0, gone_after_s=60) == IN_SYNC
    assert standing.state(200.0, silent_s=60.0, gone_after_s=60) == GONE


def test_counts_go_both_ways() -> None:
    standing = Standing()
    standing.update({"A": 10, "B": 2}, {"A": 4, "B": 5, "C": 1}, now=0.0)
    assert standing.behind_us == 6  # A.5 .. A.10 are here, not there
    assert standing.ahead_of_us == 4  # B.3 .. B.5 and C.1 are there, not here


def test_a_fresh_difference_is_in_flight_then_stuck_unless_it_shrinks() -> None:
    standing = Standing()
    standing.update({"A": 1}, {"A": 1}, now=0.0)
    standing.update({"A": 5}, {"A": 1}, now=1.0)  # four commits here, not yet there
    assert standing.state(1.0, 0.5, 60) == IN_SYNC
    late = 1.0 + peer_state.SYNC_GRACE_S
    assert standing.state(late, 0.5, 60) == CATCHING_UP
    # The peer announces the same revision again and again: no progress.
    standing.update({"A": 5}, {"A": 1}, now=late)
    assert standing.state(1.0 + peer_state.STUCK_AFTER_S, 0.5, 60) == STUCK
    # It got two of them: the difference shrank.
    now = 2.0 + peer_state.STUCK_AFTER_S
    standing.update({"A": 5}, {"A": 3}, now=now)
    assert standing.state(now + 1, 0.5, 60) == CATCHING_UP
    assert standing.behind_us == 2
    standing.update({"A": 5}, {"A": 5}, now=now + 2)
    assert standing.state(now + 2, 0.5, 60) == IN_SYNC and standing.behind is None


def test_a_difference_seen_at_first_sight_is_not_taken_for_one_in_flight() -> None:
    """A node returning 20,000 changesets behind is catching up, not in sync."""
    standing = Standing()
    standing.update({"A": 20_000}, {}, now=0.0)
    assert standing.state(0.0, 0.0, 60) == CATCHING_UP
    assert standing.state(peer_state.STUCK_AFTER_S, 0.0, 60) == STUCK


def test_what_a_quiet_peer_lacks_is_not_in_flight_also_once_it_is_back() -> None:
    """Written while the peer was away (or just before it went quiet): it comes back
    catching up, not in sync, however fresh the writes, until it has them."""
    standing = Standing()
    standing.update({"A": 1}, {"A": 1}, now=0.0)
    standing.update({"A": 50}, {"A": 1}, now=1.0)  # in flight, as far as we know
    assert standing.state(1.0, 0.5, 60) == IN_SYNC
    standing.update({"A": 300}, {"A": 1}, now=2.0, quiet=True)  # it went quiet
    assert standing.state(2.0, 9.0, 60) == CATCHING_UP
    standing.update({"A": 300}, {"A": 40}, now=3.0)  # back, and catching up
    assert standing.state(3.0, 0.1, 60) == CATCHING_UP
    standing.update({"A": 300}, {"A": 60}, now=4.0)  # past the first mark: the rest
    assert standing.state(4.0, 0.1, 60) == CATCHING_UP
    standing.update({"A": 300}, {"A": 300}, now=5.0)
    assert standing.state(5.0, 0.1, 60) == IN_SYNC
    standing.update({"A": 305}, {"A": 300}, now=6.0)  # fresh writes: in flight again
    assert standing.state(6.0, 0.1, 60) == IN_SYNC


def test_a_peer_that_caught_up_under_a_steady_stream_of_writes_is_in_sync_again() -> None:
    standing = Standing()
    standing.update({"A": 300}, {"A": 1}, now=0.0, quiet=True)
    standing.update({"A": 320}, {"A": 300}, now=1.0)  # covered; 20 newer remain
    assert standing.state(1.0, 0.1, 60) == CATCHING_UP
    for second in range(2, 30):
        # Each announcement covers what this node had a second before.
        standing.update({"A": 320 + 20 * second}, {"A": 300 + 20 * second}, now=float(second))
    assert standing.state(29.0, 0.1, 60) == IN_SYNC
    assert standing.behind_us == 20


def test_catchup_traffic_counts_as_progress() -> None:
    standing = Standing()
    standing.update({}, {"B": 5_000}, now=0.0)
    for second in range(1, 100):
        # The revision stays (the batches are being applied, not yet announced as
        # this node's), but every batch moves the catch-up.
        standing.update({}, {"B": 5_000}, now=float(second))
        standing.moved(float(second))
        assert standing.state(float(second), 0.5, 60) == CATCHING_UP
    assert standing.ahead_seconds(99.0) == 99.0


def test_a_steady_stream_of_writes_stays_in_sync() -> None:
    """A busy peer is always a little ahead; what it had a moment ago has arrived."""
    standing = Standing()
    standing.update({"B": 0}, {"B": 0}, now=0.0)
    for second in range(1, 200):
        mine = {"B": 10 * second - 5}  # the last five are in flight
        standing.update(mine, {"B": 10 * second}, now=float(second))
        assert standing.ahead_of_us == 5
        assert standing.state(float(second), 0.5, 60) == IN_SYNC
        assert standing.ahead_seconds(float(second)) is not None
        assert standing.ahead_seconds(float(second)) <= 1.0


def test_a_big_gap_is_reported_once_per_episode_when_the_peer_says_so() -> None:
    standing = Standing()
    standing.update({}, {"B": peer_state.BIG_GAP}, now=0.0)
    assert standing.big_gap(True) and not standing.big_gap(True)
    standing.update({"B": peer_state.BIG_GAP}, {"B": peer_state.BIG_GAP}, now=1.0)
    standing.update({"B": 1}, {"B": 1 + 2 * peer_state.BIG_GAP}, now=2.0)
    # Nothing heard from the peer since the last comparison: this node moved, not it.
    assert not standing.big_gap(False)
    assert standing.big_gap(True)


def test_changeset_times_are_read_once_and_within_a_budget() -> None:
    reads: list[str] = []

    def lookup(changeset_id: str) -> dict[str, int] | None:
        reads.append(changeset_id)
        counter = int(changeset_id.rpartition(".")[2])
        return {"hlc": (1_000 * counter) << 16}

    times = ChangesetTimes(lookup)
    mine = {"A": 9, "B": 4}
    assert times.oldest_lacking_ms(mine, {"A": 6, "B": 1}, [10]) == 2_000  # B.2
    assert sorted(reads) == ["A.7", "B.2"]
    assert times.oldest_lacking_ms(mine, {"A": 6, "B": 1}, [0]) == 2_000  # cached
    assert times.oldest_lacking_ms(mine, {"A": 2, "B": 4}, [0]) is None  # A.3: no budget
    assert times.oldest_lacking_ms(mine, mine, [0]) is None  # nothing lacking
    assert len(reads) == 2


# -- on replication services ---------------------------------------------------------


@pytest.fixture
def quick_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """States that change within a test's patience."""
    monkeypatch.setattr(peer_state, "SYNC_GRACE_S", 0.5)
    monkeypatch.setattr(peer_state, "STUCK_AFTER_S", 1.5)


def peer(n: MemoryNode, branch: str) -> dict | None:
    return n.status()["peers"].get(branch)


def peer_is(n: MemoryNode, branch: str, **expected: object) -> bool:
    info = peer(n, branch)
    return info is not None and all(info.get(k) == v for k, v in expected.items())


def test_a_peer_that_cannot_get_what_it_lacks_is_stuck_on_both_sides_until_it_catches_up(
    broker: MemoryBroker,
    node: Make,
    quick_states: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vesper.replication")
    monkeypatch.setattr(peer_state, "BIG_GAP", 150)
    monkeypatch.setattr(catchup, "PROGRESS_LOG_S", 0.0)
    a, b = node("A"), node("B")
    a.store.create({"id": "first"})
    wait_for(lambda: peer_is(a, "B", state=IN_SYNC, behind_us=0, ahead_of_us=0), 10, "B in sync")
    wait_for(lambda: peer_is(b, "A", state=IN_SYNC, behind_us=0, ahead_of_us=0), 10, "A in sync")
    assert peer(a, "B")["last_heard"].endswith("Z")

    # B gets neither A's changesets nor catch-up answers; announcements still flow.
    def lost(destination: str, headers: dict[str, str], body: bytes) -> bool:
        return destination in (wire.topic("c"), wire.node_queue("c", "B"))

    broker.drop = lost
    for i in range(300):
        a.store.create({"id": f"d{i}"})
    wait_for(lambda: peer_is(a, "B", behind_us=300, state=STUCK), 30, lambda: str(peer(a, "B")))
    wait_for(lambda: peer_is(b, "A", ahead_of_us=300, state=STUCK), 30, lambda: str(peer(b, "A")))
    on_a, on_b = peer(a, "B"), peer(b, "A")
    assert on_a["ahead_of_us"] == 0 and on_b["behind_us"] == 0
    assert on_b["lag"] == 300  # the old name of ahead_of_us
    # The oldest changeset B lacks was written moments ago; B has lacked them as long.
    assert 0 <= on_a["behind_us_s"] < 60 and on_a["ahead_of_us_s"] is None
    assert on_b["ahead_of_us_s"] >= peer_state.STUCK_AFTER_S - 1
    assert on_b["behind_us_s"] is None

    def logged(pattern: str) -> bool:
        return any(re.fullmatch(pattern, r.getMessage()) for r in caplog.records)

    # The gap is logged when an announcement shows it: B's next one (idle: within 5 s).
    wait_for(lambda: logged(r"peer B is ~\d+ changesets behind this node"), 15, "A's line")
    wait_for(
        lambda: logged(r"this node lacks ~\d+ changesets that peer A has: catching up"),
        15,
        "B's line",
    )

    broker.drop = lambda destination, headers, body: False
    wait_for(lambda: b.store.revision == a.store.revision, 30, "B caught up")
    wait_for(lambda: peer_is(a, "B", state=IN_SYNC, behind_us=0), 30, lambda: str(peer(a, "B")))
    wait_for(lambda: peer_is(b, "A", state=IN_SYNC, ahead_of_us=0), 30, lambda: str(peer(b, "A")))
    lines = [r.getMessage() for r in caplog.records if r.name == "vesper.replication.catchup"]
    # The answering side said how far it got, with a rate; the asking side when done.
    assert any(m.startswith("answering B's catch-up: ") and "/s" in m for m in lines), lines
    assert any(m.startswith("catch-up from A done: ") for m in lines), lines


def test_the_asking_side_logs_its_catch_up_progress_with_the_time_left(
    broker: MemoryBroker,
    node: Make,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vesper.replication")
    monkeypatch.setattr(catchup, "PROGRESS_LOG_S", 0.0)
    a, b = node("A"), node("B")
    wait_for(lambda: peer_is(b, "A"), 10, "A listed on B")

    # B gets A's changesets only by catch-up, and of each answer only the first batch:
    # its request stays open, part done, until it times out.
    def held(destination: str, headers: dict[str, str], body: bytes) -> bool:
        if destination == wire.topic("c"):
            return True
        return destination == wire.node_queue("c", "B") and int(headers.get(wire.BATCH, 0)) > 1

    broker.drop = held
    for i in range(2000):
        a.store.create({"id": f"p{i}", "pad": "x" * 200})

    def progress_line() -> bool:
        return any(
            re.fullmatch(
                # ~N: B may ask while A is still writing, for what A has by then.
                r"catch-up from A: [1-9]\d* of ~\d+ changesets in \d+ s"
                r" \(\d+/s, about \d+ s left\)",
                r.getMessage(),
            )
            for r in caplog.records
        )

    wait_for(progress_line, 30, lambda: str([r.getMessage() for r in caplog.records][-5:]))
    broker.drop = lambda destination, headers, body: False
    wait_for(lambda: b.store.revision == a.store.revision, 60, "B caught up")


def test_a_peer_silent_past_the_expiry_is_forgotten(
    broker: MemoryBroker, node: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vesper.replication")
    a = node("A", peer_gone_after_s=1.0, peer_expiry_s=2.5)
    b = node("B")
    wait_for(lambda: peer_is(a, "B", state=IN_SYNC), 10, "B listed on A")
    b.service.stop()
    wait_for(lambda: peer_is(a, "B", state=GONE), 10, lambda: str(peer(a, "B")))
    wait_for(lambda: peer(a, "B") is None, 10, lambda: str(peer(a, "B")))
    assert any(r.getMessage() == "peer B silent for 2 s: forgotten" for r in caplog.records)


def test_a_silent_peer_is_gone_and_comes_back(broker: MemoryBroker, node: Make) -> None:
    a = node("A", peer_gone_after_s=1.0)
    b = node("B")
    wait_for(lambda: peer_is(a, "B", state=IN_SYNC), 10, "B listed on A")
    b.service.stop()
    wait_for(lambda: peer_is(a, "B", state=GONE), 10, lambda: str(peer(a, "B")))
    b2 = MemoryNode(broker, "B", key=b.key, storage_url="mem://")
    try:
        b2.start()
        wait_for(lambda: peer_is(a, "B", state=IN_SYNC), 10, lambda: str(peer(a, "B")))
    finally:
        b2.stop()


def test_a_thousand_invented_peers_keep_the_status_small(node: Make) -> None:
    a = node("A")
    a.store.create({"id": "x"})
    anti_entropy = a.service.anti_entropy["c"]
    now_ms = int(time.time() * 1000)
    for i in range(catchup.MAX_PEERS + 50):
        anti_entropy.on_announce(
            {
                "type": "announce",
                "branch": f"F{i:04d}",
                "revision": f"F{i:04d}.1",
                "time_ms": now_ms,
            }
        )
    started = time.monotonic()
    status = a.status()
    took = time.monotonic() - started
    peers = status["peers"]
    assert len(peers) == catchup.MAX_PEERS
    size = len(orjson.dumps(status))
    # Room under the 256 KiB the attack tests allow, for names longer than F0999.
    assert size < 230 * 1024, size
    assert took < 2.0, took
    some = peers["F0999"]
    assert some["behind_us"] == 1 and some["ahead_of_us"] == 1
    assert some["behind_us_s"] is not None  # A.1 is read once for all of them
    assert some["state"] in (CATCHING_UP, IN_SYNC)
