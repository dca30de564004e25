"""``storage_url`` parsing: ``sqlite:///rel.db``, ``sqlite:////abs.db``, ``mem://``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from vesper.errors import ConfigError

SYNCHRONOUS_MODES = ("normal", "full")


@dataclass(frozen=True)
class StorageLocation:
    path: str | None
    """Database file path, or None for an in-memory store."""
    synchronous: str = "normal"
    """SQLite ``synchronous`` pragma: ``normal`` survives a killed process, ``full`` also
    a power failure (one fsync per commit)."""

    @property
    def in_memory(self) -> bool:
        return self.path is None


def parse_storage_url(url: str) -> StorageLocation:
    if not isinstance(url, str):
        raise ConfigError(f"storage_url: expected a string, got {type(url).__name__}")
    base, _, query = url.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise ConfigError(
            f"storage_url: unknown option {sorted(unknown)[0]!r} in {url!r} (known: synchronous)"
        )
    synchronous = options.get("synchronous", "normal").lower()
    if synchronous not in SYNCHRONOUS_MODES:
        raise ConfigError(f"storage_url: synchronous must be normal or full, got {synchronous!r}")
    if base in ("mem://", "memory://", "mem:", "sqlite://", "sqlite:///:memory:"):
        return StorageLocation(None, synchronous)
    if base.startswith("sqlite:///") and len(base) > len("sqlite:///"):
        return StorageLocation(base[len("sqlite:///") :], synchronous)
    raise ConfigError(
        f"storage_url: expected sqlite:///relative.db, sqlite:////absolute.db "
        f"or mem://, got {url!r}"
    )
