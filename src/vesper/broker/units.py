"""Sizes and durations as an operator writes them: ``256MiB``, ``30d``, ``90s``."""

from __future__ import annotations

import re

from vesper.broker.errors import BrokerConfigError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER_UNIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str, option: str = "size") -> int:
    """Bytes from ``1048576``, ``512KiB``, ``256MiB``, ``1GB`` (KiB = 1024, KB = 1000)."""
    match = _NUMBER_UNIT.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise BrokerConfigError(
            f"{option} {text!r} is not a size: write bytes, or a number with"
            " KiB, MiB, GiB (or KB, MB, GB), e.g. 256MiB"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str, option: str = "duration") -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w``."""
    match = _NUMBER_UNIT.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _DURATION_UNITS:
        raise BrokerConfigError(
            f"{option} {text!r} is not a duration: write seconds, or a number with"
            " s, m, h, d or w, e.g. 30d (0 = never)"
        )
    return float(match.group(1)) * _DURATION_UNITS[unit]


def format_size(n: float) -> str:
    """``268435456`` -> ``256.0 MiB``, for log lines."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
