"""``vesper serve [CONFIG] [--name=value ...]``: run one node until SIGINT or SIGTERM.

Everything that can fail because of the configuration (the file, the values, the
listen address, opening the store) fails before the server starts, as one ConfigError
or StorageError line from the dispatcher. A signal lets uvicorn finish the requests in
flight, then the store is closed and the exit status is 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import prometheus_client
from starlette.types import ASGIApp

from vesper.api import create_app
from vesper.api.server import ApiServer, create_server
from vesper.config import Settings, load_settings, parse_overrides
from vesper.errors import ConfigError
from vesper.heap import return_large_blocks
from vesper.logformat import configure
from vesper.node import Node

log = logging.getLogger("vesper.serve")

AppFactory = Callable[[Node], ASGIApp]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [-h] [CONFIG] [--name=value ...]"
    parser.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help="configuration file: Vesper style (name = value lines), .toml or .json",
    )
    parser.epilog = (
        "Any configuration variable can also be given as --name=value, e.g. --port=8001 "
        "--save_history=True; these override the file. See docs/configuration.md."
    )
    parser.set_defaults(accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    # Overrides first: "--port 8001" (a space, not "=") would otherwise make "8001" the
    # CONFIG file and report a missing file instead of the malformed override.
    overrides = parse_overrides(args.extra)
    settings = load_settings(args.config, overrides)
    configure_logging(settings.log_level, settings.log_format)
    # A "_created" timestamp beside every counter doubles /metrics for no use here;
    # the switch is process-wide, so it is thrown here at the edge, not in the library.
    prometheus_client.disable_created_metrics()
    # Process-wide too: the C heap of a long-running node (vesper.heap says why).
    return_large_blocks()
    # serve() handles stop signals while it runs and restores these afterwards: a
    # second SIGTERM arriving while the process exits then no longer turns a clean
    # stop into death by signal.
    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    return serve(settings)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr in the node's format (vesper.logformat), the broker's too."""
    configure(level, fmt)


def serve(settings: Settings, app_factory: AppFactory = create_app) -> int:
    """Run a node for ``settings`` until a stop signal; returns the exit status."""
    sock = bind_socket(settings.host, settings.port)
    node = Node(settings)
    server: ApiServer | None = None

    def should_stop_now() -> bool:
        # After a graceful stop uvicorn raises the signal again for the previous
        # handler (ours): the server has already stopped then, so there is nothing to do.
        return server is None or not server.should_exit

    try:
        with _stop_on_signals(should_stop_now):
            # Built first: a TLS file that cannot be used is a ConfigError before the
            # store opens (vesper.api.server has the timeouts, limits and TLS).
            server = create_server(settings, app_factory(node), node.branch_id)
            node.start()
            server.run(sockets=[sock])
    except _Stopped:
        pass
    finally:
        with _signals_ignored():
            node.close()
            sock.close()
    log.info("vesper node %s stopped", node.branch_id)
    return 0


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``; ConfigError naming the address if it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"host: cannot resolve {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        # Restarting on the same port must not wait for old connections in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(choose another host or port; port = 0 picks a free one)"
        ) from None
    return sock


class _Stopped(BaseException):
    """A stop signal arrived before uvicorn took over signal handling."""


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _stop_on_signals(should_stop_now: Callable[[], bool]) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into _Stopped outside uvicorn's own handling.

    Without this a SIGTERM that uvicorn re-raises after its graceful shutdown would hit
    the default handler and kill the process before the store is closed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals belong to the main thread; an embedding program handles them
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if should_stop_now():
            raise _Stopped

    previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Let the store close even if the user presses Ctrl-C again meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
