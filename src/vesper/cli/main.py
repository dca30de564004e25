"""``vesper`` entry point: dispatches to the subcommand modules.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. A
VesperError escaping a subcommand becomes one line on stderr and exit status 2, never a
traceback: configuration mistakes are the common case and the message names the fix.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vesper import __version__
from vesper.errors import VesperError

SUBCOMMANDS = {
    "serve": ("vesper.cli.serve", "run one node: HTTP API plus replication"),
    "broker": ("vesper.broker.cli", "run the embedded STOMP broker"),
    "cluster": ("vesper.cli.cluster", "demo: an embedded broker and N replicating nodes"),
    "keygen": ("vesper.cli.keygen", "print a new Ed25519 key pair for replication_key_file"),
    "check": ("vesper.cli.check", "check a store file for damage (integrity and hash chain)"),
    "status": ("vesper.cli.status", "the cluster as a table: each node's state, lag and queues"),
    "verify": ("vesper.cli.verify", "compare nodes' digests and list the objects that differ"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesper",
        description="Vesper: a JSON document datastore with full revision history, "
        "replicated through STOMP message brokers.",
    )
    parser.add_argument("--version", action="version", version=f"vesper {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built yet
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    args.extra = extra
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args) or 0)
    except VesperError as exc:
        print(f"vesper {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
