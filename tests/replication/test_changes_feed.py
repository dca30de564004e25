"""A change made on one node appears in another node's changes feed once replicated:
a long poll on B wakes for A's write. Real ``vesper serve`` processes on an embedded
broker."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.replication.harness import new_channel
from tests.replication.test_bootstrap import broker, start  # noqa: F401 - fixture
from vesper.broker.process import BrokerProcess


def test_a_replicated_change_wakes_a_long_poll_on_the_other_node(
    broker: BrokerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    channel = new_channel()
    a = start(tmp_path / "A", "A", broker, channel, slow=False)
    b = start(tmp_path / "B", "B", broker, channel, slow=False)
    try:
        with b.client() as client:
            since = client.get("/api/changes", params={"since": "now"}).json()["last_seq"]
        answers: list[dict] = []

        def poll() -> None:
            with b.client() as client:
                answer = client.get(
                    "/api/changes",
                    params={
                        "feed": "longpoll",
                        "since": since,
                        "timeout": 30_000,
                        "include_objects": "true",
                    },
                )
                answers.append(answer.json())

        poller = threading.Thread(target=poll)
        poller.start()
        with a.client() as client:
            assert client.post("/api/objects", json={"id": "from-a", "v": 1}).status_code == 201
        poller.join(40)
        (entry,) = answers[0]["results"]
        assert entry["origin"] == "A" and entry["id"] == "A.1"
        assert entry["objects"] == [
            {"id": "from-a", "deleted": False, "object": {"id": "from-a", "v": 1}}
        ]
    finally:
        for node in (a, b):
            node.kill()
