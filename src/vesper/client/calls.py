"""The requests the clients make and how their answers read, written once for both the
synchronous and the asynchronous client (which only send them).

Errors come back as the exceptions the embedded store raises for the same problem
(DocumentNotFound, PreconditionFailed, ...), with the node's message; a node that
cannot be reached after the retries raises NodeUnreachable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import orjson

from vesper.errors import (
    AccessDenied,
    DocumentExists,
    DocumentNotFound,
    HistoryDisabled,
    IdempotencyKeyReused,
    InvalidOperation,
    PreconditionFailed,
    VesperError,
    WritesRefused,
)

T = TypeVar("T")

RETRY_ALWAYS = "always"
"""Safe to send again even if the first attempt may have arrived: reads, PUT, and POSTs
that carry an idempotency key."""
RETRY_UNSENT = "unsent"
"""Sent again only when the first attempt cannot have arrived (no connection)."""


class NodeUnreachable(VesperError):
    """The node did not answer, after the client's retries."""

    retryable = True


@dataclass(frozen=True, slots=True)
class Commit:
    """What a write answers: the node's revision after it, the ids written, and the
    ETag (version) of the object when the write was of one object."""

    revision: str
    ids: list[str]
    etag: str | None = None
    replayed: bool = False
    """A retry that found its first attempt committed: nothing was written again."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Answer], T]
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry: str = RETRY_ALWAYS
    absent: Any = None
    """What a 404 answers instead of raising DocumentNotFound (``...``: raise)."""


def _object_path(obj_id: str) -> str:
    return "/api/objects/" + quote(obj_id, safe="")


def _json_body(value: Any) -> bytes:
    return orjson.dumps(value)


def _commit(answer: Answer) -> Commit:
    body = answer.json()
    etag = answer.headers.get("etag")
    return Commit(
        body["revision"],
        body.get("ids", []),
        etag.strip('"') if etag else None,
        answer.headers.get("idempotent-replayed") == "true",
    )


def _if_match(version: str | None) -> dict[str, str]:
    return {} if version is None else {"If-Match": f'"{version}"'}


def create(doc: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Call[Commit]:
    # A key of its own per call: a retry after a lost answer cannot create twice.
    key = uuid.uuid4().hex
    body = _json_body(list(doc) if isinstance(doc, list | tuple) else doc)
    return Call("POST", "/api/objects", _commit, body=body, headers={"Idempotency-Key": key})


def get(obj_id: str) -> Call[dict[str, Any] | None]:
    return Call("GET", _object_path(obj_id), lambda a: a.json())


def get_versioned(obj_id: str) -> Call[tuple[dict[str, Any], str] | None]:
    return Call("GET", _object_path(obj_id), lambda a: (a.json(), a.headers["etag"].strip('"')))


def get_with_conflicts(obj_id: str) -> Call[dict[str, Any] | None]:
    return Call("GET", _object_path(obj_id), lambda a: a.json(), {"conflicts": "true"})


def replace(
    doc: Mapping[str, Any], obj_id: str, if_version: str | None, if_absent: bool
) -> Call[Commit]:
    headers = _if_match(if_version)
    if if_absent:
        headers["If-None-Match"] = "*"
    return Call("PUT", _object_path(obj_id), _commit, body=_json_body(doc), headers=headers)


def update(obj_id: str, patch: Mapping[str, Any], if_version: str | None) -> Call[Commit]:
    return Call(
        "PATCH",
        _object_path(obj_id),
        _commit,
        body=_json_body(patch),
        headers=_if_match(if_version),
        absent=...,
    )


def delete(obj_id: str, if_version: str | None) -> Call[Commit]:
    # Not sent again once it may have arrived: a second DELETE would answer 404.
    return Call(
        "DELETE",
        _object_path(obj_id),
        _commit,
        headers=_if_match(if_version),
        retry=RETRY_UNSENT,
        absent=...,
    )


def transaction(ops: Sequence[Mapping[str, Any]]) -> Call[Commit]:
    key = uuid.uuid4().hex
    return Call(
        "POST",
        "/api/transaction",
        _commit,
        body=_json_body({"ops": list(ops)}),
        headers={"Idempotency-Key": key},
        absent=...,
    )


def query_page(
    where: Mapping[str, Any] | None, after: str | None, limit: int, conflicted: bool
) -> Call[list[dict[str, Any]]]:
    params = {"limit": str(limit)}
    if where is not None:
        params["where"] = orjson.dumps(where).decode()
    if after:
        params["after"] = after
    if conflicted:
        params["conflicted"] = "true"
    return Call("GET", "/api/objects", lambda a: a.json()["results"], params)


def changesets(since: str, limit: int | None) -> Call[list[dict[str, Any]]]:
    params = {"since": since, **({"limit": str(limit)} if limit is not None else {})}
    return Call("GET", "/api/changesets", lambda a: a.json()["changesets"], params)


def conflicts(obj_id: str | None) -> Call[list[dict[str, Any]]]:
    params = {} if obj_id is None else {"id": obj_id}
    return Call("GET", "/api/conflicts", lambda a: a.json()["conflicts"], params)


def status() -> Call[dict[str, Any]]:
    return Call("GET", "/api/status", lambda a: a.json())


def digest() -> Call[dict[str, Any]]:
    return Call("GET", "/api/digest", lambda a: a.json())


class Feed:
    """A client's place in a node's continuous changes feed, across reconnections."""

    def __init__(self, since: str | int, filters: Mapping[str, Any]) -> None:
        self.position = str(since)
        self._filters = {k: v for k, v in filters.items() if v is not None}
        self.finished = False
        """The feed ended by its own ``timeout``: no reconnection."""

    def call(self) -> Call[None]:
        """The request that (re)opens the feed from the last entry seen."""
        params = {"feed": "continuous", "since": self.position}
        for name, value in self._filters.items():
            if name in ("ids", "where"):
                params[name] = orjson.dumps(value).decode()
            elif name == "include_objects":
                params[name] = "true" if value else "false"
            else:
                params[name] = str(value)
        return Call("GET", "/api/changes", lambda a: None, params)

    def line(self, text: str) -> dict[str, Any] | None:
        """The entry a line of the feed carries (None: a heart-beat or the end)."""
        if not text:
            return None
        entry = orjson.loads(text)
        if "seq" in entry:
            self.position = str(entry["seq"])
            return entry
        # {"last_seq"}: the feed ended, by its timeout or because the node stops.
        self.finished = "timeout" in self._filters
        return None


_ERRORS: dict[int, type[VesperError]] = {
    400: InvalidOperation,
    401: AccessDenied,
    403: AccessDenied,
    404: DocumentNotFound,
    409: DocumentExists,
    412: PreconditionFailed,
    413: InvalidOperation,
    422: IdempotencyKeyReused,
    503: WritesRefused,
}


def check(call: Call[T], answer: Answer) -> T:
    """The call's result from its answer, or the error the answer describes."""
    if answer.status < 300:
        return call.read(answer)
    if answer.status == 404 and call.absent is not ...:
        return call.absent  # type: ignore[no-any-return]
    try:
        message = str(answer.json()["error"])
    except Exception:
        message = answer.body[:200].decode(errors="replace")
    kind = _ERRORS.get(answer.status, VesperError)
    if answer.status == 409 and "save_history" in message:
        kind = HistoryDisabled
    raise kind(f"{call.method} {call.path}: HTTP {answer.status}: {message}")
