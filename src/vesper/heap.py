"""The process's C heap: large blocks go back to the system when freed.

glibc serves a block of 128 KiB or more with its own ``mmap`` and unmaps it on free,
but raises that threshold to the size of every such block freed (up to 32 MiB). A node
parses each large message (a bulk changeset of a few MB makes orjson allocate tens of
MB at once), so after the first one those blocks come from the heap instead, whose
freed memory stays with the process in pieces other allocations cannot always reuse.
Measured on a node bootstrapping 20,000-object changesets: peak RSS 190 MB with the
sliding threshold, 156-163 MB with it fixed, at the same speed (one ``mmap`` and
``munmap`` per large block is nothing beside parsing it).

No library sets this; it is one ``mallopt`` call, made through ctypes, on glibc only. A
``MALLOC_MMAP_THRESHOLD_`` in the environment (glibc's own setting) wins.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (malloc.h)."""
MMAP_THRESHOLD_BYTES = 256 * 1024


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD_BYTES``; True if it was set here."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # no such name: not glibc
        return False
