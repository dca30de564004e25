"""The store digest computed straight from its definition, for tests to compare with.

Deliberately naive: ``rfc8785`` for the canonical form, ``hashlib`` for SHAKE128 and
SHA-256, ``struct`` and a list of 1024 ints for the lanes. The one extension of RFC 8785:
an integer beyond 2**53 (which ``rfc8785`` refuses) is written as its exact digits.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import rfc8785

LANES = 1024
_SAFE = 2**53 - 1


def canonical(obj: Any) -> bytes:
    """RFC 8785 bytes, with integers beyond 2**53 as their exact decimal digits."""
    big: list[int] = []

    def mark(value: Any) -> Any:
        if type(value) is int and abs(value) > _SAFE:
            big.append(value)
            return f"\x00int{len(big) - 1}\x00"
        if type(value) is dict:
            return {k: mark(v) for k, v in value.items()}
        if type(value) is list:
            return [mark(v) for v in value]
        return value

    out = rfc8785.dumps(mark(obj))
    for i, value in enumerate(big):
        out = out.replace(b'"\\u0000int%d\\u0000"' % i, str(value).encode())
    return out


def lanes_of(obj: dict[str, Any]) -> tuple[int, ...]:
    return struct.unpack("<1024H", hashlib.shake_128(canonical(obj)).digest(2 * LANES))


def bucket_of(obj_id: str) -> int:
    return hashlib.sha256(obj_id.encode("utf-8")).digest()[0]


def state_digest(state: list[int]) -> str:
    return hashlib.sha256(struct.pack("<1024H", *state)).hexdigest()


def lane_sum(elements: list[tuple[int, ...]]) -> list[int]:
    """Lane-wise sum modulo 2**16 (all zero for none)."""
    if not elements:
        return [0] * LANES
    return [sum(lane) % 65536 for lane in zip(*elements, strict=True)]


def states(objects: list[dict[str, Any]]) -> tuple[list[int], list[list[int]]]:
    """The store's state and the 256 bucket states of these objects."""
    elements = [lanes_of(obj) for obj in objects]
    in_bucket: list[list[tuple[int, ...]]] = [[] for _ in range(256)]
    for obj, lanes in zip(objects, elements, strict=True):
        in_bucket[bucket_of(obj["id"])].append(lanes)
    return lane_sum(elements), [lane_sum(b) for b in in_bucket]


def reference_digest(objects: list[dict[str, Any]]) -> str:
    return state_digest(states(objects)[0])


def reference_buckets(objects: list[dict[str, Any]]) -> list[str]:
    return [state_digest(b) for b in states(objects)[1]]
