"""The datastore: local operations, remote changesets, queries and history."""

from vesper.store.store import (
    ApplyResult,
    CommitResult,
    Store,
    open_store,
    open_store_from_settings,
)

__all__ = ["ApplyResult", "CommitResult", "Store", "open_store", "open_store_from_settings"]
