"""Conflicts on read: ``?conflicts=true`` on an object and on listings, and listings of
only the conflicted objects. The store served holds a real conflict, made by two
stores writing one property concurrently and exchanging their changesets."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api.conftest import BASIC_CONFIG, StartNode
from vesper.store import open_store


@pytest.fixture
def conflicted_node(tmp_path: Path, start_node: StartNode) -> httpx.Client:
    path = tmp_path / "data" / "n1.db"
    path.parent.mkdir()
    a = open_store(f"sqlite:///{path}", "N1", save_history=True)
    b = open_store("mem://", "N2", save_history=True)
    a.create([{"id": "calm", "v": 0}, {"id": "hot", "price": 1, "name": "lamp"}])
    b.apply_many(list(a.changesets()))
    a.update("hot", {"price": 2})
    b.update("hot", {"price": 3})
    a.apply_many([c for c in b.changesets() if c["origin"] == "N2"])
    a.close()
    b.close()
    node = start_node(BASIC_CONFIG + f"storage_url = 'sqlite:///{path}'\n")
    return node.client()


def test_an_object_read_with_conflicts_names_the_losing_values(
    conflicted_node: httpx.Client,
) -> None:
    with conflicted_node as http:
        plain = http.get("/api/objects/hot")
        assert plain.json() == {"id": "hot", "price": 3, "name": "lamp"}
        answer = http.get("/api/objects/hot", params={"conflicts": "true"})
        assert answer.status_code == 200
        assert answer.headers["etag"] == plain.headers["etag"]
        body = answer.json()
        assert body["object"] == plain.json()
        (conflict,) = body["conflicts"]
        assert conflict["property"] == "price"
        assert conflict["winner"]["value"] == 3
        assert [loser["value"] for loser in conflict["losers"]] == [2]
        assert http.get("/api/objects/calm", params={"conflicts": "true"}).json() == {
            "object": {"id": "calm", "v": 0},
            "conflicts": [],
        }
        assert http.get("/api/objects/nope", params={"conflicts": "true"}).status_code == 404
        assert http.get("/api/objects/hot", params={"conflicts": "yes"}).status_code == 400


def test_listings_add_conflicts_and_filter_the_conflicted(
    conflicted_node: httpx.Client,
) -> None:
    with conflicted_node as http:
        every = http.get("/api/objects", params={"conflicts": "true"}).json()["results"]
        assert [(r["object"]["id"], len(r["conflicts"])) for r in every] == [
            ("calm", 0),
            ("hot", 1),
        ]
        only = http.get("/api/objects", params={"conflicted": "true"}).json()["results"]
        assert only == [{"id": "hot", "price": 3, "name": "lamp"}]
        # With where and paging as usual.
        none = http.get(
            "/api/objects", params={"conflicted": "true", "where": '{"name": "desk"}'}
        ).json()
        assert none["results"] == []
        after = http.get("/api/objects", params={"conflicted": "true", "after": "hot"}).json()
        assert after["results"] == []
