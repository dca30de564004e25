"""``vesper`` whose remote applies are slowed down: catch-up that the dashboard can watch.

Run as ``python slow_node.py serve CONFIG ...`` with ``VESPER_TEST_APPLY_DELAY_S=S`` in
the environment: every changeset received from another node then costs S seconds more
to apply. A node returning to a few hundred missed changesets takes seconds to catch up
instead of a fraction of one, which is shorter than the dashboard's poll.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from vesper.cli.main import main
from vesper.history.changeset import Changeset
from vesper.store import Store
from vesper.store.store import ApplyResult

APPLY_DELAY = "VESPER_TEST_APPLY_DELAY_S"
_apply_parsed = Store.apply_parsed


CHUNK = 25
"""Changesets per transaction: a real node applies a backlog of a few hundred in one
transaction, which would show the dashboard no progress between start and end; a
backlog of many thousands is applied in batches like these, only larger."""


def _slow_apply_parsed(self: Store, parsed: Sequence[Changeset]) -> ApplyResult:
    parts = []
    for start in range(0, max(1, len(parsed)), CHUNK):
        chunk = parsed[start : start + CHUNK]
        time.sleep(len(chunk) * float(os.environ[APPLY_DELAY]))
        parts.append(_apply_parsed(self, chunk))
    applied = [i for part in parts for i in part.applied]
    released = set(applied)  # pending in one chunk, applied by a later one
    return ApplyResult(
        applied=applied,
        pending=[i for part in parts for i in part.pending if i not in released],
        duplicates=[i for part in parts for i in part.duplicates],
        forks=[f for part in parts for f in part.forks],
        adopted=[i for part in parts for i in part.adopted],
        dropped=[c for part in parts for c in part.dropped],
    )


if __name__ == "__main__":
    Store.apply_parsed = _slow_apply_parsed  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
