"""Vesper: a JSON document datastore with full revision history, replicated over STOMP."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from vesper.config import Settings, load_settings
    from vesper.store import Store, open_store, open_store_from_settings

# Imported on first use: a process that needs one module of the package (the store's
# digest worker) must not pay for all of it.
_EXPORTS = {
    "Settings": "vesper.config",
    "load_settings": "vesper.config",
    "Store": "vesper.store",
    "open_store": "vesper.store",
    "open_store_from_settings": "vesper.store",
}

__all__ = [
    "Settings",
    "Store",
    "__version__",
    "load_settings",
    "open_store",
    "open_store_from_settings",
]


if not TYPE_CHECKING:  # a type checker sees the imports above, and no catch-all

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            # A subpackage, as ``import vesper; vesper.store`` gave before.
            try:
                return importlib.import_module(f"vesper.{name}")
            except ModuleNotFoundError:
                raise AttributeError(f"module 'vesper' has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
