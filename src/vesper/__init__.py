"""Vesper: a JSON document datastore with full revision history, replicated over STOMP."""

__version__ = "0.1.0"

from vesper.config import Settings, load_settings
from vesper.store import Store, open_store, open_store_from_settings

__all__ = [
    "Settings",
    "Store",
    "__version__",
    "load_settings",
    "open_store",
    "open_store_from_settings",
]
