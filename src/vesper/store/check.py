"""The full check of a store file (``vesper check``): what opening checks, and more.

- SQLite's full ``integrity_check`` (every page and record, and every index against its
  table; opening runs the faster ``quick_check``, which skips the indexes);
- the ``meta`` table: schema version, branch id and state;
- the chain checkpoint, against the changesets it names;
- every changeset, from the first: its hash, its ``prev`` link and, for the last of each
  origin, the head the state records (opening re-hashes only those after the
  checkpoint, so this is what finds a changeset altered before it);
- every pending changeset: well-formed, and stored under its own id;
- the digest's bucket states (when the state says they are kept), against the live
  objects: a wrong one would be served as the store's digest until it is recomputed.

It reads through a read-only connection: it never changes the file, damaged or not, and
runs beside a node that is serving it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from vesper.errors import ConfigError, InvalidChangeset
from vesper.history.changeset import parse_changeset
from vesper.storage.damage import connect_read_only, file_problems
from vesper.storage.database import SCHEMA_VERSION, Reader
from vesper.store.chain import ChainWalk, Checkpoint, Problems, load_checkpoint, scan
from vesper.store.digest import KEPT_MARK, computed_states, stored_states

PROGRESS_S = 2.0
"""Seconds between two progress lines of a long check."""

Progress = Callable[[str], None]


@dataclass
class CheckReport:
    path: str
    problems: Problems
    changesets: int = 0
    origins: int = 0
    pending: int = 0
    seconds: float = 0.0

    @property
    def sound(self) -> bool:
        return not self.problems


def check_store(path: str, progress: Progress | None = None, limit: int = 100) -> CheckReport:
    """Check the store file at ``path``; ConfigError if it is missing or not a store.

    ``progress`` gets a line of text now and then on long work; at most ``limit``
    problems are kept (all are counted).
    """
    say = progress or (lambda _text: None)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file")
    started = time.monotonic()
    report = CheckReport(path, Problems(limit))
    conn = connect_read_only(path)
    try:
        if _check_file(conn, report, say):
            reader = Reader(conn)
            conn.execute("BEGIN")  # one snapshot, even beside a node that writes
            state, own = None, ""
            try:
                state, own = _check_meta(reader, report)
            except sqlite3.DatabaseError as exc:
                report.problems.add(f"reading the meta table failed: {exc}")
            _guarded(
                report, "the changesets", partial(_check_chain, reader, report, state, own, say)
            )
            _guarded(report, "the pending changesets", partial(_check_pending, reader, report))
            _guarded(report, "the digest", partial(_check_digest, reader, report, state, say))
    finally:
        conn.close()
    report.seconds = time.monotonic() - started
    return report


def _guarded(report: CheckReport, what: str, step: Callable[[], None]) -> None:
    """Run ``step``; the file being unreadable there is one more problem, not the end."""
    try:
        step()
    except sqlite3.DatabaseError as exc:
        report.problems.add(f"reading {what} failed: {exc}")


def _check_file(conn: sqlite3.Connection, report: CheckReport, say: Progress) -> bool:
    """SQLite's integrity_check; whether the file could be read as a store at all."""
    size_mb = os.path.getsize(report.path) / 1e6
    say(f"SQLite integrity_check of {size_mb:.0f} MB")
    started = last = time.monotonic()

    def tick() -> int:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_S:
            last = now
            say(f"SQLite integrity_check: {now - started:.0f} s")
        return 0

    conn.set_progress_handler(tick, 100_000)
    try:
        found = file_problems(conn, full=True, limit=report.problems.limit)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        report.problems.add(f"SQLite cannot read the file: {exc}")
        return False
    finally:
        conn.set_progress_handler(None, 0)
    for problem in found:
        report.problems.add(f"SQLite: {problem}")
    if not {"meta", "changesets", "pending"} <= tables:
        if found:
            return False  # too damaged to say what it was
        raise ConfigError(f"{report.path} is not a Vesper store (it has no changesets table)")
    return True


def _check_meta(reader: Reader, report: CheckReport) -> tuple[dict[str, Any] | None, str]:
    """The state and the store's own branch id, as far as they can be read."""
    meta = dict(
        reader.fetch(
            "SELECT key, value FROM meta WHERE key IN ('schema_version', 'branch_id', 'state')"
        )
    )
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        report.problems.add(f"meta: schema version {version!r} is not {SCHEMA_VERSION}")
    own = meta.get("branch_id")
    if own is None and "state" in meta:
        report.problems.add("meta: the store's branch id is missing")
    state = None
    try:
        state = orjson.loads(meta.get("state", "null"))
        valid = isinstance(state, dict) and isinstance(state.get("vv"), dict)
        if state is not None and not valid:
            raise ValueError
    except ValueError:
        report.problems.add("meta: the store's state does not parse")
        state = None
    return state, own or ""


def _check_chain(
    reader: Reader, report: CheckReport, state: dict[str, Any] | None, own: str, say: Progress
) -> None:
    load_checkpoint(reader, report.problems)
    total = reader.fetch("SELECT count(*) FROM changesets")[0][0]
    walk = ChainWalk(Checkpoint(), own, report.problems)
    last = time.monotonic()
    for page in scan(reader, 0):
        for row in page:
            walk.feed(*row)
        if time.monotonic() - last >= PROGRESS_S:
            last = time.monotonic()
            say(f"{walk.rows:,} of {total:,} changesets verified")
    if state is not None:
        walk.finish(state)
    report.changesets = walk.rows
    report.origins = len(walk.checkpoint().origins)
    say(f"{walk.rows:,} changesets verified, of {report.origins} origins")


def _check_pending(reader: Reader, report: CheckReport) -> None:
    for origin, counter, body in reader.fetch("SELECT origin, counter, body FROM pending"):
        report.pending += 1
        name = f"{origin}.{counter}"
        try:
            cs = parse_changeset(body)
        except InvalidChangeset as exc:
            report.problems.add(f"pending changeset {name}: {exc}")
            continue
        if cs.id != name:
            report.problems.add(f"pending changeset {name}: its body is changeset {cs.id}")


def _check_digest(
    reader: Reader, report: CheckReport, state: dict[str, Any] | None, say: Progress
) -> None:
    if state is None or state.get(KEPT_MARK) is not True:
        return  # not kept (an older version wrote the file): computed when it is opened
    cure = "delete the rows of digest_buckets and open the store: it computes them again"
    stored = stored_states(reader)
    if stored is None:
        report.problems.add(f"digest_buckets: not 256 well-formed bucket states; {cure}")
        return
    say("digest of the live objects")
    computed, _ = computed_states(reader)
    wrong = [b for b in range(len(computed)) if computed[b] != stored[b]]
    if wrong:
        listed = ", ".join(map(str, wrong[:10])) + (", ..." if len(wrong) > 10 else "")
        what = "1 bucket state does" if len(wrong) == 1 else f"{len(wrong)} bucket states do"
        report.problems.add(
            f"digest_buckets: {what} not match the objects (bucket {listed}); {cure}"
        )
