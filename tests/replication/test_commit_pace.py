"""When the sender takes local commits for a stream worth gathering into one message:
only commits that keep coming faster than STREAM_INTERVAL_S apart on average, so that
a few writers at a few hundred commits a second are each sent at once."""

from __future__ import annotations

from vesper.replication.sender import STREAM_INTERVAL_S, CommitPace


def paced(per_second: float, count: int, start: float = 0.0) -> tuple[CommitPace, float]:
    pace, now = CommitPace(), start
    for _ in range(count):
        pace.commit(now)
        now += 1 / per_second
    return pace, now


def test_a_fresh_node_is_not_streaming() -> None:
    assert not CommitPace().streaming
    pace = CommitPace()
    pace.commit(100.0)
    assert not pace.streaming


def test_a_busy_single_writer_streams() -> None:
    assert paced(2_000, 100)[0].streaming


def test_a_few_hundred_commits_a_second_do_not_stream() -> None:
    # 500/s from several writers, however long they last.
    assert not paced(500, 10_000)[0].streaming
    assert 1 / STREAM_INTERVAL_S > 500 * 1.2


def test_one_stall_does_not_end_a_stream() -> None:
    pace, now = paced(2_000, 100)
    now += 0.050  # a garbage collection or a checkpoint on the writer's thread
    pace.commit(now)
    assert pace.streaming


def test_a_stream_that_slows_down_stops_streaming() -> None:
    pace, now = paced(2_000, 100)
    for _ in range(40):
        now += 0.005
        pace.commit(now)
    assert not pace.streaming
