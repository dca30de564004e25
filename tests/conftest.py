"""Suite-wide options: ``--mq host:port`` points the replication tests at a broker that
is already running (ActiveMQ, RabbitMQ, ...) instead of the embedded one they start."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mq",
        action="store",
        default=None,
        metavar="HOST:PORT",
        help="run the replication tests against this STOMP broker instead of starting "
        "the embedded one (tests that must kill or restart brokers keep using their own)",
    )
