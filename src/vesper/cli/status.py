"""``vesper status URL...``: the cluster as a table in the terminal.

Asks each given node for ``GET /api/status`` and prints one row per node: the given ones
and every peer they announce, so one URL is enough to see a whole channel. A node's
state is how the other nodes see it, in the words of the dashboard (in sync, catching
up, stuck, gone, diverged), the worst view winning; a given node that does not answer
is ``unreachable``. ``behind`` is the most changesets any viewer has that the node
lacks, with how long the oldest of them has been waiting where the viewer knows it.

Exit status 0: every node is in sync; 1: some node is not (or did not answer);
2: usage error. ``--watch S`` prints the table again every S seconds until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from vesper.cli.node_client import NodeClient, NodeClientError, add_client_arguments
from vesper.errors import InvalidRevision
from vesper.history.revision import parse_revision

STATE_WORDS = {
    "in_sync": "in sync",
    "catching_up": "catching up",
    "stuck": "stuck",
    "gone": "gone",
    "diverged": "diverged",
    "unreachable": "unreachable",
}
SEVERITY = ("self", "in_sync", "catching_up", "stuck", "gone", "diverged", "unreachable")
"""Worse to the right: a node's row shows the worst view of it ("self": no view)."""
COLUMNS = (
    "node",
    "state",
    "behind",
    "ahead",
    "changesets",
    "objects",
    "digest",
    "queues",
    "url",
    "problems",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="+", metavar="URL", help="base URL of a node")
    add_client_arguments(parser)
    parser.add_argument(
        "--watch",
        type=float,
        metavar="S",
        help="print the table again every S seconds until interrupted",
    )


@dataclass
class Row:
    """One node as the answers describe it."""

    name: str
    url: str = "-"
    state: str = "self"
    behind: int | None = None
    behind_s: float | None = None
    ahead: int | None = None
    status: dict[str, Any] | None = None

    def worse(self, state: str) -> None:
        if SEVERITY.index(state) > SEVERITY.index(self.state):
            self.state = state

    def cells(self) -> list[str]:
        s = self.status
        behind = "-" if self.behind is None else str(self.behind)
        if self.behind and self.behind_s is not None:
            behind += f" ({self.behind_s:g} s)"
        ahead = "-" if self.ahead is None else str(self.ahead)
        if s is None:
            changesets = objects = digest = queues = "?"
        else:
            changesets = _changesets(s.get("revision"))
            objects = str(s.get("objects", "?"))
            digest = str(s.get("digest") or "")[:12]
            queues = f"outbox {s.get('outbox', '?')}, pending {s.get('pending', '?')}"
        # "-": asked, and no other node asked names it, so none says how it stands.
        state = "-" if self.state == "self" else STATE_WORDS.get(self.state, self.state)
        return [
            self.name,
            state,
            behind,
            ahead,
            changesets,
            objects,
            digest,
            queues,
            self.url,
            "; ".join(self.problems()) or "-",
        ]

    def problems(self) -> list[str]:
        """What the node says of itself: a lost broker connection, /ready's reasons."""
        replication = (self.status or {}).get("replication") or {}
        out = list(replication.get("problems") or [])
        if replication.get("enabled") and not replication.get("connected") and not out:
            out.append("not connected to a broker")
        return out


def run(args: argparse.Namespace) -> int:
    urls = list(dict.fromkeys(u.rstrip("/") for u in args.urls))
    if args.watch is not None and args.watch <= 0:
        print("vesper status: --watch takes a positive number of seconds", file=sys.stderr)
        return 2
    nodes = [NodeClient.from_args(u, args) for u in urls]
    while True:
        rows, errors = survey(nodes)
        print(table(rows))
        for message in errors:
            print(message, file=sys.stderr)
        healthy = not errors and all(
            r.state in ("self", "in_sync") and not r.problems() for r in rows
        )
        if args.watch is None:
            return 0 if healthy else 1
        time.sleep(args.watch)
        print()


def survey(nodes: list[NodeClient]) -> tuple[list[Row], list[str]]:
    """Every node's row: those asked and the peers they name."""
    rows: dict[str, Row] = {}
    errors: list[str] = []
    answers: list[dict[str, Any]] = []
    for node in nodes:
        try:
            status = node.status()
        except NodeClientError as exc:
            errors.append(f"vesper status: {exc}")
            rows[node.url] = Row(name="?", url=node.url, state="unreachable")
            continue
        name = str(status.get("branch_id"))
        row = rows.setdefault(name, Row(name=name))
        row.url, row.status = node.url, status
        answers.append(status)
    for status in answers:
        peers = status["replication"].get("peers") or {}
        for name, info in peers.items():
            if not isinstance(info, dict):
                continue
            row = rows.setdefault(name, Row(name=name))
            state = "diverged" if info.get("diverged") and info.get("state") != "gone" else None
            row.worse(state or str(info.get("state") or "in_sync"))
            behind = info.get("behind_us")
            if isinstance(behind, int) and (row.behind is None or behind > row.behind):
                row.behind, row.behind_s = behind, info.get("behind_us_s")
            ahead = info.get("ahead_of_us")
            if isinstance(ahead, int) and (row.ahead is None or ahead > row.ahead):
                row.ahead = ahead
    return sorted(rows.values(), key=lambda r: (r.name == "?", r.name, r.url)), errors


def table(rows: list[Row]) -> str:
    lines = [list(COLUMNS)] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _changesets(revision: object) -> str:
    """How many changesets a revision names (the sum of its counters)."""
    try:
        return str(sum(parse_revision(revision).values()))
    except InvalidRevision:
        return "?"
