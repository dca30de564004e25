"""A damaged store is found: on open (SQLite's quick_check, the hash chain after the
checkpoint), while it runs (damaged pages, the background verification), and each check
against the ways to slip past it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.store import damage
from vesper.errors import StoreDamaged
from vesper.history.changeset import FORMAT_VERSION
from vesper.store import Store, integrity, open_store
from vesper.store import chain as chain_module
from vesper.store.chain import CHECKPOINT_KEY, ChainWalk, Checkpoint, Problems
from vesper.store.check import check_store
from vesper.trust.keys import NodeKey
from vesper.trust.signing import content_hash, sign

DEADLINE_S = 20.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_S} s: {what}")
        time.sleep(0.01)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


@pytest.fixture
def quiet_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """No background rounds: the checkpoint moves only on open and ``verify_chain``."""
    monkeypatch.setattr(integrity, "VERIFY_INTERVAL_S", 3600.0)


def opened(path: Path, branch: str = "A", **kwargs: Any) -> Store:
    return open_store(f"sqlite:///{path}", branch, **kwargs)


def fill(store: Store, n: int, payload: int = 0, prefix: str = "o") -> None:
    """``n`` changesets, one object each."""
    start = store.version_vector.get(store.branch_id, 0)
    for i in range(start, start + n):
        store.create({"id": f"{prefix}{i:05d}", "n": i, "text": "x" * payload})


def damaged_on_open(path: Path) -> str:
    with pytest.raises(StoreDamaged) as info:
        opened(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def stored_checkpoint(path: Path) -> Checkpoint:
    text = damage.meta(path, CHECKPOINT_KEY)
    return chain_module.decode_checkpoint(text) if text else Checkpoint()


def problems_of(path: Path) -> list[str]:
    return check_store(str(path)).problems.items


# -- open: the chain after the checkpoint ------------------------------------------


@pytest.mark.usefixtures("quiet_watch")
def test_open_rehashes_only_the_changesets_after_the_checkpoint(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with opened(path) as store:
        fill(store, 20)
        store.verify_chain()
        fill(store, 5)
    assert stored_checkpoint(path).origins == {"A": (20, damage.hash_of(path, "A.20"))}
    hashed = []

    def counting(body: Any) -> str:
        hashed.append(body["id"])
        return content_hash(body)

    monkeypatch.setattr(chain_module, "content_hash", counting)
    opened(path).close()
    # The checkpoint's own changeset, to trust it, then only what came after it.
    assert hashed == ["A.20", "A.21", "A.22", "A.23", "A.24", "A.25"]
    assert stored_checkpoint(path).seq == 25  # advanced by that open
    hashed.clear()
    damage.forget_checkpoint(path)
    opened(path).close()
    assert len(hashed) == 25


@pytest.mark.usefixtures("quiet_watch")
def test_a_changeset_altered_after_the_checkpoint_is_found_on_open(path: Path) -> None:
    with opened(path) as store:
        fill(store, 10)
        store.verify_chain()
        fill(store, 5)
    damage.alter(path, "A.12")
    message = damaged_on_open(path)
    assert "A.12 does not match the chain" in message and "A.13 names" in message
    assert "A.12 does not match the chain" in problems_of(path)[0]


@pytest.mark.usefixtures("quiet_watch")
def test_an_altered_last_changeset_is_found_against_the_state(path: Path) -> None:
    with opened(path) as store:
        fill(store, 5)
    damage.alter(path, "A.5")
    assert "A.5, the last of A, has content hash" in damaged_on_open(path)


@pytest.mark.usefixtures("quiet_watch")
def test_recomputing_the_next_prev_moves_the_break_to_the_next_link(path: Path) -> None:
    with opened(path) as store:
        fill(store, 6)
    altered = damage.alter(path, "A.3")
    # Repairing A.4's prev to name the altered A.3 changes A.4's own hash: A.5 then
    # no longer names it.
    damage.alter(path, "A.4", lambda body: body.update(prev=content_hash(altered)))
    message = damaged_on_open(path)
    assert "A.4 does not match the chain" in message and "A.5 names" in message
    assert len(problems_of(path)) == 1


@pytest.mark.usefixtures("quiet_watch")
def test_a_changeset_altered_before_the_checkpoint_is_found_by_the_full_check(
    path: Path,
) -> None:
    with opened(path) as store:
        fill(store, 10)
        store.verify_chain()
    damage.alter(path, "A.4")
    opened(path).close()  # by design: opening re-hashes only after the checkpoint
    problems = problems_of(path)
    assert len(problems) == 1 and "A.4 does not match the chain" in problems[0]


@pytest.mark.usefixtures("quiet_watch")
def test_the_changeset_the_checkpoint_names_is_rehashed_on_open(path: Path) -> None:
    with opened(path) as store:
        fill(store, 10)
        store.verify_chain()
        fill(store, 2)
    damage.alter(path, "A.10")
    message = damaged_on_open(path)
    assert "chain checkpoint" in message and "A.10, which now hashes to" in message


def _forged(path: Path, kind: str) -> str:
    good = stored_checkpoint(path)
    counter, digest = good.origins["A"]
    forged: dict[str, Any] = {
        "garbage": "{not json",
        "not an object": "[1, 2]",
        "wrong hash": Checkpoint(good.seq, {"A": (counter, "0" * 64)}).encode(),
        "bad entry": orjson.dumps({"seq": good.seq, "origins": {"A": [counter]}}).decode(),
        "not held": Checkpoint(good.seq, {"A": (99, digest)}).encode(),
        "past the end": Checkpoint(good.seq + 50, {"A": (counter, digest)}).encode(),
        "before its changeset": Checkpoint(good.seq - 1, {"A": (counter, digest)}).encode(),
    }
    return forged[kind]


@pytest.mark.usefixtures("quiet_watch")
@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "not an object",
        "wrong hash",
        "bad entry",
        "not held",
        "past the end",
        "before its changeset",
    ],
)
def test_a_damaged_checkpoint_is_damage_not_a_shortcut(path: Path, kind: str) -> None:
    with opened(path) as store:
        fill(store, 6)
        store.verify_chain()
    damage.set_meta(path, CHECKPOINT_KEY, _forged(path, kind))
    assert "chain checkpoint" in damaged_on_open(path)
    assert any("chain checkpoint" in p for p in problems_of(path))


# -- open: what the store legitimately holds ---------------------------------------


def remote(
    counter: int, prev: str | None, key: NodeKey | None = None, origin: str = "B"
) -> dict[str, Any]:
    """Changeset ``<origin>.<counter>``: format 1 when ``prev`` is None, signed with ``key``."""
    body: dict[str, Any] = {
        "id": f"{origin}.{counter}",
        "origin": origin,
        "revision": f"{origin}.{counter}",
        "base_revision": f"{origin}.{counter - 1}" if counter > 1 else "",
        "hlc": counter << 16,
        "time": "2026-01-01T00:00:00.000Z",
        "changes": [{"id": f"b{counter}", "op": "create", "exists": True, "set": {"n": 1.5}}],
    }
    if prev is not None:
        body = {"v": FORMAT_VERSION, **body, "prev": prev}
    return sign(body, key) if key is not None else body


def test_format_1_signed_and_covered_changesets_all_verify(path: Path) -> None:
    key = NodeKey.generate()
    b1 = remote(1, None)
    b2 = remote(2, None, key)  # format 1, signed when the upgraded origin re-sent it
    b3 = remote(3, content_hash(b2))  # the first chained one names a format-1 hash
    b4 = remote(4, content_hash(b3))  # covered by b5's signature: stored unsigned
    b5 = remote(5, content_hash(b4), key)
    with opened(path) as store:
        result = store.apply_many([b1, b2, b3, b4, b5])
        assert result.applied == ["B.1", "B.2", "B.3", "B.4", "B.5"] and not result.forks
        fill(store, 3)
    assert "sig" in damage.body_of(path, "B.5") and "sig" not in damage.body_of(path, "B.4")
    damage.forget_checkpoint(path)
    with opened(path) as store:
        store.verify_chain()
    assert check_store(str(path)).sound
    # A format-1 changeset has no link of its own: B.2 altered is found through B.3.
    damage.alter(path, "B.2")
    damage.forget_checkpoint(path)
    assert "B.2 does not match the chain" in damaged_on_open(path)


def test_an_absent_or_null_prev_of_a_first_changeset_is_no_link() -> None:
    for prev in ("absent", None, ""):
        body = remote(1, "")
        if prev == "absent":
            del body["prev"]
        else:
            body["prev"] = prev
        problems = Problems(5)
        walk = ChainWalk(Checkpoint(), "A", problems)
        walk.feed(1, "B", 1, orjson.dumps(body).decode())
        walk.finish({"vv": {"B": 1}, "heads": {"B": content_hash(body)}})
        assert not problems, problems.items
    problems = Problems(5)
    ChainWalk(Checkpoint(), "A", problems).feed(
        1, "B", 1, orjson.dumps(remote(1, "ab" * 32)).decode()
    )
    assert "first, yet names a prev" in problems.summary()


def test_own_commits_made_without_history_leave_a_gap_that_is_accepted(path: Path) -> None:
    with opened(path, save_history=False) as store:
        fill(store, 3)
    with opened(path) as store:
        fill(store, 2)
        assert [cs["id"] for cs in store.changesets()] == ["A.4", "A.5"]
    damage.forget_checkpoint(path)
    opened(path).close()
    assert check_store(str(path)).sound


def test_a_missing_changeset_of_another_origin_is_damage(path: Path) -> None:
    with opened(path) as store:
        store.apply_many([remote(1, ""), remote(2, content_hash(remote(1, "")))])
        store.apply(remote(3, content_hash(remote(2, content_hash(remote(1, ""))))))
    with damage.connect(path) as conn:
        conn.execute("DELETE FROM changesets WHERE origin = 'B' AND counter = 2")
    damage.forget_checkpoint(path)
    assert "changeset B.2 is missing" in damaged_on_open(path)


def test_an_unreadable_state_is_damage(path: Path) -> None:
    opened(path).close()
    damage.set_meta(path, "state", '{"vv": ')
    assert "state" in damaged_on_open(path)


# -- open: SQLite's quick_check -----------------------------------------------------


@pytest.mark.parametrize(
    ("spoil", "needle"),
    [(damage.overwrite_tail, "damaged"), (damage.overwrite_header, "not a database")],
)
def test_a_damaged_file_is_refused_on_open_and_left_as_it_was(
    path: Path, spoil: Callable[[Path], None], needle: str
) -> None:
    with opened(path) as store:
        store.transaction(
            [{"op": "create", "object": {"id": f"o{i}", "t": "x" * 200}} for i in range(500)]
        )
    spoil(path)
    before = path.read_bytes()
    assert needle in damaged_on_open(path)
    assert path.read_bytes() == before  # nothing was written to the damaged file
    opened(path.with_name("other.db")).close()  # and nothing of it stays locked


# -- while running ----------------------------------------------------------------


@pytest.fixture
def big(path: Path, quiet_watch: None) -> Iterator[Store]:
    """A store of a few MB whose pages are all in the database file."""
    store = opened(path)
    for start in range(0, 2000, 200):
        store.transaction(
            [
                {"op": "create", "object": {"id": f"o{i:05d}", "text": "y" * 300}}
                for i in range(start, start + 200)
            ]
        )
    fill(store, 1500, payload=300, prefix="p")
    damage.flush_wal(path)
    yield store
    store.close()


def _assert_failed(store: Store, caplog: pytest.LogCaptureFixture, needle: str) -> None:
    assert store.failure is not None and needle in store.failure
    with pytest.raises(StoreDamaged, match="takes no more writes") as info:
        store.create({"id": "after"})
    assert not info.value.retryable
    with pytest.raises(StoreDamaged):
        store.apply(remote(1, ""))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and needle in errors[0].getMessage()


def test_a_stream_over_a_damaged_page_raises_and_fails_the_store(
    big: Store, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damage.damage_middle_page(path, "changesets")
    seen = 0
    with pytest.raises(StoreDamaged, match="malformed"):
        for _ in big.changesets():
            seen += 1
    assert 0 < seen < 1510  # it raised midway: it did not end as if complete
    _assert_failed(big, caplog, "malformed")
    assert big.get("o00000") is not None  # what still reads well is still read


def test_a_query_over_a_damaged_page_raises(
    big: Store, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damage.damage_middle_page(path, "objects")
    with pytest.raises(StoreDamaged, match="malformed"):
        list(big.query())
    _assert_failed(big, caplog, "malformed")


def test_a_write_that_meets_a_damaged_page_fails_the_store(
    big: Store, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damage.damage_middle_page(path, "objects")
    big.db.fetch("PRAGMA shrink_memory")  # the writer forgets its cached pages
    with pytest.raises(StoreDamaged, match="malformed"):
        for i in range(3500):
            big.update(f"o{i:05d}", {"touched": True})
    _assert_failed(big, caplog, "malformed")


def test_stored_json_that_does_not_parse_is_damage(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with opened(path) as store:
        fill(store, 3)
        with damage.connect(path) as conn:
            conn.execute('UPDATE changesets SET body = \'{"id": "A.2", \' WHERE counter = 2')
        with pytest.raises(StoreDamaged, match="JSON"):
            list(store.changesets())
        _assert_failed(store, caplog, "JSON")


@pytest.mark.usefixtures("quiet_watch")
def test_verify_chain_finds_a_changeset_altered_while_running(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with opened(path) as store:
        fill(store, 5)
        store.verify_chain()
        fill(store, 5)
        damage.alter(path, "A.7")
        with pytest.raises(StoreDamaged, match=r"A\.7 does not match the chain"):
            store.verify_chain()
        _assert_failed(store, caplog, "A.7 does not match the chain")


def test_the_background_verification_advances_the_checkpoint_and_finds_damage(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(integrity, "VERIFY_INTERVAL_S", 0.02)
    with opened(path) as store:
        fill(store, 5)
        wait_until(lambda: stored_checkpoint(path).seq == 5, "checkpoint at A.5")
        assert stored_checkpoint(path).origins["A"] == (5, damage.hash_of(path, "A.5"))
        watch = store._watch
        assert watch is not None
        # Hold the next round back until the damage is done, so it is the one to see it.
        with watch._lock:
            fill(store, 3)
            damage.alter(path, "A.6")
        wait_until(lambda: store.failure is not None, "the store failed")
        _assert_failed(store, caplog, "A.6 does not match the chain")
        assert stored_checkpoint(path).seq == 5  # never advanced past the damage


def test_the_background_verification_stays_within_its_budget(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(integrity, "VERIFY_INTERVAL_S", 3600.0)
    with opened(path) as store:
        fill(store, 1200)
        watch = store._watch
        assert watch is not None
        watch.verify(0.0)  # stops after the first page
        assert stored_checkpoint(path).seq == chain_module.PAGE_ROWS
        watch.verify(None)
        assert stored_checkpoint(path).seq == 1200


def test_closing_stops_the_verification_thread(path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    with opened(path) as store:
        fill(store, 2)
        assert "vesper-chain" in {t.name for t in threading.enumerate()}
    wait_until(
        lambda: {t.name for t in threading.enumerate()} - before == set(),
        "the chain thread ended",
    )


def test_a_body_stored_under_another_id_or_out_of_order_is_damage() -> None:
    b1 = remote(1, "")
    b2 = remote(2, content_hash(b1))
    problems = Problems(5)
    walk = ChainWalk(Checkpoint(), "A", problems)
    walk.feed(1, "B", 1, orjson.dumps(b1).decode())
    walk.feed(2, "B", 3, orjson.dumps(b2).decode())  # the row says B.3, the body B.2
    assert "its stored body is not changeset B.3" in problems.summary()
    problems = Problems(5)
    walk = ChainWalk(Checkpoint(), "A", problems)
    walk.feed(1, "B", 2, orjson.dumps(b2).decode())
    walk.feed(2, "B", 1, orjson.dumps(b1).decode())
    assert "changeset B.1 is missing" in problems.items[0]
    assert "B.1 (seq 2) is stored after B.2: out of order" in problems.items[1]
