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


if not TYPE_CHECKING:  # a type checker sees the imports above, and no catch-all

    def __getattr__(name: str) -> Any:
        # Imported on first use: the digest worker process imports one module of this
        # package and none of the store.
        if name not in __all__:
            try:  # a submodule, as ``import vesper.store; vesper.store.store`` gave
                return importlib.import_module(f"vesper.store.{name}")
            except ModuleNotFoundError:
                raise AttributeError(f"module 'vesper.store' has no attribute {name!r}") from None
        value = getattr(importlib.import_module("vesper.store.store"), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
