"""The datastore: local operations, remote changesets, queries and history."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vesper.store.store import (
        ApplyResult,
        CommitResult,
        Store,
        open_store,
        open_store_from_settings,
    )

__all__ = ["ApplyResult", "CommitResult", "Store", "open_store", "open_store_from_settings"]


def __getattr__(name: str) -> Any:
    # Imported on first use, as the package's: the digest worker process imports one
    # module of this package and none of the store.
    if name not in __all__:
        raise AttributeError(f"module 'vesper.store' has no attribute {name!r}")
    value = getattr(importlib.import_module("vesper.store.store"), name)
    globals()[name] = value
    return value
