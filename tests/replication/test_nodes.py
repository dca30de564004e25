"""End to end: real ``vesper serve`` processes replicating through the broker, stopped
with SIGTERM and killed with SIGKILL in the middle of streams."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import NodeProcess, node_command
from tests.replication.harness import new_channel, wait_for


class Cluster:
    def __init__(self, folder: Path, broker: tuple[str, int]) -> None:
        self.folder = folder
        self.broker = broker
        self.channel = new_channel()
        self.nodes: dict[str, NodeProcess] = {}
        self.started: list[NodeProcess] = []

    def start(self, branch: str) -> NodeProcess:
        config = self.folder / f"{branch}.conf"
        config.write_text(
            f"branch_id = {branch!r}\nsave_history = True\nwork_dir = 'data'\n"
            f"replication_hosts = [{self.broker!r}]\n"
            f"replication_channel = {self.channel!r}\n"
        )
        # A new log per start: the URL (a new free port) is read from it.
        log = self.folder / f"{branch}-{len(self.started)}.log"
        node = NodeProcess(node_command(config), self.folder, log).start()
        self.started.append(node)
        self.nodes[branch] = node
        wait_for(
            lambda: self.status(branch)["replication"]["connected"],
            what=f"{branch} connected to the broker",
        )
        return node

    def status(self, branch: str) -> dict:
        return httpx.get(f"{self.nodes[branch].url}/api/status", timeout=30).json()

    def converged(self, *branches: str) -> bool:
        states = [self.status(b) for b in branches]
        return all(
            (s["revision"], s["digest"], s["pending"])
            == (states[0]["revision"], states[0]["digest"], 0)
            for s in states
        )

    def wait_converged(self, *branches: str, timeout: float = 90) -> None:
        wait_for(
            lambda: self.converged(*branches),
            timeout,
            lambda: (
                "convergence: " + "; ".join(f"{b}: {self.status(b)['revision']}" for b in branches)
            ),
        )

    def kill_all(self) -> None:
        for node in self.started:
            node.kill()


@pytest.fixture
def nodes(tmp_path: Path, shared_broker: tuple[str, int]) -> Callable[[], Cluster]:
    made: list[Cluster] = []

    def make() -> Cluster:
        made.append(Cluster(tmp_path, shared_broker))
        return made[-1]

    yield make  # type: ignore[misc]
    for cluster in made:
        cluster.kill_all()


def test_objects_written_over_http_appear_on_the_other_node(nodes: Callable[[], Cluster]) -> None:
    cluster = nodes()
    a, b = cluster.start("A"), cluster.start("B")
    with a.client() as ca, b.client() as cb:
        assert ca.post("/api/objects", json={"id": "x", "v": 1}).status_code == 201
        wait_for(lambda: cb.get("/api/objects/x").status_code == 200, what="x on B")
        assert cb.get("/api/objects/x").json() == {"id": "x", "v": 1}
        ca.post("/api/objects", json={"id": "y"})
        ca.patch("/api/objects/x", json={"v": 2})
        ca.post("/api/objects", json=[{"id": "z1"}, {"id": "z2"}])
        cluster.wait_converged("A", "B")
        assert cb.get("/api/objects").json()["results"] == ca.get("/api/objects").json()["results"]
        peers = cluster.status("B")["replication"]["peers"]
        wait_for(
            lambda: (
                cluster.status("B")["replication"]["peers"].get("A", {}).get("revision")
                == cluster.status("A")["revision"]
            ),
            what="B seeing A's revision",
        )
        assert "A" in peers
        metrics = cb.get("/metrics").text
        assert "vesper_replication_connected 1.0" in metrics
        assert 'vesper_replication_peer_lag_changesets{peer="A"} 0.0' in metrics
        received = re.search(r"^vesper_replication_changesets_received_total (\S+)$", metrics, re.M)
        assert received and float(received.group(1)) >= 4


def test_node_stopped_while_others_commit_1000_changes_converges(
    nodes: Callable[[], Cluster],
) -> None:
    cluster = nodes()
    a, b, c = cluster.start("A"), cluster.start("B"), cluster.start("C")
    assert c.stop(signal.SIGTERM) == 0
    with a.client() as ca, b.client() as cb:
        for i in range(500):
            ca.post("/api/objects", json={"id": f"a{i}", "i": i})
            cb.put(f"/api/objects/shared{i % 7}", json={"by": "B", "i": i})
    cluster.start("C")
    cluster.wait_converged("A", "B", "C")
    assert cluster.status("C")["objects"] == 507


def test_sigkill_in_the_middle_of_streams_loses_nothing_acknowledged(
    nodes: Callable[[], Cluster],
) -> None:
    cluster = nodes()
    a, b = cluster.start("A"), cluster.start("B")
    acknowledged: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        i = 0
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                try:
                    url = cluster.nodes["A"].url
                    r = client.post(f"{url}/api/objects", json={"id": f"o{i}"})
                except httpx.HTTPError:
                    continue  # A is down; the write was not acknowledged
                if r.status_code == 201:
                    acknowledged.append(f"o{i}")
                i += 1

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        wait_for(lambda: len(acknowledged) > 300, what="the stream under way")
        b.kill()  # the receiver dies between messages, maybe mid-batch
        wait_for(lambda: len(acknowledged) > 600, what="more writes while B is down")
        b = cluster.start("B")
        wait_for(lambda: cluster.status("B")["objects"] > 600, what="B receiving again")
        a.kill()  # the writer dies with changesets in its outbox
        a = cluster.start("A")
        wait_for(lambda: len(acknowledged) > 900, what="writes after A restarted")
    finally:
        stop.set()
        writer.join()
    cluster.wait_converged("A", "B")
    with b.client() as cb:
        have = {o["id"] for o in cb.get("/api/objects").json()["results"]}
    missing = [i for i in acknowledged if i not in have]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
