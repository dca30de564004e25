"""Freed large blocks go back to the system (vesper.heap), in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vesper.heap import _glibc

pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc's allocator only")

# After one large block glibc serves blocks below its size from the heap; a small block
# left after each (too large for Python's own allocator) keeps the freed ones from
# being trimmed off the heap's top. Prints how many MB the process kept.
HOLD = """
import sys
from vesper.heap import return_large_blocks
print(return_large_blocks() if sys.argv[1] == "set" else None)
def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) // 1024
first = bytearray(8 << 20)
del first
base = rss_mb()
survivors, blocks = [], []
for _ in range(40):
    blocks.append(bytearray(2 << 20))
    survivors.append(bytearray(600))
del blocks
print(rss_mb() - base)
"""


def held_mb(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", HOLD, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_large_blocks_are_returned_once_set() -> None:
    result, kept = held_mb("set")
    assert result == "True"
    assert kept < 20, f"{kept} MB of 80 MB freed stayed with the process"


def test_without_it_the_same_blocks_stay_with_the_process() -> None:
    # The check above would pass on an allocator that returns everything anyway; this
    # shows the pattern really makes glibc hold the memory.
    result, kept = held_mb("unset")
    assert result == "None"
    assert kept > 60


def test_the_environment_setting_wins() -> None:
    result, kept = held_mb("set", MALLOC_MMAP_THRESHOLD_="33554432")
    assert result == "False"
    assert kept > 60
