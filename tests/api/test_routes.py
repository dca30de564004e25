"""Routing: ``Allow`` on 405 names every method of the path, object ids are one path
segment (``/`` travels as ``%2F``) so no id shadows a route, and schemathesis finds no
answer that contradicts /openapi.json."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from tests.api.conftest import BASIC_CONFIG, StartNode
from tests.api.helpers import error_of
from vesper.api import create_app
from vesper.config import Settings
from vesper.node import Node

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
SCHEMATHESIS_TIMEOUT_S = 120


def concrete(template: str) -> str:
    return template.replace("{id:path}", "x1")


def test_405_allow_lists_every_method_of_the_path_on_every_route() -> None:
    node = Node(Settings(storage_url="mem://", save_history=True)).start()
    app = create_app(node)
    methods: dict[str, set[str]] = defaultdict(set)
    for route in app.app.routes:
        if isinstance(route, Route) and route.methods:
            methods[concrete(route.path)] |= route.methods

    async def scenario() -> list[tuple[str, str, httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            return [
                (path, method, await http.request(method, path))
                for path, allowed in methods.items()
                for method in METHODS
                if method not in allowed
            ]

    try:
        answers = asyncio.run(scenario())
    finally:
        node.close()
    assert answers
    for path, method, response in answers:
        assert response.status_code == 405, (method, path, response.text)
        listed = response.headers["allow"].split(", ")
        assert set(listed) == methods[path], (method, path, listed)
        assert listed == sorted(listed)


def test_405_allow_over_http(http: httpx.Client) -> None:
    cases = {
        ("DELETE", "/api/objects"): "GET, HEAD, POST",
        ("POST", "/api/objects/a1"): "DELETE, GET, HEAD, PATCH, PUT",
        ("PUT", "/api/objects/a1/history"): "GET, HEAD",
        ("GET", "/api/transaction"): "POST",
        ("POST", "/api/status"): "GET, HEAD",
    }
    for (method, path), allow in cases.items():
        response = http.request(method, path, json={} if method in ("POST", "PUT") else None)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allow, (method, path)


def test_an_id_with_a_slash_is_addressed_only_percent_encoded(http: httpx.Client) -> None:
    # The history route is not an object: a PUT there is a 405 and creates nothing.
    error_of(http.put("/api/objects/p1/history", json={"v": 1}), 405)
    assert http.get("/api/objects/p1%2Fhistory").status_code == 404
    # Encoded, "p1/history" is an object like any other, with a history of its own.
    http.put("/api/objects/p1%2Fhistory", json={"v": 1}).raise_for_status()
    assert http.get("/api/objects/p1%2Fhistory").json() == {"id": "p1/history", "v": 1}
    assert len(http.get("/api/objects/p1%2Fhistory/history").json()["history"]) == 1
    # ... and the history route still means p1's history, which p1 does not have.
    assert "'p1'" in error_of(http.get("/api/objects/p1/history"), 404)
    http.put("/api/objects/p1", json={"w": 2}).raise_for_status()
    assert [h["object"] for h in http.get("/api/objects/p1/history").json()["history"]] == [
        {"id": "p1", "w": 2}
    ]


def test_a_literal_slash_in_an_id_matches_no_route(http: httpx.Client) -> None:
    http.put("/api/objects/a%2Fb", json={"v": 1}).raise_for_status()
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        response = http.request(method, "/api/objects/a/b", json={} if method != "GET" else None)
        assert "no such endpoint" in error_of(response, 404), method
    assert http.get("/api/objects/a%2Fb").json() == {"id": "a/b", "v": 1}  # untouched


@pytest.mark.skipif(
    importlib.util.find_spec("schemathesis") is None,
    reason="schemathesis is not installed (pip install -e '.[test]' brings it)",
)
def test_schemathesis_finds_no_answer_that_contradicts_the_openapi_document(
    start_node: StartNode, tmp_path: Path
) -> None:
    """A bounded run (a few examples per operation, one worker, a fixed seed).

    Left out: ``positive_data_acceptance``, since the document does not spell out
    every rule the server checks (a non-empty id, a revision's syntax), so some
    schema-valid input is refused with a 400; and ``use_after_free``, since an object's
    history outlives the object by design. And ``/api/changes``: its streams stay open
    as long as their client (tests/api/test_changes.py covers it).
    """
    node = start_node(BASIC_CONFIG)
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{node.url}/openapi.json",
        "--checks", "all",
        "--exclude-checks", "positive_data_acceptance,use_after_free",
        "--exclude-path", "/api/changes",
        "--max-examples", "10", "--workers", "1", "--seed", "1",
        "--request-timeout", "10", "--generation-database", "none", "--no-color",
    ]  # fmt: skip
    try:
        run = subprocess.run(
            command,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=SCHEMATHESIS_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"schemathesis ran over {SCHEMATHESIS_TIMEOUT_S} s:\n{exc.stdout}")
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert "Tested:" in run.stdout  # it did reach the node
