"""``vesper status`` against a cluster of real ``vesper serve`` nodes on an embedded
broker: the rows, the states as the nodes see each other, and the exit status."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.ui.conftest import TOKEN, Cluster, three_nodes
from vesper.cli.main import main

BRANCHES = ("N1", "N2", "N3")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with three_nodes(tmp_path_factory.mktemp("status")) as made:
        yield made


def status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, list[str]], str]:
    """Exit status, the table's rows by node (cells split on runs of two spaces), stderr."""
    code = main(["status", "--token", TOKEN, *args])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    header, rows = lines[0].split(), [_cells(line) for line in lines[1:]]
    assert header[:3] == ["node", "state", "behind"], out
    return code, {row[0]: row for row in rows}, err


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("  ") if cell.strip()]


def test_one_url_shows_every_node_of_the_channel(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, rows, err = status(capsys, cluster.nodes["N1"].url)
    assert code == 0, (rows, err)
    assert sorted(rows) == list(BRANCHES)
    assert rows["N1"][1] == "-"  # nobody else asked, so nobody to say how N1 stands
    assert rows["N2"][1] == rows["N3"][1] == "in sync"
    assert rows["N1"][-2] == cluster.nodes["N1"].url  # only the asked node's URL is known


def test_all_urls_in_sync_then_a_stopped_node_is_gone_and_unreachable(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [cluster.nodes[b].url for b in BRANCHES]
    code, rows, err = status(capsys, *urls)
    assert code == 0, (rows, err)
    assert [rows[b][1] for b in BRANCHES] == ["in sync"] * 3
    objects = {rows[b][5] for b in BRANCHES}
    assert len(objects) == 1, rows

    cluster.stop("N3")
    with cluster.client("N1") as client:
        client.post("/api/objects", json={"id": "written-while-N3-is-down"}).raise_for_status()
    cluster.wait(
        lambda: cluster.status("N1")["replication"]["peers"]["N3"]["state"] == "gone",
        lambda: str(cluster.status("N1")["replication"]["peers"]["N3"]),
        30,
    )
    code, rows, err = status(capsys, *urls)
    assert code == 1
    assert rows["N3"][1] == "gone"
    assert rows["?"][1] == "unreachable" and rows["?"][-2] == urls[2]
    assert f"{urls[2]}: cannot connect" in err
    assert int(rows["N3"][2].split()[0]) >= 1  # behind by the write it missed

    cluster.start("N3")
    cluster.wait(cluster.in_sync, cluster.describe, 30)
    urls[2] = cluster.nodes["N3"].url
    deadline = time.monotonic() + 30
    while True:
        code, rows, err = status(capsys, *urls)
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code == 0, (rows, err)
    assert [rows[b][1] for b in BRANCHES] == ["in sync"] * 3


def test_a_node_that_refuses_the_token_is_unreachable_with_the_hint(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--token", "wrong-token-0123456789", cluster.nodes["N1"].url])
    out, err = capsys.readouterr()
    assert code == 1
    assert "unreachable" in out
    assert "HTTP 401" in err and "--token" in err


def test_watch_needs_a_positive_interval(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--watch", "0", "http://127.0.0.1:9"]) == 2
    assert "--watch" in capsys.readouterr().err
