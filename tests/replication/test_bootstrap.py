"""A new node bootstrapping a peer's history, killed with SIGKILL half-way: started
again, it asks only for what it lacks and converges.

Real ``vesper serve`` processes on an embedded broker; the new node applies through
tests/ui/slow_node.py (1 ms more per changeset, 25 per transaction), so that the
bootstrap lasts long enough to be killed in the middle.
"""

from __future__ import annotations

import re
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import NodeProcess, node_command, wait_for
from tests.replication.harness import new_channel
from tests.ui.slow_node import APPLY_DELAY
from vesper.broker.process import BrokerProcess
from vesper.history.revision import parse_revision
from vesper.replication import catchup

HISTORY = 4_000
ANSWERED = re.compile(r"answered B's catch-up request with (\d+) changesets")
SLOW_NODE = Path(__file__).parents[1] / "ui" / "slow_node.py"


@pytest.fixture
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    if request.config.getoption("--mq"):
        pytest.skip("starts its own embedded broker; covered by the default run")
    made = BrokerProcess(tmp_path / "broker", allow_anonymous=True)
    made.start()
    try:
        yield made
    finally:
        made.kill()


def start(
    folder: Path, branch: str, broker: BrokerProcess, channel: str, slow: bool
) -> NodeProcess:
    folder.mkdir(exist_ok=True)
    config = folder / "node.conf"
    config.write_text(
        f"branch_id = {branch!r}\nsave_history = True\nwork_dir = 'data'\n"
        f"replication_hosts = [('{broker.host}', {broker.port})]\n"
        f"replication_channel = {channel!r}\n"
    )
    command = node_command(config)
    env = None
    if slow:
        command[1:3] = [str(SLOW_NODE)]
        env = {APPLY_DELAY: "0.001"}
    # A log per start: the helper reads the URL from the first "serving" line in it.
    log = folder / f"node-{len(list(folder.glob('node-*.log')))}.log"
    return NodeProcess(command, folder, log, env).start()


def status(node: NodeProcess) -> dict[str, Any]:
    with node.client() as client:
        return client.get("/api/status").json()


def held(node: NodeProcess) -> int:
    return sum(parse_revision(status(node)["revision"]).values())


def stored(folder: Path) -> int:
    """Changesets committed to the store in ``folder``, read from its database file: a
    node applies catch-up batches before its HTTP server is up, and on a busy machine
    it has applied most of a small history by the time ``/api/status`` first answers."""
    try:
        with sqlite3.connect(f"file:{folder / 'data' / 'B.db'}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM changesets").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or its tables not yet
        return 0


def test_a_bootstrap_killed_half_way_resumes_without_fetching_again(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    channel = new_channel()
    a = start(tmp_path / "A", "A", broker, channel, slow=False)
    try:
        with httpx.Client(base_url=a.url, timeout=30) as client:
            for i in range(HISTORY):
                client.post("/api/objects", json={"id": f"h{i:05d}", "i": i}).raise_for_status()
        wait_for(lambda: status(a)["outbox"] == 0, lambda: "A's outbox drained")

        b = start(tmp_path / "B", "B", broker, channel, slow=True)
        wait_for(
            lambda: stored(tmp_path / "B") >= HISTORY // 4,
            lambda: f"B holds {stored(tmp_path / 'B')}",
            60,
        )
        b.stop(signal.SIGKILL)
        kept = stored(tmp_path / "B")
        assert HISTORY // 4 <= kept < HISTORY, "killed half-way, not before or after"
        answered_before = len(ANSWERED.findall(a.log()))

        again = start(tmp_path / "B", "B", broker, channel, slow=True)
        try:
            wait_for(
                lambda: status(again)["revision"] == status(a)["revision"],
                lambda: f"B holds {held(again)} of {HISTORY}",
                90,
            )
            mine, theirs = status(again), status(a)
            assert mine["digest"] == theirs["digest"] and mine["objects"] == HISTORY
            # Started again, it asked for what it lacked, not for the whole history: A
            # answered with no more than that. The first answer may have been sent in
            # full before B died (the rest then waited in B's queue, and B needed to ask
            # nothing); otherwise B asked again. What B received by catch-up may exceed
            # the lack by the batches of the first answer in flight when B died.
            answers = [int(n) for n in ANSWERED.findall(a.log())]
            first, later = answers[:answered_before], answers[answered_before:]
            assert later or first == [HISTORY], (answers, kept)
            assert all(0 < n <= HISTORY - kept for n in later), (answers, kept)
            fetched = mine["replication"]["catchup_changesets_received"]
            in_flight = catchup.ANSWER_WINDOW * catchup.ANSWER_BATCH
            assert 0 < fetched <= HISTORY - kept + in_flight, (fetched, kept)
        finally:
            again.kill()
    finally:
        a.kill()
