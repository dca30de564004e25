"""The datastore: local operations, remote changesets, queries and history."""

from vesper.store.store import ApplyResult, CommitResult, Store, open_store

__all__ = ["ApplyResult", "CommitResult", "Store", "open_store"]
