"""``vesper broker``: the command-line front end of the embedded broker.

The lead's CLI calls ``add_arguments`` and ``run``; ``python -m vesper.broker`` uses
the same two functions. ``vesper broker adduser FILE NAME`` is a subcommand of this
parser (see ``adduser``), so ``vesper``'s own dispatch needs nothing for it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from vesper.broker import adduser
from vesper.broker.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_PORT,
    DEFAULT_PREFETCH,
    BrokerConfig,
)
from vesper.broker.errors import BrokerConfigError, BrokerError
from vesper.broker.faults import FaultSettings
from vesper.broker.server import Broker
from vesper.broker.units import parse_duration, parse_size
from vesper.heap import return_large_blocks
from vesper.logformat import FORMATS
from vesper.logformat import configure as configure_logging

log = logging.getLogger("vesper.broker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the broker's options to ``parser``."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to listen on (%(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port, 0 = a free one (%(default)s)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep queues and durable subscriptions in SQLite here (default: memory only)",
    )
    access = parser.add_argument_group("access (one of --users, --allow-anonymous is required)")
    access.add_argument(
        "--users",
        type=Path,
        metavar="FILE",
        help="TOML file of users, passcode hashes and permissions (see `adduser`)",
    )
    access.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="accept CONNECT without login, with every right (for loopback and tests)",
    )
    access.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="PEM certificate: speak STOMP over TLS"
    )
    access.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM key of --tls-cert")
    access.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="PEM authority: require client certificates it signed",
    )
    parser.add_argument(
        "--max-frame-bytes",
        type=int,
        default=DEFAULT_MAX_FRAME_BYTES,
        help="largest frame accepted (%(default)s)",
    )
    parser.add_argument(
        "--max-pending-bytes",
        type=int,
        default=DEFAULT_MAX_PENDING_BYTES,
        help="undelivered bytes held in memory per subscription or queue (%(default)s)",
    )
    parser.add_argument(
        "--max-memory",
        default="256MiB",
        help="budget for unfinished frames and messages held in memory, all connections"
        " together; bytes or KiB/MiB/GiB (%(default)s)",
    )
    parser.add_argument(
        "--max-subscriptions-per-connection",
        type=int,
        default=DEFAULT_MAX_SUBSCRIPTIONS,
        help="subscriptions one connection may hold (%(default)s)",
    )
    parser.add_argument(
        "--durable-expiry",
        default="30d",
        help="delete durable subscriptions without a consumer for this long; seconds or"
        " s/m/h/d/w, 0 = never (%(default)s)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=DEFAULT_PREFETCH,
        help="unacked messages in flight per subscription without a prefetch header,"
        " 0 = unbounded (%(default)s)",
    )
    parser.add_argument(
        "--control", action="store_true", help="accept requests on /vesper-control/ destinations"
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--drop", type=float, default=0.0, help="fraction of deliveries dropped")
    faults.add_argument(
        "--duplicate", type=float, default=0.0, help="fraction of deliveries sent twice"
    )
    faults.add_argument("--delay-ms", type=int, default=0, help="delay of delayed deliveries")
    faults.add_argument(
        "--delay",
        type=float,
        default=None,
        help="fraction of deliveries delayed by --delay-ms (default 1 when --delay-ms is set)",
    )
    faults.add_argument("--paused", action="store_true", help="start with delivery paused")
    faults.add_argument("--fault-seed", type=int, help="seed for repeatable fault choices")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=FORMATS,
        help="text: one line per event; json: one JSON object per line, the node's fields"
        " (%(default)s)",
    )
    commands = parser.add_subparsers(dest="broker_command", metavar="{adduser}")
    adduser.add_arguments(
        commands.add_parser(
            "adduser",
            help="add a user to a --users file",
            description="Add a user (scrypt passcode hash and permissions) to a users"
            " file, creating it with mode 0600 if absent.",
        )
    )


def config_from_args(args: argparse.Namespace) -> BrokerConfig:
    """Build the broker settings; raises BrokerConfigError naming a bad value."""
    delay = args.delay if args.delay is not None else (1.0 if args.delay_ms else 0.0)
    return BrokerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        users=args.users,
        allow_anonymous=args.allow_anonymous,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        max_frame_bytes=args.max_frame_bytes,
        max_pending_bytes=args.max_pending_bytes,
        max_memory=parse_size(args.max_memory, "--max-memory"),
        max_subscriptions_per_connection=args.max_subscriptions_per_connection,
        durable_expiry=parse_duration(args.durable_expiry, "--durable-expiry"),
        default_prefetch=args.prefetch,
        control=args.control,
        faults=FaultSettings(
            drop=args.drop,
            duplicate=args.duplicate,
            delay=delay,
            delay_ms=args.delay_ms,
            paused=args.paused,
            seed=args.fault_seed,
        ),
    )


def run(args: argparse.Namespace) -> int:
    """Run the broker until SIGINT or SIGTERM; 0 on a clean stop."""
    if getattr(args, "broker_command", None) == "adduser":
        return adduser.run(args)
    if not logging.getLogger().handlers:
        # Other libraries stay at WARNING; the broker's own lines at --log-level.
        configure_logging("WARNING", getattr(args, "log_format", "text"))
    log.setLevel(getattr(args, "log_level", "INFO"))
    return_large_blocks()  # a long-running process's C heap (vesper.heap says why)
    try:
        broker = Broker(config_from_args(args))
    except BrokerConfigError as exc:
        print(f"vesper broker: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(broker))
    except BrokerError as exc:
        print(f"vesper broker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"vesper broker: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


async def _serve(broker: Broker) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    log.info("vesper broker listening on %s", broker.url)
    try:
        await stop.wait()
    finally:
        await broker.stop()
        log.info("vesper broker stopped")
    return 0
