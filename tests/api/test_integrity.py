"""Damaged stores on real ``vesper serve`` processes: refused at start with one line that
says what to do, and failed while serving (writes 503, ``/ready`` 503, ``/health`` 200,
one ERROR line) when damage is met."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import BASIC_CONFIG, StartNode, wait_for, write_config
from tests.store import damage
from vesper.store import open_store

RUN_TIMEOUT_S = 60
DB = "data/N1.db"


def serve(cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vesper", "serve", "node.conf", "--port=0", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def refused_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start prints; fails unless that is all it printed."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"vesper serve: {DB} is damaged ("), lines[0]
    assert f"'vesper check {DB}'" in lines[0]
    return lines[0]


def stopped_node_with_data(start_node: StartNode) -> None:
    """A node that wrote a few hundred objects and stopped cleanly."""
    node = start_node(BASIC_CONFIG)
    with node.client() as http:
        for start in range(0, 600, 200):
            ops = [
                {"op": "create", "object": {"id": f"o{i:04d}", "text": "t" * 300}}
                for i in range(start, start + 200)
            ]
            http.post("/api/transaction", json={"ops": ops}).raise_for_status()
    assert node.stop() == 0, node.log()


def altered_changeset(path: Path) -> None:
    # As in a store written before checkpoints: the changeset is after the checkpoint.
    damage.forget_checkpoint(path)
    damage.alter(path, "N1.2")


@pytest.mark.parametrize(
    ("spoil", "needle"),
    [
        (damage.overwrite_tail, "malformed"),
        (damage.overwrite_header, "not a database"),
        (altered_changeset, "N1.2 does not match the chain"),
    ],
    ids=["tail", "header", "changeset"],
)
def test_serve_refuses_a_damaged_store_with_one_line(
    start_node: StartNode, tmp_path: Path, spoil: Callable[[Path], None], needle: str
) -> None:
    stopped_node_with_data(start_node)
    spoil(tmp_path / DB)
    line = refused_line(serve(tmp_path))
    assert needle in line
    assert "this node does not replicate, so restore" in line and "from a backup" in line


def test_a_replicating_node_is_told_to_restore_from_a_peer_with_its_key(
    start_node: StartNode, tmp_path: Path
) -> None:
    stopped_node_with_data(start_node)
    damage.overwrite_tail(tmp_path / DB)
    line = refused_line(
        serve(tmp_path, "--replication_hosts=127.0.0.1:1", "--replication_channel=c")
    )
    assert f"move {DB} and its -wal and -shm files aside" in line
    assert "its key (data/N1.key)" in line and "catch-up" in line


def test_an_altered_changeset_before_the_checkpoint_is_left_to_vesper_check(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node(BASIC_CONFIG)
    with node.client() as http:
        for i in range(5):
            http.post("/api/objects", json={"id": f"a{i}"}).raise_for_status()
    path = tmp_path / DB
    wait_for(
        lambda: '"N1":[5,' in (damage.meta(path, "chain_checkpoint") or ""),
        node.log,
    )  # the running node verified all five
    assert node.stop() == 0
    damage.alter(path, "N1.3")
    again = start_node(BASIC_CONFIG)  # opening re-hashes only what came after
    assert again.stop() == 0
    found = subprocess.run(
        [sys.executable, "-m", "vesper", "check", DB],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert found.returncode == 1 and "N1.3 does not match the chain" in found.stdout


def test_a_store_damaged_while_serving_fails_and_says_so(
    start_node: StartNode, tmp_path: Path
) -> None:
    path = tmp_path / DB
    with open_store(f"sqlite:///{path}", "N1") as store:  # about 10 MB
        for i in range(3000):
            store.create({"id": f"o{i:05d}", "text": "x" * 1000})
    node = start_node(BASIC_CONFIG)
    with node.client() as http:
        assert http.get("/ready").json() == {"ready": True, "reasons": []}
        http.post("/api/objects", json={"id": "fresh"}).raise_for_status()
        damage.damage_middle_page(path, "changesets")
        # The stream meets the damaged page: an error status, or a body cut short,
        # never a complete answer.
        try:
            listing = http.get("/api/changesets")
            assert listing.status_code == 503, listing.status_code
        except httpx.HTTPError:
            pass
        wait_for(lambda: http.get("/ready").status_code == 503, node.log)
        reasons = http.get("/ready").json()["reasons"]
        assert len(reasons) == 1 and "malformed" in reasons[0], reasons
        refused = http.post("/api/objects", json={"id": "after"})
        assert refused.status_code == 503
        assert "damaged" in refused.json()["error"] and "malformed" in refused.json()["error"]
        assert http.get("/health").status_code == 200
        assert http.get("/api/objects/fresh").json() == {"id": "fresh"}
    damaged_lines = [line for line in node.log().splitlines() if " is damaged: " in line]
    assert len(damaged_lines) == 1 and " ERROR " in damaged_lines[0], node.log()
    assert node.stop() == 0, node.log()
    write_config(tmp_path, BASIC_CONFIG)
    assert "malformed" in refused_line(serve(tmp_path))
