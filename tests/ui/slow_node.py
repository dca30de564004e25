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


def _slow_apply_parsed(self: Store, parsed: Sequence[Changeset]) -> ApplyResult:
    time.sleep(len(parsed) * float(os.environ[APPLY_DELAY]))
    return _apply_parsed(self, parsed)


if __name__ == "__main__":
    Store.apply_parsed = _slow_apply_parsed  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
