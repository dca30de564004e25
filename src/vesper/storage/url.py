"""``storage_url`` parsing: ``sqlite:///rel.db``, ``sqlite:////abs.db``, ``mem://``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from vesper.errors import ConfigError

SYNCHRONOUS_MODES = ("normal", "full")
_EXPECTED = "'sqlite:///relative.db', 'sqlite:////abs/path.db' or 'mem://'"


@dataclass(frozen=True)
class StorageLocation:
    path: str | None
    """Database file path (relative to the working directory unless absolute), or None
    for an in-memory store."""
    synchronous: str = "normal"
    """SQLite ``synchronous`` pragma: ``normal`` survives a killed process, ``full`` also
    a power failure (one fsync per commit)."""

    @property
    def in_memory(self) -> bool:
        return self.path is None


def parse_storage_url(url: object, name: str = "storage_url") -> StorageLocation:
    """Split a storage URL into its parts; raise ConfigError naming ``name`` if invalid."""
    if url == "mem://":
        return StorageLocation(None)
    if not isinstance(url, str) or not url.startswith("sqlite:///"):
        raise _fail(name, _EXPECTED, url)
    path, _, query = url.removeprefix("sqlite:///").partition("?")
    if not path or path.endswith("/"):
        raise _fail(name, _EXPECTED, url)
    if not query:
        return StorageLocation(path)
    try:
        params = parse_qsl(query, strict_parsing=True)
    except ValueError:
        params = []
    modes = [v for k, v in params if k == "synchronous" and v in SYNCHRONOUS_MODES]
    if len(params) != 1 or len(modes) != 1:
        raise _fail(name, f"{_EXPECTED} with at most '?synchronous=normal|full'", url)
    return StorageLocation(path, modes[0])


def _fail(name: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{name}: expected {expected}, got {value!r}")
