"""``GET /ready`` in-process: ready, not running, writes refused, store failed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from vesper.api import create_app
from vesper.config import Settings
from vesper.node import Node


def ask(node: Node, *paths: str) -> list[httpx.Response]:
    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(node))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            return [await http.get(path) for path in paths]

    return asyncio.run(scenario())


def test_a_running_node_is_ready() -> None:
    with Node(Settings(storage_url="mem://")) as node:
        (ready,) = ask(node, "/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "reasons": []}


def test_a_node_that_is_not_running_is_not_ready() -> None:
    (ready,) = ask(Node(Settings(storage_url="mem://", branch_id="R1")), "/ready")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "reasons": ["node R1 is not running"]}


def test_a_node_that_refuses_writes_is_not_ready_but_alive() -> None:
    with Node(Settings(storage_url="mem://")) as node:
        node.store.refuse_writes("peers 0B refuse this node's key for branch 0A")
        ready, health = ask(node, "/ready", "/health")
        node.store.refuse_writes(None)
        (again,) = ask(node, "/ready")
    assert ready.status_code == 503 and health.status_code == 200
    assert ready.json() == {
        "ready": False,
        "reasons": ["local writes refused: peers 0B refuse this node's key for branch 0A"],
    }
    assert again.status_code == 200


def test_a_failed_store_is_not_ready_and_says_why(tmp_path: Path) -> None:
    with Node(Settings(work_dir=str(tmp_path), branch_id="R1")) as node:
        node.store.db.fail("read failed: database disk image is malformed")
        ready, health = ask(node, "/ready", "/health")
        node.store.refuse_writes("starting: checking this node's own history with its peers")
        (both,) = ask(node, "/ready")
    assert health.status_code == 200  # liveness: it runs, and it says what is wrong
    assert ready.status_code == 503
    assert ready.json()["reasons"] == [
        "store failed: read failed: database disk image is malformed"
    ]
    assert len(both.json()["reasons"]) == 2
