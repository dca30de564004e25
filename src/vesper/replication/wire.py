"""Destinations, headers and message bodies on the broker (docs/replication.md).

- ``/topic/<channel>``: changesets, one JSON object per message or, when a backlog is
  sent, a JSON array of them; headers ``clientid``, ``persistent:true``,
  ``content-type:application/json``.
- ``/topic/<channel>.sync``: announcements ``{"type": "announce", "branch", "revision"}``.
- ``/queue/<channel>.<branch_id>``: one per node: catch-up requests to that node, the
  catch-up batches it receives (JSON arrays of changesets, numbered, the last one
  marked), and the acknowledgements ``{"type": "ack", "branch", "request_id", "batch"}``
  an asker sends its answerer after applying each batch (flow control).

Announcements, requests and acknowledgements are signed like changesets (``key``,
``sig``).
"""

from __future__ import annotations

from typing import Any

import orjson

CLIENTID = "clientid"
TYPE = "vesper-type"
REQUEST_ID = "vesper-request"
LAST = "vesper-last"
BATCH = "vesper-batch"

CHANGESETS = "changesets"
ANNOUNCE = "announce"
REQUEST = "request"
CATCHUP = "catchup"
ACK = "ack"

JSON = "application/json"


def topic(channel: str) -> str:
    return f"/topic/{channel}"


def sync_topic(channel: str) -> str:
    return f"/topic/{channel}.sync"


def node_queue(channel: str, branch_id: str) -> str:
    return f"/queue/{channel}.{branch_id}"


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


def decode_changesets(body: bytes | str) -> list[Any]:
    """The changesets in a message body: one object or an array of them."""
    value = orjson.loads(body)
    return value if isinstance(value, list) else [value]


def decode_object(body: bytes | str) -> dict[str, Any]:
    value = orjson.loads(body)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value
