"""Conditional requests (RFC 9110 section 13) and idempotency keys over HTTP.

An object's ETag is its version (``ObjectState.version``), the same on every node that
holds the same writes to it. ``If-Match`` on PUT, PATCH and DELETE commits only if the
object is still at that version (412 otherwise), checked in the commit's own
transaction; ``If-None-Match: *`` on PUT creates only; ``If-None-Match`` on GET answers
304 when the client's copy is current. These guard writes on one node: a concurrent
write on another node is not seen until it replicates, and then merges as a conflict
(docs/http-api.md).
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request

from vesper.api.errors import HttpError
from vesper.store.idempotency import MAX_KEY_CHARS
from vesper.store.ops import check_version


def etag(version: str) -> str:
    return f'"{version}"'


def if_match(request: Request) -> str | None:
    """The version ``If-Match`` names, or None without the header."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    value = value.strip()
    if value == "*" or "," in value:
        raise HttpError(
            400, "If-Match takes one ETag, as a read of the object gave it (not * or a list)"
        )
    if value.startswith("W/"):
        # A weak tag never matches under the strong comparison If-Match requires.
        return "0" * 32
    return _version(value, "If-Match")


def if_none_match_any(request: Request) -> bool:
    """``If-None-Match: *`` (write only if the object does not exist)."""
    value = request.headers.get("if-none-match")
    if value is None:
        return False
    if value.strip() != "*":
        raise HttpError(400, "on a write, If-None-Match takes only * (create, never replace)")
    return True


def not_modified(request: Request, version: str) -> bool:
    """Whether a GET's ``If-None-Match`` names this version (or is ``*``)."""
    value = request.headers.get("if-none-match")
    if value is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in value.split(",")]
    return "*" in tags or etag(version) in tags


def idempotency(request: Request, body: bytes) -> tuple[str, str] | None:
    """``(key, fingerprint)`` from ``Idempotency-Key``, or None without the header."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise HttpError(
            400, f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters"
        )
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(body)
    return key, digest.hexdigest()


def _version(tag: str, header: str) -> str:
    if len(tag) < 2 or tag[0] != '"' or tag[-1] != '"':
        raise HttpError(400, f'{header} takes an ETag in quotes, as reads give it: "..."')
    return check_version(tag[1:-1], header)
