"""``vesper verify`` against two real ``vesper serve`` nodes that do not replicate."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import NodeProcess, node_command, write_config
from vesper.cli.main import main
from vesper.store.digest import bucket_of

TOKEN = "verify-token-0123456789abcdef"
Nodes = Callable[..., tuple[NodeProcess, NodeProcess]]


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[Nodes]:
    """``two_nodes(extra_config="")``: nodes N1 and N2, each with its own store."""
    started: list[NodeProcess] = []

    def start(extra: str = "") -> tuple[NodeProcess, NodeProcess]:
        for branch in ("N1", "N2"):
            directory = tmp_path / branch
            directory.mkdir()
            config = write_config(directory, f"branch_id = {branch!r}\nwork_dir = 'data'\n{extra}")
            node = NodeProcess(node_command(config), directory, directory / "node.log")
            started.append(node)
            node.start()
        return started[0], started[1]

    try:
        yield start
    finally:
        for node in started:
            node.kill()


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["verify", *args])
    out, err = capsys.readouterr()
    return code, out, err


def post(node: NodeProcess, docs: object, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with node.client(headers=headers) as client:
        client.post("/api/objects", json=docs).raise_for_status()


def test_nodes_with_the_same_objects_are_in_sync(
    two_nodes: Nodes, capsys: pytest.CaptureFixture[str]
) -> None:
    n1, n2 = two_nodes()
    code, out, _ = verify(capsys, n1.url, n2.url)
    assert code == 0 and "in sync" in out
    # The same objects written on each node by itself: other revisions, same digest.
    docs = [{"id": f"o{i}", "n": i, "f": i / 3, "s": "é"} for i in range(50)]
    post(n1, docs)
    post(n2, list(reversed(docs)))
    code, out, _ = verify(capsys, n1.url, n2.url + "/")
    assert code == 0, out
    assert "in sync: 2 nodes hold the same objects" in out
    assert "revision N1.1" in out and "revision N2.1" in out


def test_differing_objects_are_listed_with_each_nodes_version(
    two_nodes: Nodes, capsys: pytest.CaptureFixture[str]
) -> None:
    n1, n2 = two_nodes()
    # More than one page of the listing (1,000) on each node, almost all alike.
    same = [{"id": f"same{i:04d}", "i": i} for i in range(2500)]
    post(n1, [*same, {"id": "changed", "v": 1}, {"id": "only-on-1"}, {"id": "new\nline"}])
    post(n2, [*same, {"id": "changed", "v": 2.5}, {"id": "only-on-2", "é": "ü"}])
    code, out, _ = verify(capsys, n1.url, n2.url)
    assert code == 1, out
    lines = out.splitlines()
    differing = {"changed", "only-on-1", "only-on-2", "new\nline"}
    buckets = sorted({bucket_of(i) for i in differing})
    assert f"differ in {len(buckets)} of 256 buckets: {', '.join(map(str, buckets))}" in lines
    assert f'"changed" (bucket {bucket_of("changed")})' in lines
    assert f"  {n1.url}  " + '{"id":"changed","v":1}' in lines
    assert f"  {n2.url}  " + '{"id":"changed","v":2.5}' in lines
    assert f'"only-on-1" (bucket {bucket_of("only-on-1")})' in lines
    assert f"  {n2.url}  (absent)" in lines
    assert f"  {n2.url}  " + '{"id":"only-on-2","é":"ü"}' in lines
    newline = bucket_of("new\nline")
    assert f'"new\\nline" (bucket {newline})' in lines
    assert "4 objects differ" in lines
    assert "same" not in out  # objects alike on both are not listed
    code, out, _ = verify(capsys, "--limit", "1", n1.url, n2.url)
    assert code == 1 and "... and 3 more" in out


def test_the_token_comes_from_the_option_or_the_environment(
    two_nodes: Nodes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    n1, n2 = two_nodes(f"api_token = {TOKEN!r}\n")
    post(n1, {"id": "x"}, TOKEN)
    monkeypatch.delenv("VESPER_TOKEN", raising=False)
    code, _, err = verify(capsys, n1.url, n2.url)
    assert code == 2 and "HTTP 401" in err and "--token" in err
    code, out, _ = verify(capsys, "--token", TOKEN, n1.url, n2.url)
    assert code == 1 and '"x" (bucket' in out
    monkeypatch.setenv("VESPER_TOKEN", TOKEN)
    post(n2, {"id": "x"}, TOKEN)
    code, out, _ = verify(capsys, n1.url, n2.url)
    assert code == 0 and "in sync" in out


def test_usage_and_connection_errors_exit_2(
    two_nodes: Nodes, capsys: pytest.CaptureFixture[str]
) -> None:
    n1, _ = two_nodes()
    code, _, err = verify(capsys, n1.url)
    assert code == 2 and "two or more" in err
    code, _, err = verify(capsys, n1.url, n1.url + "/")
    assert code == 2 and "twice" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, _, err = verify(capsys, n1.url, closed)
    assert code == 2 and f"vesper verify: {closed}: cannot connect" in err
    code, _, err = verify(capsys, n1.url, n1.url + "/api/objects")  # not a node's base URL
    assert code == 2 and "HTTP 404" in err


def test_the_command_line_entry_point(two_nodes: Nodes) -> None:
    n1, n2 = two_nodes()
    httpx.post(f"{n1.url}/api/objects", json={"id": "a"}).raise_for_status()
    result = subprocess.run(
        [sys.executable, "-m", "vesper", "verify", n1.url, n2.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert '"a" (bucket' in result.stdout and "1 object differs" in result.stdout
