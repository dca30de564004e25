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

import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from vesper.document import strict_json

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


def changeset_headers(origin: str, expiry: Mapping[str, str]) -> dict[str, str]:
    """The headers of a changeset message on a channel topic, first sent or relayed:
    ``origin`` as its ``clientid``, persistent, with the broker's expiry headers."""
    return {CLIENTID: origin, "persistent": "true", TYPE: CHANGESETS, **expiry}


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


def decode_changesets(body: bytes | str) -> list[Any]:
    """The changesets in a message body: one object or an array of them. The same
    JSON rules as for HTTP bodies (no repeated key, integers within 64 bits): a value
    that a node would read differently from its origin is refused, not guessed at."""
    value = strict_json.loads(body, "message body")
    return value if isinstance(value, list) else [value]


def decode_object(body: bytes | str) -> dict[str, Any]:
    value = strict_json.loads(body, "message body")
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


MAX_CONTROL_BYTES = 1024 * 1024
"""Largest announcement, request or acknowledgement accepted."""
REQUEST_MAX_AGE_MS = 10 * 60 * 1000
"""A catch-up request older (or further ahead) than this by the receiver's clock is
refused: a captured request must not be replayable later."""
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_token(value: object) -> bool:
    """A request id or batch header: short and plain, safe to echo in headers."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def decode_control(kind: str, body: bytes) -> dict[str, Any]:
    """An announcement, request or acknowledgement, checked for shape: its ``type`` must
    be the kind of the destination it arrived on (the type is signed, so a signed
    message of one kind can never be replayed as another). Raises ValueError, or
    InvalidDocument for JSON that breaks the rules of strict_json."""
    if len(body) > MAX_CONTROL_BYTES:
        raise ValueError(f"a {kind} message is limited to {MAX_CONTROL_BYTES} bytes")
    value = decode_object(body)
    if value.get("type") != kind:
        raise ValueError(f"type {str(value.get('type'))[:40]!r} arrived where {kind!r} belongs")
    if not isinstance(value.get("revision", ""), str) or not isinstance(
        value.get("since", ""), str
    ):
        raise ValueError("revision and since must be strings")
    if kind in (REQUEST, ACK) and not is_token(value.get("request_id")):
        raise ValueError("request_id must be 1-64 of A-Za-z0-9_-")
    if kind == ACK and (type(value.get("batch")) is not int or not 0 < value["batch"] < 10**9):
        raise ValueError("batch must be a positive integer")
    if kind == REQUEST:
        sent = value.get("time_ms")
        now = int(time.time() * 1000)
        if type(sent) is not int or abs(now - sent) > REQUEST_MAX_AGE_MS:
            raise ValueError("the request is stale (time_ms more than 10 minutes off)")
    return value
