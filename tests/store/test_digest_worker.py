"""The digest worker process: large transactions hand their objects to it in chunks, and
the digest comes out the same as the writer's own, also when the worker dies, hangs,
cannot start, or a transaction that used it rolls back."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.store.digest_reference import reference_buckets, reference_digest
from vesper.errors import StorageError
from vesper.store import Store, digest_worker, open_store
from vesper.store import digest as store_digest
from vesper.store.digest_worker import DigestWorker

CHUNK = 25
DEADLINE_S = 30.0


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_digest, "CHUNK", CHUNK)


class CountingWorker(DigestWorker):
    """A worker of the test's own that counts the chunks it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, added: Any, removed: Any) -> None:
        super().send(added, removed)
        self.sent += 1

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid


@pytest.fixture
def worker() -> Iterator[CountingWorker]:
    w = CountingWorker()
    yield w
    w.close()


def with_worker(store: Store, worker: DigestWorker | None) -> Store:
    store._digest._worker = worker
    return store


def assert_matches_definition(store: Store) -> None:
    live = list(store.query())
    _, digest, buckets = store.digest_buckets()
    assert digest == reference_digest(live)
    assert buckets == reference_buckets(live)


def documents(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "v": i, "tag": "x" * (i % 7), "f": i / 7} for i in range(n)]


def random_transactions(seed: int, rounds: int) -> Iterator[list[dict[str, Any]]]:
    rng = random.Random(seed)
    ids: list[str] = []
    for r in range(rounds):
        ops: list[dict[str, Any]] = []
        for i in range(rng.randrange(1, 4 * CHUNK)):
            kind = rng.random()
            if ids and kind < 0.3:
                ops.append(
                    {
                        "op": "update",
                        "id": ids.pop(rng.randrange(len(ids))),
                        "patch": {"v": rng.random(), "n": {"k": [r, i]}},
                    }
                )
            elif ids and kind < 0.4:
                ops.append({"op": "delete", "id": ids.pop(rng.randrange(len(ids)))})
            else:
                ops.append({"op": "create", "object": {"id": f"o{r}-{i}", "v": i}})
        ids = [op.get("id") or op["object"]["id"] for op in ops if op["op"] != "delete"]
        yield ops


def test_the_worker_and_the_writer_compute_the_same_digest(worker: CountingWorker) -> None:
    with_them = with_worker(open_store("mem://", "A"), worker)
    alone = with_worker(open_store("mem://", "A"), None)
    for ops in random_transactions(seed=7, rounds=12):
        with_them.transaction(ops)
        alone.transaction(ops)
        assert with_them.digest_buckets()[1:] == alone.digest_buckets()[1:]
    assert worker.sent > 0, "no chunk went to the worker: the test proved nothing"
    assert_matches_definition(with_them)


def test_remote_applies_hand_over_too(worker: CountingWorker) -> None:
    a = open_store("mem://", "A")
    a.create(documents("d", 10 * CHUNK))
    a.update("d3", {"v": "changed"})
    b = with_worker(open_store("mem://", "B"), worker)
    b.create({"id": "d3", "v": "concurrent"})
    b.apply_many(a.changesets())
    assert worker.sent > 0
    assert_matches_definition(b)


def test_a_rolled_back_transaction_leaves_nothing_in_the_worker(
    worker: CountingWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = with_worker(open_store("mem://", "A"), worker)
    real = Store._save_state

    def failing(self: Store, conn: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "_save_state", failing)
    with pytest.raises(StorageError):
        store.create(documents("lost", 6 * CHUNK))
    sent = worker.sent
    assert sent > 0
    monkeypatch.setattr(Store, "_save_state", real)
    # Had the worker kept the sums of the rolled-back chunks, they would count here.
    store.create(documents("kept", 6 * CHUNK))
    assert worker.sent > sent, "the worker was not used again after the rollback"
    assert_matches_definition(store)


def test_a_worker_killed_mid_transaction_is_replaced(
    worker: CountingWorker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = with_worker(open_store("mem://", "A"), worker)
    store.create(documents("warm", 2 * CHUNK))
    first = worker.pid
    assert first is not None
    real = DigestWorker.send
    worker.sent = 0

    def kill_after_the_first(self: DigestWorker, added: Any, removed: Any) -> None:
        real(self, added, removed)
        if worker.sent == 1:
            os.kill(first, signal.SIGKILL)
        worker.sent += 1

    monkeypatch.setattr(CountingWorker, "send", kill_after_the_first)
    store.create(documents("d", 8 * CHUNK))
    assert_matches_definition(store)
    assert "the digest worker process failed" in caplog.text
    monkeypatch.setattr(CountingWorker, "send", real)
    store.create(documents("e", 4 * CHUNK))
    assert worker.pid not in (None, first)
    assert_matches_definition(store)


@pytest.mark.parametrize("text_bytes", [10, 100_000], ids=["small", "pipe-filling"])
def test_a_hung_worker_is_killed_after_the_timeout(
    worker: CountingWorker, monkeypatch: pytest.MonkeyPatch, text_bytes: int
) -> None:
    """A stopped worker: the answer never comes, and with large objects the pipe to it
    fills (a chunk of 2.5 MB), so handing over would block without its deadline."""
    monkeypatch.setattr(digest_worker, "ANSWER_TIMEOUT_S", 1.0)
    store = with_worker(open_store("mem://", "A"), worker)
    store.create(documents("warm", 2 * CHUNK))
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    store.create([{**doc, "big": "x" * text_bytes} for doc in documents("d", 8 * CHUNK)])
    assert time.monotonic() - started < DEADLINE_S
    assert_matches_definition(store)
    assert worker.pid != pid


def test_a_worker_that_cannot_start_leaves_the_writer_alone(
    worker: CountingWorker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_process(*args: Any, **kwargs: Any) -> None:
        raise OSError("fork: Resource temporarily unavailable")

    monkeypatch.setattr(digest_worker.subprocess, "Popen", no_process)
    store = with_worker(open_store("mem://", "A"), worker)
    store.create(documents("d", 8 * CHUNK))
    assert_matches_definition(store)
    assert "the digest worker process failed" in caplog.text


def test_two_stores_take_turns_with_one_worker(tmp_path: Path, worker: CountingWorker) -> None:
    stores = [
        with_worker(open_store(f"sqlite:///{tmp_path}/{name}.db", name), worker)
        for name in ("A", "B")
    ]
    errors: list[BaseException] = []

    def write(store: Store, prefix: str) -> None:
        try:
            for round_ in range(5):
                store.create(documents(f"{prefix}{round_}-", 8 * CHUNK))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, s.branch_id)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    assert not errors
    assert worker.sent > 0
    for store in stores:
        assert_matches_definition(store)
        store.close()


def test_the_worker_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from vesper.store import open_store, digest
        from vesper.store.digest_worker import DigestWorker
        digest.CHUNK = {CHUNK}
        store = open_store("mem://", "A")
        worker = DigestWorker()
        store._digest._worker = worker
        store.create([{{"id": f"d{{i}}"}} for i in range({4 * CHUNK})])
        print(worker._proc.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + DEADLINE_S
    while _alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} outlived its killed parent"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
