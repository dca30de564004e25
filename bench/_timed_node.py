"""``vesper`` whose remote applies are timestamped: bench-only instrumentation.

Run as ``python _timed_node.py serve CONFIG ...`` with ``VESPER_BENCH_APPLY_LOG=FILE`` in
the environment. Right after each apply transaction returns in the store
(``Store.apply_parsed``, what the replication apply worker calls), the wall-clock time
(``time.time_ns()``) is kept with the ids of the changesets it applied; a thread appends
them to FILE every ``FLUSH_S``, and the rest is written at exit (``vesper serve`` returns
normally on SIGTERM, so ``atexit`` runs). One line per applied changeset::

    <time_ns> <origin>.<counter> <object id>,<object id>,...

The first line of each process is ``#meta {json}`` (pid, the GIL switch interval).
bench/peers.py reads the file to learn when node B had each document, on B's own clock.

The apply path pays only a ``time_ns()`` call and a list append per apply transaction;
formatting and writing happen later, outside the store's lock, on the flusher thread.
This module changes nothing in the node's behaviour and is not for production use.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from vesper.cli.main import main  # noqa: E402
from vesper.history.changeset import Changeset  # noqa: E402
from vesper.store import Store  # noqa: E402
from vesper.store.store import ApplyResult  # noqa: E402

APPLY_LOG = "VESPER_BENCH_APPLY_LOG"
FLUSH_S = 0.1
"""Often enough for the bench to see completion promptly, rare enough that the flusher
takes the GIL from the apply worker a handful of times a second."""

_apply_parsed = Store.apply_parsed
_pending: list[tuple[int, list[str], Sequence[Changeset]]] = []
_write_lock = threading.Lock()
_fd = -1


def _timed_apply_parsed(self: Store, parsed: Sequence[Changeset]) -> ApplyResult:
    result = _apply_parsed(self, parsed)
    # Stamped after the COMMIT: from now on B's readers see these changesets.
    stamp = time.time_ns()
    if result.applied:
        # list.append is atomic under the GIL, so the apply path takes no lock of ours.
        _pending.append((stamp, result.applied, parsed))
    return result


def _lines(batch: list[tuple[int, list[str], Sequence[Changeset]]]) -> bytes:
    out: list[str] = []
    for stamp, applied, parsed in batch:
        by_id = {cs.id: cs for cs in parsed}
        for cs_id in applied:
            cs = by_id.get(cs_id)
            # A released pending changeset came in an earlier call: its objects are not
            # at hand, and an empty list keeps the line's shape.
            objects = ",".join(c["id"] for c in cs.changes) if cs is not None else ""
            out.append(f"{stamp} {cs_id} {objects}\n")
    return "".join(out).encode()


def flush() -> None:
    with _write_lock:
        if not _pending or _fd < 0:
            return
        batch = _pending[:]
        del _pending[: len(batch)]
        os.write(_fd, _lines(batch))


def _flusher() -> None:
    while True:
        time.sleep(FLUSH_S)
        flush()


def install(path: str) -> None:
    global _fd
    _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    meta = {"pid": os.getpid(), "switchinterval": sys.getswitchinterval()}
    os.write(_fd, f"#meta {json.dumps(meta)}\n".encode())
    Store.apply_parsed = _timed_apply_parsed  # type: ignore[method-assign]
    threading.Thread(target=_flusher, name="bench-apply-log", daemon=True).start()
    atexit.register(flush)


if __name__ == "__main__":
    install(os.environ[APPLY_LOG])
    try:
        status = main(sys.argv[1:])
    finally:
        flush()
    sys.exit(status)
