"""``/metrics`` passes ``promtool check metrics`` (Debian's ``prometheus`` package;
scripts/test installs it), on a plain node and on replicating ones, whose per-peer
gauges and replication counters are there."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import sample
from tests.replication.harness import wait_for
from vesper.api import create_app
from vesper.broker.process import BrokerThread
from vesper.config import Settings
from vesper.node import Node

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's prometheus package (scripts/test does)",
)


def promtool_check(text: str) -> None:
    assert PROMTOOL is not None
    run = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"promtool check metrics:\n{run.stdout}{run.stderr}"


@needs_promtool
def test_a_plain_node_passes_promtool(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "pm1"}).raise_for_status()
    http.get("/api/objects/pm1").raise_for_status()
    text = http.get("/metrics").text
    assert "vesper_revision_changesets" in text and "_counter" not in text
    promtool_check(text)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """Two replicating nodes on an embedded broker in this process."""
    broker = BrokerThread().start()
    channel = f"m{uuid.uuid4().hex[:10]}"
    nodes: list[Node] = []
    try:
        for branch in ("MA", "MB"):
            settings = Settings(
                branch_id=branch,
                save_history=True,
                storage_url="mem://",
                work_dir=str(tmp_path),
                replication_hosts=((broker.host, broker.port),),
                replication_channel=channel,
            )
            nodes.append(Node(settings).start())
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.close()
        broker.stop()


@needs_promtool
def test_replicating_nodes_pass_promtool_with_peer_gauges(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.store.create({"id": "x"})
    wait_for(lambda: b.store.get("x"), 30, "x on MB")
    in_sync = {"state": "in_sync", "behind_us": 0, "ahead_of_us": 0}
    wait_for(
        lambda: in_sync.items() <= a.status()["replication"]["peers"].get("MB", {}).items(),
        30,
        lambda: str(a.status()["replication"]["peers"]),
    )
    text = create_app(a).metrics.render().decode()
    promtool_check(text)
    assert sample(text, "vesper_replication_peer_behind_changesets", peer="MB") == 0
    assert sample(text, "vesper_replication_peer_ahead_changesets", peer="MB") == 0
    assert sample(text, "vesper_replication_peers", state="in_sync") == 1
    assert sample(text, "vesper_replication_peers", state="stuck") == 0
    assert sample(text, "vesper_replication_conflicts_total") == 0
    assert sample(text, "vesper_replication_forks_total") == 0
    assert sample(text, "vesper_revision_changesets", branch="MA") == 1
    assert sample(text, "vesper_ready") == 1
    assert "vesper_replication_quarantined_total" in text  # by reason, once there is one
