"""``vesper check DB`` (or ``--config CONFIG``): check a store file for damage.

Runs SQLite's full integrity_check and verifies every changeset's hash and chain
(``vesper.store.check``), reading only: it works on a stopped node's file and beside a
running one. Progress goes to stderr; each problem is a line on stdout, then a summary.
Exit status 0: sound; 1: damaged; 2: usage error (no such file, not a store).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vesper.config import load_settings, parse_storage_url
from vesper.errors import ConfigError
from vesper.store.check import check_store

MAX_PROBLEMS = 50
"""Problems listed one by one; past these only their number is given."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "db",
        nargs="?",
        metavar="DB",
        help="the store's SQLite file, or its storage URL (sqlite:///path.db)",
    )
    parser.add_argument(
        "--config",
        metavar="CONFIG",
        help="check the store of this node configuration (storage_url, or "
        "<work_dir>/<branch_id>.db) instead",
    )


def run(args: argparse.Namespace) -> int:
    path = _store_path(args)
    report = check_store(path, _progress(path), MAX_PROBLEMS)
    for problem in report.problems.items:
        print(f"{path}: {problem}")
    hidden = report.problems.count - len(report.problems.items)
    if hidden:
        print(f"{path}: ... and {hidden} more problems")
    checked = (
        f"{_count(report.changesets, 'changeset')} of {_count(report.origins, 'origin')} and "
        f"{report.pending} pending checked in {report.seconds:.1f} s"
    )
    if report.sound:
        print(f"{path}: sound (SQLite integrity_check ok; {checked})")
        return 0
    print(
        f"{path}: damaged, {_count(report.problems.count, 'problem')} ({checked}); "
        "restore it from a peer, see docs/integrity.md"
    )
    return 1


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _store_path(args: argparse.Namespace) -> str:
    if (args.db is None) == (args.config is None):
        raise ConfigError("give the store's file (DB) or --config CONFIG, not both")
    if args.config is not None:
        settings = load_settings(args.config, {})
        url, name = settings.effective_storage_url, "storage_url"
    elif args.db.startswith("sqlite:") or args.db == "mem://":
        url, name = args.db, "DB"
    else:
        return str(args.db)
    path = parse_storage_url(url, name).path
    if path is None:
        raise ConfigError(f"{name}: an in-memory store (mem://) has no file to check")
    return path


def _progress(path: str) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"vesper check: {path}: {text}", file=sys.stderr, flush=True)

    return say
