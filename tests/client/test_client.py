"""``vesper.client`` against live nodes: the store's methods, errors as the store raises
them, conditional writes, retries across a restart of the node, ``changes()`` resuming
across a restart, the async client, and tokens."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.api.conftest import BASIC_CONFIG, NodeProcess, StartNode
from tests.api.test_tls import tls_config
from tests.tlsutil import make_ca, make_cert
from vesper.client import AsyncClient, Client
from vesper.client.calls import NodeUnreachable
from vesper.errors import (
    AccessDenied,
    DocumentExists,
    DocumentNotFound,
    InvalidOperation,
    PreconditionFailed,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def node(start_node: StartNode) -> NodeProcess:
    return start_node(BASIC_CONFIG)


def test_the_store_methods_over_http(node: NodeProcess) -> None:
    with Client(node.url) as client:
        made = client.create([{"id": "a", "n": 1}, {"id": "b", "n": 2}])
        assert made.ids == ["a", "b"] and made.revision == "N1.1"
        assert client.get("a") == {"id": "a", "n": 1}
        assert client.get("missing") is None
        client.update("a", {"n": 10})
        client.replace({"id": "b", "m": 1})
        assert [o["id"] for o in client.query()] == ["a", "b"]
        assert list(client.query({"n": 10})) == [{"id": "a", "n": 10}]
        client.transaction([{"op": "delete", "id": "b"}])
        assert client.get("b") is None
        assert [c["id"] for c in client.changesets(since="N1.2")] == ["N1.3", "N1.4"]
        assert client.conflicts() == []
        assert client.status()["objects"] == 1
        assert client.digest()["digest"] == client.status()["digest"]
        with pytest.raises(DocumentExists):
            client.create({"id": "a"})
        with pytest.raises(DocumentNotFound):
            client.update("nope", {"x": 1})
        with pytest.raises(InvalidOperation):
            client.create({"id": 5})


def test_query_pages_through_more_than_one_page(node: NodeProcess) -> None:
    with Client(node.url) as client:
        client.create([{"id": f"p{i:05d}"} for i in range(2_345)])
        ids = [o["id"] for o in client.query()]
    assert ids == [f"p{i:05d}" for i in range(2_345)]


def test_conditional_writes_with_the_version_a_read_gave(node: NodeProcess) -> None:
    with Client(node.url) as client:
        first = client.create({"id": "c", "n": 1})
        doc, version = client.get_versioned("c") or ({}, "")
        assert doc == {"id": "c", "n": 1} and version == first.etag
        moved = client.update("c", {"n": 2}, if_version=version)
        with pytest.raises(PreconditionFailed):
            client.update("c", {"n": 3}, if_version=version)
        with pytest.raises(PreconditionFailed):
            client.replace({"id": "c"}, if_absent=True)
        client.delete("c", if_version=moved.etag)
        assert client.get("c") is None


def test_calls_wait_for_a_node_that_restarts(tmp_path: Path, start_node: StartNode) -> None:
    port = free_port()
    config = BASIC_CONFIG
    node = start_node(config, f"--port={port}")
    with Client(node.url, retries=10) as client:
        client.create({"id": "before"})
        assert node.stop() == 0
        restarted: list[NodeProcess] = []
        thread = threading.Thread(
            target=lambda: (time.sleep(1.0), restarted.append(start_node(config, f"--port={port}")))
        )
        thread.start()
        # Sent while the node is down: retried until it is back, created once.
        made = client.create({"id": "during"})
        thread.join()
        assert made.ids == ["during"]
        assert [o["id"] for o in client.query()] == ["before", "during"]


def test_changes_resume_across_a_restart_missing_nothing(start_node: StartNode) -> None:
    port = free_port()
    node = start_node(BASIC_CONFIG, f"--port={port}")
    seen: list[int] = []
    done = threading.Event()

    def follow() -> None:
        with Client(node.url, retries=20) as client:
            for entry in client.changes(since=0, heartbeat=200):
                seen.append(entry["seq"])
                if len(seen) == 20:
                    done.set()
                    return

    reader = threading.Thread(target=follow)
    reader.start()
    with Client(node.url) as writer:
        for i in range(10):
            writer.create({"id": f"x{i}"})
    assert node.stop() == 0
    node = start_node(BASIC_CONFIG, f"--port={port}")
    with Client(node.url) as writer:
        for i in range(10, 20):
            writer.create({"id": f"x{i}"})
    assert done.wait(60), seen
    reader.join()
    assert seen == list(range(1, 21))


def test_the_async_client(node: NodeProcess) -> None:
    async def run() -> None:
        async with AsyncClient(node.url) as client:
            await client.create([{"id": "a1"}, {"id": "a2"}])
            assert await client.get("a1") == {"id": "a1"}
            _, version = await client.get_versioned("a1") or ({}, "")
            await client.update("a1", {"v": 1}, if_version=version)
            with pytest.raises(PreconditionFailed):
                await client.update("a1", {"v": 2}, if_version=version)
            assert [o["id"] async for o in client.query()] == ["a1", "a2"]
            entries = [e async for e in client.changes(since=0, timeout=300)]
            assert [e["seq"] for e in entries] == [1, 2]

    asyncio.run(run())


def test_tokens(start_node: StartNode) -> None:
    token = "t" * 32
    node = start_node(BASIC_CONFIG + f"api_token = {token!r}\n")
    with Client(node.url) as anonymous, pytest.raises(AccessDenied):
        anonymous.status()
    with Client(node.url, token="wrong" * 8) as wrong, pytest.raises(AccessDenied):
        wrong.get("a")
    with Client(node.url, token=token) as client:
        client.create({"id": "a"})
        assert client.get("a") == {"id": "a"}


def test_https_with_a_trusted_authority_and_refusing_others(
    start_node: StartNode, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "ca")
    cert, key = make_cert(ca, tmp_path / "server")
    node = start_node(tls_config(cert, key))
    with Client(node.url, verify=str(ca.cert_path)) as client:
        client.create({"id": "over-tls"})
        assert client.get("over-tls") == {"id": "over-tls"}
    # Without the CA the certificate is not trusted: refused, not retried into success.
    with Client(node.url, retries=1) as untrusting, pytest.raises(NodeUnreachable):
        untrusting.status()
