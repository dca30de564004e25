"""Suite-wide options: ``--mq host:port`` points the replication tests at a broker that
is already running (ActiveMQ, RabbitMQ, ...) instead of the embedded one they start.

The ``--mq-tls``, ``--mq-ca``, ``--mq-channel``, ``--mq-user`` and
``--mq-readonly-user`` options describe that broker's TLS listener and limited users,
as ``scripts/brokers/{activemq,rabbitmq}.sh`` write them to ``DIR/access.env``; the
tests of ``tests/replication/test_broker_access.py`` that need them skip without them.

``--mq-network`` lists the STOMP listeners of the brokers of one network or cluster
(ActiveMQ network of brokers, RabbitMQ cluster, ...) and ``--mq-network-pids`` their
processes in the same order, as ``scripts/brokers/*-network.sh`` write them to
``DIR/network.env``; ``tests/replication/test_broker_network.py`` skips without them.
``--mq-network-queue-type quorum`` gives its nodes quorum queues (RabbitMQ clusters).
"""

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
    for option, metavar, text in (
        ("--mq-tls", "HOST:PORT", "the --mq broker's STOMP-over-TLS listener"),
        ("--mq-ca", "FILE", "PEM authority that signed the --mq-tls listener's certificate"),
        ("--mq-channel", "NAME", "the one channel --mq-user and --mq-readonly-user may use"),
        ("--mq-user", "NAME:PASS", "a broker user with only the rights of a node on --mq-channel"),
        ("--mq-readonly-user", "NAME:PASS", "a broker user who may only subscribe to --mq-channel"),
    ):
        parser.addoption(option, action="store", default=None, metavar=metavar, help=text)
    parser.addoption(
        "--mq-network",
        action="store",
        default=None,
        metavar="HOST:PORT,HOST:PORT[,...]",
        help="STOMP listeners of the brokers of one network or cluster, in order: the "
        "broker network tests run against them (the last one is killed)",
    )
    parser.addoption(
        "--mq-network-pids",
        action="store",
        default=None,
        metavar="PID,PID[,...]",
        help="the processes of the --mq-network brokers, same order",
    )
    parser.addoption(
        "--mq-network-queue-type",
        action="store",
        default="classic",
        choices=("classic", "quorum"),
        help="replication_queue_type of the nodes on --mq-network: quorum on a RabbitMQ "
        "cluster, whose classic queues die with the cluster node that holds them",
    )
