from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.replication.harness import Node, new_channel, wait_for
from tests.replication.memory_transport import Make, MemoryBroker, MemoryNode
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


# -- the in-memory transport (test_units, test_peer_states, test_readiness) ----------


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> MemoryBroker:
    """An in-memory broker; the tests that use it never run against a real one."""
    if request.config.getoption("--mq"):
        pytest.skip("runs on the in-memory transport, never on a broker: the default run")
    return MemoryBroker()


@pytest.fixture
def node(broker: MemoryBroker) -> Iterator[Make]:
    """Makes replication services on ``broker``, each connected before it is returned."""
    made: list[MemoryNode] = []

    def make(branch: str, **config: object) -> MemoryNode:
        n = MemoryNode(broker, branch, **config).start()  # type: ignore[arg-type]
        made.append(n)
        wait_for(lambda: n.service.current_link() is not None, 10, f"{branch} connected")
        return n

    yield make
    for n in made:
        n.stop()
