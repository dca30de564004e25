"""Replication through coilmq, a small Python STOMP broker, started here from the venv.

coilmq's topics keep nothing for a node that is away, its parser takes frames of at
most 4 KiB written one at a time, and it refuses STOMP 1.2 (docs/coilmq.md): the
coilmq profile copes, so nodes converge in both acknowledgement modes, large changesets
travel in parts cut to its frames, and a node that was away or is new catches up.
Every test also checks coilmq's log: it records each connection its parser gave up on,
and each subscriber it dropped.

Skipped under ``--mq``: these run on a coilmq of their own, whatever broker the rest of
the suite is pointed at.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp.utils

from tests.replication.harness import Node, new_channel, wait_converged, wait_for
from vesper.replication import parts, wire
from vesper.replication.brokers import COILMQ_FRAME_BYTES
from vesper.trust.keys import NodeKey

COILMQ = Path(sys.executable).with_name("coilmq")
BROKEN = (
    # socketserver's report of a connection handler that died (parser or socket errors)
    "Exception occurred during processing of request",
    # coilmq unsubscribes a subscriber it could not write to, and says so
    "Error delivering message to subscriber",
)


class CoilMQ:
    """One coilmq process on a free loopback port, logging to a file."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "coilmq.log"
        self.host = "127.0.0.1"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> CoilMQ:
        if not COILMQ.exists():
            raise AssertionError(
                f"{COILMQ} is missing: install the test extra (pip install -e '.[test]')"
            )
        # The port is free when chosen but may be taken before coilmq binds it: then
        # coilmq exits, and another port is tried.
        for _ in range(3):
            self.port = _free_port()
            with self.log.open("ab") as out:
                self._process = subprocess.Popen(
                    [str(COILMQ), "-b", self.host, "-p", str(self.port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            if (
                wait_for(
                    lambda: self._listening() or self._process.poll() is not None,
                    30,
                    "coilmq listening",
                )
                and self._process.poll() is None
            ):
                return self
        raise AssertionError(f"coilmq did not start: {self.log.read_text()[-2000:]}")

    def _listening(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def broken_since(self, offset: int) -> list[str]:
        """The lines after ``offset`` (a length of the log) saying coilmq dropped a
        connection or a subscriber."""
        return [
            line for line in self.text()[offset:].splitlines() if any(b in line for b in BROKEN)
        ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def coilmq(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CoilMQ]:
    if request.config.getoption("--mq"):
        pytest.skip("runs on a coilmq of its own; covered by the default run")
    broker = CoilMQ(tmp_path_factory.mktemp("coilmq")).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(params=[True, False], ids=["ack", "no-ack"])
def send_ack(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
def nodes(coilmq: CoilMQ, send_ack: bool, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Starts nodes on coilmq, on one new channel; checks coilmq's log at the end."""
    offset = len(coilmq.text())
    channel = new_channel()
    made: list[Node] = []

    def make(branch: str, **options: object) -> Node:
        node = Node(
            branch, [(coilmq.host, coilmq.port)], channel, tmp_path, send_ack=send_ack, **options
        )
        made.append(node.start())
        return node

    yield make
    for node in made:
        node.stop()
    assert coilmq.broken_since(offset) == []


class FrameSizes(stomp.ConnectionListener):
    """Records the size of every frame a link writes, as it goes on the wire."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def on_send(self, frame: Any) -> None:
        size = len(stomp.utils.pack(stomp.utils.convert_frame(frame)))
        with self._lock:
            self.sizes.append(size)


def watch_frames(node: Node) -> FrameSizes:
    assert node.service is not None
    link = node.service.current_link()
    assert link is not None
    sizes = FrameSizes()
    link.conn.set_listener("frame-sizes", sizes)  # type: ignore[attr-defined]
    return sizes


def test_two_nodes_replicate_both_ways(nodes: Callable[..., Node]) -> None:
    a, b = nodes("A"), nodes("B")
    assert a.status()["broker_kind"] == "coilmq"
    assert a.status()["broker"].startswith("coilmq/")
    frames = watch_frames(a), watch_frames(b)

    def write(node: Node, count: int) -> None:
        for i in range(count):
            node.s.create({"id": f"{node.branch}-{i}", "i": i, "note": "n" * 100})

    writers = [threading.Thread(target=write, args=(n, 1_000)) for n in (a, b)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    wait_converged([a, b])
    assert a.s.count == 2_000
    sizes = frames[0].sizes + frames[1].sizes
    assert max(sizes) <= COILMQ_FRAME_BYTES
    # A backlog is packed into frames close to the ceiling, not one changeset each.
    assert max(sizes) > COILMQ_FRAME_BYTES * 3 // 4
    assert a.status()["send_errors"] == b.status()["send_errors"] == 0


def test_a_changeset_larger_than_a_frame_travels_in_parts(nodes: Callable[..., Node]) -> None:
    a, b = nodes("A"), nodes("B")
    frames = watch_frames(a)
    sent = a.status()["messages_sent"]
    a.s.create([{"id": f"big{i}", "note": "x" * 400, "i": i} for i in range(1_000)])
    wait_for(lambda: b.s.count == 1_000, what="the large changeset on B")
    wait_converged([a, b])
    # About 440 KB: over a hundred parts of under 4 KiB each.
    assert a.status()["messages_sent"] - sent > 100
    assert max(frames.sizes) <= COILMQ_FRAME_BYTES
    wait_for(lambda: b.status()["parts_held"]["sets"] == 0, what="B's parts deleted once applied")


def test_bulk_writes(nodes: Callable[..., Node]) -> None:
    a, b = nodes("A"), nodes("B")
    for j in range(20):
        a.s.create([{"id": f"bulk{j}-{i}", "i": i, "t": "y" * 100} for i in range(100)])
        b.s.create({"id": f"single{j}"})
    wait_converged([a, b])
    assert a.s.count == 2_020


def test_a_node_away_or_started_later_catches_up(nodes: Callable[..., Node]) -> None:
    """coilmq keeps nothing for a node that is away: catch-up brings what it missed."""
    a, b = nodes("A"), nodes("B")
    for i in range(300):
        a.s.create({"id": f"early{i}"})
    wait_converged([a, b])
    b.stop()
    for i in range(300):
        a.s.create({"id": f"while-b-away{i}"})
    a.s.create([{"id": f"bulk{i}", "note": "z" * 300} for i in range(200)])
    b.start()
    c = nodes("C")
    wait_converged([a, b, c])
    assert c.s.count == 800
    # The counters follow the last batch's commit, which the data shows first.
    for node in (b, c):
        wait_for(lambda node=node: node.status()["catchup_changesets_received"] > 0)


def test_named_in_the_configuration_it_connects_with_stomp_11_at_once(
    coilmq: CoilMQ, nodes: Callable[..., Node]
) -> None:
    offset = len(coilmq.text())
    # replication_broker = 'coilmq': the node speaks STOMP 1.1 from its first CONNECT.
    a, b = nodes("A", broker="coilmq"), nodes("B", broker="coilmq")
    a.s.create({"id": "hello"})
    wait_converged([a, b])
    assert a.status()["broker_kind"] == "coilmq"
    assert "Virtual hosting is not supported" not in coilmq.text()[offset:]


@pytest.mark.parametrize(
    ("size", "least", "most"), [(10, 1, 1), (3_400, 1, 2), (3_700, 2, 2), (50_000, 14, 20)]
)
def test_parts_fit_the_frame_with_the_longest_names(size: int, least: int, most: int) -> None:
    """Every frame as stomp.py writes it, headers escaped, fits coilmq's 4 KiB."""
    branch, key = "b" * 64, NodeKey.generate()
    destination = wire.node_queue("c" * 100, branch)
    headers = {wire.CLIENTID: branch, wire.TYPE: wire.CATCHUP, wire.REQUEST_ID: "r" * 64}
    body = b"[" + b"x" * size + b"]"
    messages = parts.split(
        body, headers, branch, key, frame_bytes=COILMQ_FRAME_BYTES, destination=destination
    )
    assert b"".join(piece for piece, _ in messages) == body
    for piece, piece_headers in messages:
        frame = stomp.utils.Frame(
            "SEND",
            {
                **{k: v.replace(":", "\\c") for k, v in piece_headers.items()},
                "destination": destination,
                "content-type": wire.JSON,
                "content-length": len(piece),
                "receipt": uuid.uuid4().hex,
            },
            piece,
        )
        assert len(stomp.utils.pack(stomp.utils.convert_frame(frame))) <= COILMQ_FRAME_BYTES
    assert least <= len(messages) <= most
