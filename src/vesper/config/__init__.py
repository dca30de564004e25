"""Node configuration: the typed ``Settings`` and how files and overrides become one.

Read configuration only at the edges (CLI, server start) and hand ``Settings`` or
its fields to everything else.
"""

from vesper.config.loader import load_settings, parse_file, parse_overrides
from vesper.config.settings import Settings, Variable, known_variables
from vesper.storage.url import StorageLocation, parse_storage_url

__all__ = [
    "Settings",
    "StorageLocation",
    "Variable",
    "known_variables",
    "load_settings",
    "parse_file",
    "parse_overrides",
    "parse_storage_url",
]
