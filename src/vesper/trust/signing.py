"""What is hashed and signed: a message's canonical form without its signature fields.

Changesets, announcements and catch-up requests are all JSON objects signed the same
way: ``sig`` (the Ed25519 signature, base64url) and ``key`` (the signer's public key) are
left out, the rest is encoded canonically (RFC 8785, see ``canonical``) and signed. Since
the signature covers the canonical form, re-encoding, batching and relaying never
invalidate it, and the same bytes give the changeset's content hash for the chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from vesper.trust.canonical import canonical
from vesper.trust.keys import NodeKey

SIGNATURE_FIELDS = ("sig", "key")
"""Left out of what is signed and hashed."""


def signing_bytes(body: Mapping[str, Any]) -> bytes:
    if "sig" in body or "key" in body:
        body = dict(body)
        for name in SIGNATURE_FIELDS:
            body.pop(name, None)
    return canonical(body)


def content_hash(body: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the signing bytes: what the next changeset's ``prev`` names."""
    return hashlib.sha256(signing_bytes(body)).hexdigest()


def sign(body: dict[str, Any], key: NodeKey) -> dict[str, Any]:
    """``body`` with this node's ``key`` and ``sig`` added (a new dict)."""
    return {**body, "key": key.public, "sig": key.sign(signing_bytes(body))}
