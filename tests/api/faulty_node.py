"""``vesper`` with a planted bug: reading the object ``explode`` raises RuntimeError.

Run as ``python faulty_node.py serve CONFIG ...`` to check, in a real server process,
that an unexpected exception answers 500, is logged with its traceback, and leaves the
node serving.
"""

from __future__ import annotations

import sys
from typing import Any

from vesper.cli.main import main
from vesper.store import Store

_get_json = Store.get_json


def _exploding_get_json(self: Store, obj_id: str) -> Any:
    if obj_id == "explode":
        raise RuntimeError("planted bug for the test")
    return _get_json(self, obj_id)


if __name__ == "__main__":
    Store.get_json = _exploding_get_json  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
