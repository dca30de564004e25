"""``GET /api/changes``: every feed mode, resuming across a restart, filters, paging of
a large changeset, a client that stops reading, and stopping a node with feeds open.
(A replicated change in the feed: tests/replication/test_changes_feed.py.)"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.api.conftest import BASIC_CONFIG, NodeProcess, StartNode, wait_for
from vesper.api import create_app
from vesper.config import Settings
from vesper.node import Node


@pytest.fixture
def feed_node(start_node: StartNode) -> NodeProcess:
    return start_node(BASIC_CONFIG)


def write(client: httpx.Client, doc: dict | list) -> str:
    answer = client.post("/api/objects", json=doc)
    assert answer.status_code == 201, answer.text
    return answer.json()["revision"]


def changes(client: httpx.Client, **params: object) -> dict:
    answer = client.get("/api/changes", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_normal_feed_lists_changesets_in_order_and_resumes_from_any_token(
    feed_node: NodeProcess,
) -> None:
    with feed_node.client() as client:
        assert changes(client) == {"results": [], "last_seq": 0, "more": False}
        first = write(client, [{"id": "a", "n": 1}, {"id": "b", "n": 2}])
        write(client, {"id": "c", "n": 3})
        assert client.delete("/api/objects/a").status_code == 200
        feed = changes(client)
        assert [e["seq"] for e in feed["results"]] == [1, 2, 3]
        assert [e["id"] for e in feed["results"]] == ["N1.1", "N1.2", "N1.3"]
        assert feed["results"][0]["objects"] == [
            {"id": "a", "deleted": False},
            {"id": "b", "deleted": False},
        ]
        assert feed["results"][2]["objects"] == [{"id": "a", "deleted": True}]
        assert feed["last_seq"] == 3 and feed["more"] is False

        page = changes(client, limit=2)
        assert [e["seq"] for e in page["results"]] == [1, 2] and page["more"] is True
        rest = changes(client, since=page["last_seq"])
        assert [e["seq"] for e in rest["results"]] == [3]
        # A revision is a token too: what it does not contain.
        assert [e["id"] for e in changes(client, since=first)["results"]] == ["N1.2", "N1.3"]
        assert changes(client, since="now")["results"] == []
        assert changes(client, since="now")["last_seq"] == 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"feed": "websocket"}, "feed must be one of"),
        ({"since": "99"}, "past this node's last change"),
        ({"since": "not a revision"}, "revision"),
        ({"limit": "0"}, "limit must be at least 1"),
        ({"limit": "10001"}, "at most 10000"),
        ({"feed": "sse", "heartbeat": "5"}, "at least 100"),
        ({"ids": '"a"'}, "JSON array"),
        ({"where": "[1]"}, "JSON object"),
        ({"include_objects": "yes"}, "true or false"),
        ({"bogus": "1"}, "unknown query parameter"),
    ],
)
def test_bad_feed_requests_get_400_naming_the_problem(
    feed_node: NodeProcess, params: dict, message: str
) -> None:
    with feed_node.client() as client:
        answer = client.get("/api/changes", params=params)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]


def test_filters_by_ids_and_where_with_objects_as_they_are(feed_node: NodeProcess) -> None:
    with feed_node.client() as client:
        write(client, [{"id": "a", "kind": "x"}, {"id": "b", "kind": "y"}])
        write(client, {"id": "c", "kind": "y"})
        by_id = changes(client, ids='["b", "c"]')["results"]
        assert [[o["id"] for o in e["objects"]] for e in by_id] == [["b"], ["c"]]
        kind_y = changes(client, where='{"kind": "y"}', include_objects="true")["results"]
        assert [[o["object"] for o in e["objects"]] for e in kind_y] == [
            [{"id": "b", "kind": "y"}],
            [{"id": "c", "kind": "y"}],
        ]
        assert changes(client, ids='["zzz"]')["results"] == []


def test_a_bulk_changeset_is_one_entry_with_its_objects_paged(feed_node: NodeProcess) -> None:
    with feed_node.client() as client:
        write(client, [{"id": f"o{i:04d}"} for i in range(2_500)])
        (entry,) = changes(client)["results"]
        assert entry["objects_total"] == 2_500 and len(entry["objects"]) == 1_000
        seen = [o["id"] for o in entry["objects"]]
        while "objects_next" in entry:
            answer = client.get(
                f"/api/changes/{entry['seq']}", params={"objects_from": entry["objects_next"]}
            )
            assert answer.status_code == 200, answer.text
            entry = answer.json()
            seen += [o["id"] for o in entry["objects"]]
        assert seen == [f"o{i:04d}" for i in range(2_500)]
        assert client.get("/api/changes/7").status_code == 404


def test_longpoll_waits_for_the_next_change_or_its_timeout(feed_node: NodeProcess) -> None:
    with feed_node.client() as client:
        started = time.monotonic()
        empty = changes(client, feed="longpoll", since="now", timeout=300)
        assert empty["results"] == [] and time.monotonic() - started >= 0.25
        # From the position reached: the write is found whether it comes before the
        # request or while it waits.
        since = empty["last_seq"]

        def later() -> None:
            time.sleep(0.3)
            with feed_node.client() as other:
                write(other, {"id": "late"})

        thread = threading.Thread(target=later)
        thread.start()
        woke = changes(client, feed="longpoll", since=since, timeout=20_000)
        thread.join()
        assert [o["id"] for o in woke["results"][0]["objects"]] == ["late"]


def stream_lines(client: httpx.Client, **params: object) -> Iterator[bytes]:
    with client.stream("GET", "/api/changes", params=params) as answer:
        assert answer.status_code == 200
        yield from answer.iter_lines()


def test_continuous_feed_streams_entries_heartbeats_then_its_end(feed_node: NodeProcess) -> None:
    with feed_node.client() as client:
        write(client, {"id": "first"})
        lines = []
        for line in stream_lines(client, feed="continuous", heartbeat=100, timeout=600, since=0):
            lines.append(line)
            if line == "" and len(lines) == 2:  # a heartbeat after the backlog
                with feed_node.client() as other:
                    write(other, {"id": "second"})
        entries = [orjson.loads(line) for line in lines if line]
        assert [e.get("seq") for e in entries[:-1]] == [1, 2]
        assert entries[-1] == {"last_seq": 2}
        assert lines.count("") >= 2


def test_ten_thousand_changes_arrive_through_sse_in_order(feed_node: NodeProcess) -> None:
    total = 10_000
    events: list[int] = []
    done = threading.Event()

    def read() -> None:
        with (
            feed_node.client() as client,
            client.stream(
                "GET", "/api/changes", params={"feed": "sse", "since": 0, "limit": total}
            ) as answer,
        ):
            assert answer.headers["content-type"].startswith("text/event-stream")
            for line in answer.iter_lines():
                if line.startswith("id: "):
                    events.append(int(line[4:]))
        done.set()

    reader = threading.Thread(target=read)
    reader.start()
    write_pipelined(feed_node, [f"s{i}" for i in range(total)])
    assert done.wait(60), f"{len(events)} events of {total}"
    reader.join()
    assert events == list(range(1, total + 1))

    # A browser's EventSource resumes with Last-Event-ID.
    with feed_node.client() as client:
        answer = client.get(
            "/api/changes",
            params={"feed": "sse", "timeout": 100},
            headers={"Last-Event-ID": str(total - 2)},
        )
    ids = [int(line[4:]) for line in answer.text.splitlines() if line.startswith("id: ")]
    assert ids == [total - 1, total]


def write_pipelined(node: NodeProcess, ids: list[str], depth: int = 50) -> None:
    """One create per id, each its own commit, sent ``depth`` requests ahead of the
    answers on one connection (HTTP/1.1 pipelining): a client making 10,000 requests
    one by one would be the slowest part of the test."""
    host, port = node.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        answers = sock.makefile("rb")
        for start in range(0, len(ids), depth):
            batch = ids[start : start + depth]
            sock.sendall(
                b"".join(
                    b"POST /api/objects HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                    b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    for body in (orjson.dumps({"id": obj_id}) for obj_id in batch)
                )
            )
            for _ in batch:
                status = answers.readline()
                assert status.startswith(b"HTTP/1.1 201"), status
                length = 0
                while (line := answers.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                answers.read(length)


def test_resuming_after_a_restart_misses_nothing_and_repeats_nothing(
    tmp_path: Path, start_node: StartNode
) -> None:
    node = start_node(BASIC_CONFIG)
    with node.client() as client:
        for i in range(5):
            write(client, {"id": f"r{i}"})
        seen = changes(client, limit=3)
    assert node.stop() == 0
    node = start_node(BASIC_CONFIG)
    with node.client() as client:
        for i in range(5, 8):
            write(client, {"id": f"r{i}"})
        rest = changes(client, since=seen["last_seq"])
    ids = [e["objects"][0]["id"] for e in seen["results"] + rest["results"]]
    assert ids == [f"r{i}" for i in range(8)]


def test_a_client_that_stops_reading_is_cut_off_while_commits_go_on(
    start_node: StartNode,
) -> None:
    node = start_node(BASIC_CONFIG + "api_feed_buffer_bytes = 65536\n")
    host, port = node.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        b"GET /api/changes?feed=continuous&since=now&include_objects=true HTTP/1.1\r\n"
        b"Host: x\r\n\r\n"
    )
    filler = "f" * 2_000
    rates = []
    with node.client() as client:
        wait_for(lambda: client.get("/metrics").status_code == 200, lambda: "metrics")
        started = time.monotonic()
        for i in range(3_000):  # 6 MB of entries: far past the buffer and the sockets
            assert client.post("/api/objects", json={"id": f"w{i}", "f": filler}).status_code == 201
            if i % 1_000 == 999:
                rates.append(1_000 / (time.monotonic() - started))
                started = time.monotonic()
        wait_for(
            lambda: "vesper_http_feeds_cut_total 1.0" in client.get("/metrics").text,
            lambda: node.log()[-2000:],
        )
    assert "cut off" in node.log()
    # The writes never waited for the feed: the last thousand ran as fast as the first
    # (within the noise of a shared machine).
    assert rates[-1] > rates[0] / 3, rates
    # The connection was aborted: reading what it had buffered ends, and early.
    sock.settimeout(10)
    received = 0
    try:
        while chunk := sock.recv(65536):
            received += len(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    assert received < 3_000 * 2_000


def test_a_node_stops_at_once_with_feeds_open(start_node: StartNode) -> None:
    node = start_node(BASIC_CONFIG)
    ended: list[str] = []
    opened = threading.Semaphore(0)

    def follow(feed: str) -> None:
        with (
            node.client() as client,
            client.stream("GET", "/api/changes", params={"feed": feed}) as answer,
        ):
            opened.release()
            ended.extend(answer.iter_lines())

    readers = [threading.Thread(target=follow, args=(f,)) for f in ("continuous", "sse")]
    for reader in readers:
        reader.start()
    for _ in readers:
        assert opened.acquire(timeout=10), "a feed did not open"
    started = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - started < 10
    for reader in readers:
        reader.join(10)
    # Each feed ended cleanly, with its last position.
    assert '{"last_seq":0}' in ended
    assert 'data: {"last_seq":0}' in ended


def test_finished_requests_leave_no_waiter_behind() -> None:
    """A node without writes must not keep one waiter per answered long poll."""
    node = Node(Settings(storage_url="mem://", save_history=True)).start()
    app = create_app(node)

    async def poll() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            for _ in range(5):
                assert (await client.get("/api/changes")).status_code == 200
                answer = await client.get(
                    "/api/changes", params={"feed": "longpoll", "since": "now", "timeout": 10}
                )
                assert answer.json()["results"] == []

    try:
        asyncio.run(poll())
        assert app.change_signal._waiters == set()
    finally:
        node.close()
