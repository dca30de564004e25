"""``vesper`` with a planted bug: reading the object ``explode`` raises RuntimeError.

Run as ``python faulty_node.py serve CONFIG ...`` to check, in a real server process,
that an unexpected exception answers 500, is logged with its traceback, and leaves the
node serving.

With ``VESPER_TEST_CHANGESETS_FAIL_AFTER=N`` in the environment, the iterator of
``Store.changesets`` raises StorageError after N changesets: a store failing in the
middle of a streamed answer.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

from vesper.cli.main import main
from vesper.errors import StorageError
from vesper.store import Store

_version = Store.version
_changesets = Store.changesets
CHANGESETS_FAIL_AFTER = "VESPER_TEST_CHANGESETS_FAIL_AFTER"


def _exploding_version(self: Store, obj_id: str) -> Any:
    if obj_id == "explode":
        raise RuntimeError("planted bug for the test")
    return _version(self, obj_id)


def _failing_changesets(self: Store, *args: Any, **kwargs: Any) -> Iterator[Any]:
    items = _changesets(self, *args, **kwargs)  # validates its arguments at once
    return _fail_after(items, int(os.environ[CHANGESETS_FAIL_AFTER]))


def _fail_after(items: Iterator[Any], count: int) -> Iterator[Any]:
    try:
        for index, item in enumerate(items):
            if index == count:
                raise StorageError("planted storage failure in the middle of a scan")
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


if __name__ == "__main__":
    Store.version = _exploding_version  # type: ignore[method-assign]
    if CHANGESETS_FAIL_AFTER in os.environ:
        Store.changesets = _failing_changesets  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
