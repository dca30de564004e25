from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.replication.harness import Node, new_channel
from vesper.broker.process import BrokerProcess


@pytest.fixture(scope="session")
def shared_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """The broker most replication tests share: ``--mq`` or an embedded one."""
    mq = request.config.getoption("--mq")
    if mq:
        host, _, port = mq.rpartition(":")
        yield (host or "127.0.0.1", int(port))
        return
    broker = BrokerProcess(tmp_path_factory.mktemp("broker"), control=True, allow_anonymous=True)
    broker.start()
    try:
        yield (broker.host, broker.port)
    finally:
        broker.stop()


@pytest.fixture
def brokers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., BrokerProcess]]:
    """Embedded brokers of the test's own, for tests that kill, restart or degrade them.

    Under ``--mq`` these tests are skipped: they would run on embedded brokers anyway,
    exactly as in the default run.
    """
    if request.config.getoption("--mq"):
        pytest.skip("kills or degrades its own embedded brokers; covered by the default run")
    started: list[BrokerProcess] = []

    def make(**kwargs: object) -> BrokerProcess:
        kwargs.setdefault("allow_anonymous", True)  # loopback only
        broker = BrokerProcess(tmp_path / f"broker{len(started)}", control=True, **kwargs)
        started.append(broker)
        return broker.start()

    yield make
    for broker in started:
        broker.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., list[Node]]]:
    """Start nodes on one new channel (or the ``channel`` given: a name, or a tuple of
    names for a hub); all are stopped at the end."""
    made: list[Node] = []

    def make(branches: list[str], hosts: list[tuple[str, int]], **kwargs: object) -> list[Node]:
        channel = kwargs.pop("channel", None) or new_channel()
        nodes = [
            Node(b, hosts, channel, tmp_path, **kwargs).start()  # type: ignore[arg-type]
            for b in branches
        ]
        made.extend(nodes)
        return nodes

    yield make
    for node in made:
        node.stop()
