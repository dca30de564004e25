"""``/api/status``, ``/health``, ``/metrics``, ``/openapi.json`` and ``/docs``."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import httpx

from tests.api.helpers import error_of, sample
from tests.replication.harness import wait_for
from tests.store.digest_reference import reference_digest
from vesper.api import create_app
from vesper.broker.process import BrokerProcess
from vesper.config import Settings
from vesper.node import Node

REPLICATION_KEYS = {
    "enabled", "connected", "channel", "broker", "messages_sent", "messages_received",
    "send_errors", "receive_errors", "outbox", "pending", "last_message_received", "peers",
    "forks", "quarantined",
}  # fmt: skip


def spec_digest(objects: list[dict]) -> str:
    return reference_digest(objects)


def test_status_shape_and_digest(http: httpx.Client) -> None:
    http.post("/api/objects", json=[{"id": "s1", "é": "ü", "n": 1.5}, {"id": "s0"}])
    status = http.get("/api/status").json()
    assert set(status) == {"branch_id", "public_key", "revision", "digest", "objects",
                           "pending", "outbox", "replication"}  # fmt: skip
    assert status["public_key"] is None  # a node that does not replicate signs nothing
    assert status["branch_id"] == "N1"
    listing = http.get("/api/objects").json()
    assert status["revision"] == listing["revision"]
    assert status["objects"] == len(listing["results"])
    assert status["digest"] == spec_digest(listing["results"])
    assert status["pending"] == 0 and status["outbox"] == 0
    replication = status["replication"]
    assert set(replication) == REPLICATION_KEYS
    assert replication["enabled"] is False and replication["connected"] is None
    assert replication["peers"] == {} and replication["messages_sent"] == 0
    # The digest follows the data.
    http.delete("/api/objects/s0").raise_for_status()
    after = http.get("/api/status").json()
    assert after["digest"] != status["digest"] and after["objects"] == status["objects"] - 1


def test_health(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "branch_id": "N1"}


def test_metrics_count_requests_commits_and_store_size(http: httpx.Client) -> None:
    def scrape() -> str:
        r = http.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        return r.text

    before = scrape()
    http.post("/api/objects", json={"id": "mx"}).raise_for_status()
    http.get("/api/objects/mx").raise_for_status()
    http.get("/api/objects/mx-missing")
    metrics = scrape()

    def delta(name: str, **labels: str) -> float:
        try:
            old = sample(before, name, **labels)
        except AssertionError:
            old = 0.0
        return sample(metrics, name, **labels) - old

    get = {"method": "GET", "endpoint": "/api/objects/{id}"}
    assert delta("vesper_http_requests_total", status="200", **get) == 1
    assert delta("vesper_http_requests_total", status="404", **get) == 1
    assert delta("vesper_http_request_duration_seconds_count", status="200", **get) == 1
    assert delta("vesper_commits_total", operation="create") == 1
    assert sample(metrics, "vesper_objects") == http.get("/api/status").json()["objects"]
    assert sample(metrics, "vesper_store_bytes") > 0
    assert sample(metrics, "vesper_revision_changesets", branch="N1") >= 1
    assert sample(metrics, "vesper_outbox_changesets") == 0
    assert sample(metrics, "vesper_node_info", branch_id="N1") == 1
    # Unknown paths share one label value instead of one per path.
    http.get("/no/such/path/123")
    assert sample(scrape(), "vesper_http_requests_total", endpoint="unmatched", status="404") >= 1


def test_openapi_and_docs_are_served(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/api/objects/{id}" in document["paths"]
    docs = http.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_status_rejects_parameters_and_writes(http: httpx.Client) -> None:
    error_of(http.get("/api/status?verbose=1"), 400)
    error_of(http.post("/api/status", json={}), 405)
    error_of(http.delete("/health"), 405)


def test_status_objects_revision_and_digest_describe_one_state(tmp_path: Path) -> None:
    """Read while commits land: each status's object count is that of its revision
    (here every commit creates one object, so ``N1.k`` has k objects)."""
    stop = threading.Event()
    with Node(Settings(branch_id="N1", save_history=True, work_dir=str(tmp_path))) as node:

        def write() -> None:
            i = 0
            while not stop.is_set():
                node.store.create({"id": f"w{i:06d}", "pad": "x" * 200})
                i += 1

        writer = threading.Thread(target=write)
        writer.start()
        try:
            seen: set[int] = set()
            wait_for(lambda: node.store.count > 50, 30, "some commits")
            deadline = time.monotonic() + 30
            while len(seen) < 20 and time.monotonic() < deadline:
                status = node.status()
                counter = int(status["revision"].rpartition(".")[2] or 0)
                assert status["objects"] == counter, status
                seen.add(counter)
                time.sleep(0.002)  # let the writer have the interpreter now and then
        finally:
            stop.set()
            writer.join()
        assert len(seen) >= 20  # the commits did move under the reads
        status = node.status()
        assert status["digest"] == spec_digest(node.store.objects_at(status["revision"]))


def ready(node: Node) -> httpx.Response:
    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(node))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            return await http.get("/ready")

    return asyncio.run(ask())


def test_ready_turns_503_while_no_broker_is_reachable_and_back(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "broker", allow_anonymous=True, control=False).start()
    settings = Settings(
        branch_id="RB1",
        save_history=True,
        work_dir=str(tmp_path),
        replication_hosts=((broker.host, broker.port),),
        replication_channel=f"r{uuid.uuid4().hex[:10]}",
        replication_ready_timeout=1,
    )
    try:
        with Node(settings) as node:
            assert ready(node).json() == {"ready": True, "reasons": []}
            broker.stop()
            wait_for(lambda: ready(node).status_code == 503, 30, "/ready answering 503")
            (reason,) = ready(node).json()["reasons"]
            assert reason.startswith("replication disconnected from every broker for "), reason
            assert f"{broker.host}:{broker.port}" in reason
            assert node.status()["replication"]["disconnected_since"] is not None
            broker.start()
            wait_for(lambda: ready(node).status_code == 200, 30, lambda: ready(node).text)
            assert node.status()["replication"]["connected_since"] is not None
    finally:
        broker.kill()
