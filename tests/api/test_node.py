"""The Node, the error table and the app in-process (no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from vesper.api import create_app
from vesper.api.errors import STATUS_OF, status_of
from vesper.config import Settings
from vesper.errors import (
    DocumentExists,
    DocumentNotFound,
    InvalidDocument,
    StorageError,
    StoreClosed,
    VesperError,
)
from vesper.node import Node, disabled_replication_status


def test_store_is_only_there_while_running(tmp_path: Path) -> None:
    node = Node(Settings(work_dir=str(tmp_path), branch_id="U1"))
    assert not node.running
    with pytest.raises(StoreClosed, match="U1"):
        node.store  # noqa: B018
    with node:
        assert node.running and node.store.branch_id == "U1"
        assert (tmp_path / "U1.db").exists()
    assert not node.running
    node.close()  # twice is fine


def test_status_uses_the_replication_service_when_attached() -> None:
    class FakeReplication:
        closed = False

        def status(self) -> dict[str, Any]:
            return {"enabled": True, "connected": "localhost:61613"}

        def close(self) -> None:
            self.closed = True

    node = Node(Settings(storage_url="mem://")).start()
    assert node.status()["replication"] == disabled_replication_status()
    fake = FakeReplication()
    node.replication = fake
    assert node.status()["replication"]["connected"] == "localhost:61613"
    node.close()
    assert fake.closed and node.replication is None


def test_error_statuses() -> None:
    assert status_of(InvalidDocument("x")) == 400
    assert status_of(DocumentNotFound("x")) == 404
    assert status_of(DocumentExists("x")) == 409
    assert status_of(StorageError("x")) == 503

    class NewKind(DocumentNotFound):
        pass

    class Unknown(VesperError):
        pass

    assert status_of(NewKind("x")) == 404  # the nearest listed base decides
    assert status_of(Unknown("x")) == 500
    assert all(400 <= s < 600 for s in STATUS_OF.values())


def test_a_node_that_is_not_running_answers_503() -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        node = Node(Settings(storage_url="mem://"))
        transport = httpx.ASGITransport(app=create_app(node))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            down = await http.get("/api/objects/x")
            node.start()
            up = await http.get("/health")
            node.close()
        return down, up

    down, up = asyncio.run(scenario())
    assert down.status_code == 503 and "not running" in down.json()["error"]
    assert up.status_code == 200
