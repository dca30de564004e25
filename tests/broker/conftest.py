"""Fixtures: brokers (in a thread or a subprocess) on free ports, and clients that are
always closed, so no socket, thread or event loop outlives its test."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.clients import Client, RawClient
from vesper.broker import BrokerConfig, BrokerProcess, BrokerThread


@pytest.fixture(autouse=True)
def no_broker_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test during which an in-process broker logged an error (an internal bug:
    client mistakes are logged at INFO). A test that provokes errors on purpose calls
    ``caplog.clear()``."""
    yield
    errors = [
        r
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR and r.name in ("vesper.broker", "asyncio")
    ]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
def start_broker() -> Iterator[Callable[..., BrokerThread]]:
    """Start in-process brokers: ``start_broker(data_dir=..., max_pending_bytes=...)``."""
    brokers: list[BrokerThread] = []

    def start(**settings: Any) -> BrokerThread:
        # Anonymous unless the test gives users: these brokers listen on loopback.
        settings.setdefault("allow_anonymous", "users" not in settings)
        broker = BrokerThread(BrokerConfig(port=0, **settings)).start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(start_broker: Callable[..., BrokerThread]) -> BrokerThread:
    """An in-memory broker in a thread of this process."""
    return start_broker()


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Start ``python -m vesper.broker`` subprocesses; killed at the end of the test."""
    procs: list[BrokerProcess] = []

    def start(data_dir: Path | None = None, args: tuple[str, ...] = (), **kw: Any) -> BrokerProcess:
        log = tmp_path / f"broker-{len(procs)}.log"
        kw.setdefault("allow_anonymous", "users" not in kw)
        proc = BrokerProcess(data_dir, args=args, log_path=log, **kw).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


@pytest.fixture
def client() -> Iterator[Callable[..., Client]]:
    """Make stomp.py clients: ``client(port, version="1.2", heartbeats=(0, 0), **connect)``;
    pass ``connect=False`` to get one not yet connected."""
    clients: list[Client] = []

    def make(
        port: int,
        version: str = "1.2",
        heartbeats: tuple[int, int] = (0, 0),
        connect: bool = True,
        **headers: str,
    ) -> Client:
        c = Client(port, version, heartbeats)
        clients.append(c)
        if connect:
            c.connect(**headers)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def raw() -> Iterator[Callable[..., RawClient]]:
    """Make raw-socket clients, closed at the end of the test."""
    clients: list[RawClient] = []

    def make(port: int, **kw: Any) -> RawClient:
        c = RawClient(port, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
