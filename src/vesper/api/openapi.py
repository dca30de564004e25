"""The OpenAPI 3.1 description of the HTTP API, and a readable page of it at ``/docs``.

Written by hand because the handlers read raw bodies (no pydantic models on hot
paths); tests/api/test_openapi.py checks that it lists exactly the routes the app has.
"""

from __future__ import annotations

import html
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from vesper import __version__
from vesper.api.jsonio import json_response


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "invalid JSON, a wrong type, an invalid document or an unknown query parameter",
        404: "no such object",
        409: "the object exists already (create), or history is off (save_history = False)",
        412: "If-Match, If-None-Match: * or an op's if_version does not hold: the object"
        " changed since it was read (read it again)",
        413: "the body is larger than api_max_body_bytes",
        422: "the Idempotency-Key was used for another request",
        503: "the store is closed or failed (retry later)",
    }
    return {str(s): _json(_ref("Error"), reasons[s]) for s in statuses}


def _list_of(key: str, item: dict[str, Any], description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {key: {"type": "array", "items": item}}}
    return _json(schema, description)


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


_IF_MATCH = _header(
    "If-Match", "the ETag a read gave: write only if the object is still at that version"
)
_IDEMPOTENCY_KEY = _header(
    "Idempotency-Key",
    "1-255 printable ASCII characters: a retry with the same key and request gets the first"
    " answer (Idempotent-Replayed: true) instead of committing again; kept a day",
)

_CONFLICTS = {
    "name": "conflicts",
    "in": "query",
    "required": False,
    "description": "true: {object, conflicts} with the losing values of each conflict",
    "schema": {"type": "string", "enum": ["true", "false"]},
}

_IF_VERSION = {
    "type": "string",
    "description": "the version (ETag without quotes) the object must be at",
}

_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the object's id; write '/' in an id as %2F",
}
_REVISION = {"type": "string", "description": "version vector, e.g. '0A.3,0B.12'"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what was wrong"}},
    },
    "Object": {
        "type": "object",
        "description": "any JSON object; 'id' is a string, generated on create when absent",
        "properties": {"id": {"type": "string"}},
        "additionalProperties": True,
    },
    "MergePatch": {
        "type": "object",
        "description": "JSON Merge Patch (RFC 7396): null removes a property",
        "additionalProperties": True,
    },
    "Revision": {"type": "object", "required": ["revision"], "properties": {"revision": _REVISION}},
    "Commit": {
        "type": "object",
        "required": ["revision", "ids"],
        "properties": {
            "revision": _REVISION,
            "ids": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ObjectList": {
        "type": "object",
        "required": ["revision"],
        "properties": {
            "results": {
                "type": "array",
                "items": {"anyOf": [_ref("Object"), _ref("ObjectWithConflicts")]},
                "description": "objects; with conflicts=true, each with its conflicts",
            },
            "revision": _REVISION,
            "next": {
                "type": ["string", "null"],
                "description": "with sort, fields or explain: pass as after for the next page",
            },
            "count": {"type": "integer"},
            "explain": {"type": "object"},
        },
    },
    "ObjectWithConflicts": {
        "type": "object",
        "required": ["object", "conflicts"],
        "properties": {
            "object": _ref("Object"),
            "conflicts": {"type": "array", "items": _ref("Conflict")},
        },
    },
    "Operation": {
        "oneOf": [
            {
                "type": "object",
                "required": ["op", "object"],
                "properties": {"op": {"const": "create"}, "object": _ref("Object")},
            },
            {
                "type": "object",
                "required": ["op", "object"],
                "properties": {
                    "op": {"const": "replace"},
                    "object": _ref("Object"),
                    "if_version": {
                        "type": ["string", "null"],
                        "description": "the version (ETag without quotes) the object must be"
                        " at; null: it must not exist",
                    },
                },
            },
            {
                "type": "object",
                "required": ["op", "id", "patch"],
                "properties": {
                    "op": {"const": "update"},
                    "id": {"type": "string"},
                    "patch": _ref("MergePatch"),
                    "if_version": _IF_VERSION,
                },
            },
            {
                "type": "object",
                "required": ["op", "id"],
                "properties": {
                    "op": {"const": "delete"},
                    "id": {"type": "string"},
                    "if_version": _IF_VERSION,
                },
            },
        ]
    },
    "Transaction": {
        "type": "object",
        "required": ["ops"],
        "properties": {"ops": {"type": "array", "minItems": 1, "items": _ref("Operation")}},
        "additionalProperties": False,
    },
    "Changeset": {
        "type": "object",
        "required": ["id", "origin", "revision", "base_revision", "changes"],
        "properties": {
            "id": {"type": "string", "description": "<branch_id>.<counter>"},
            "origin": {"type": "string"},
            "revision": _REVISION,
            "base_revision": _REVISION,
            "time": {"type": "string", "format": "date-time"},
            "changes": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Change": {
        "type": "object",
        "required": ["seq", "id", "origin", "revision", "objects", "objects_total"],
        "properties": {
            "seq": {
                "type": "integer",
                "description": "this node's position of the changeset: resume with since=seq",
            },
            "id": {"type": "string", "description": "the changeset, <branch_id>.<counter>"},
            "origin": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "revision": _REVISION,
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "deleted"],
                    "properties": {
                        "id": {"type": "string"},
                        "deleted": {"type": "boolean"},
                        "object": {
                            "oneOf": [_ref("Object"), {"type": "null"}],
                            "description": "with include_objects: the object as it is now",
                        },
                    },
                },
            },
            "objects_total": {"type": "integer"},
            "objects_next": {
                "type": "integer",
                "description": "more objects: GET /api/changes/{seq}?objects_from=this",
            },
        },
    },
    "HistoryEntry": {
        "type": "object",
        "properties": {
            "changeset": {"type": "string"},
            "origin": {"type": "string"},
            "revision": _REVISION,
            "time": {"type": "string", "format": "date-time"},
            "op": {"type": "string"},
            "object": {
                "oneOf": [_ref("Object"), {"type": "null"}],
                "description": "the object after this change; null once deleted",
            },
        },
    },
    "Conflict": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "property": {"type": ["string", "null"], "description": "null: existence"},
            "winner": {"type": "object"},
            "losers": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Status": {
        "type": "object",
        "required": ["branch_id", "revision", "digest", "objects", "replication"],
        "properties": {
            "branch_id": {"type": "string"},
            "public_key": {
                "type": ["string", "null"],
                "description": "this node's Ed25519 key ('ed25519:...'); null without replication",
            },
            "revision": _REVISION,
            "digest": {
                "type": "string",
                "description": "LtHash of the live objects (GET /api/digest; docs/http-api.md)",
            },
            "objects": {"type": "integer"},
            "pending": {"type": "integer"},
            "outbox": {"type": "integer"},
            "replication": {
                "type": "object",
                "properties": {
                    "enabled": {"type": "boolean"},
                    "connected": {"type": ["string", "null"]},
                    "channel": {"type": ["string", "null"]},
                    "broker": {"type": ["string", "null"]},
                    "messages_sent": {"type": "integer"},
                    "messages_received": {"type": "integer"},
                    "send_errors": {"type": "integer"},
                    "receive_errors": {"type": "integer"},
                    "outbox": {"type": "integer"},
                    "pending": {"type": "integer"},
                    "last_message_received": {"type": ["string", "null"]},
                    "peers": {"type": "object"},
                    "forks": {"type": "integer"},
                    "quarantined": {
                        "type": "object",
                        "description": "messages refused since start, by reason",
                        "additionalProperties": {"type": "integer"},
                    },
                },
            },
        },
    },
    "Digest": {
        "type": "object",
        "required": ["digest", "revision", "buckets"],
        "properties": {
            "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "revision": _REVISION,
            "buckets": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "minItems": 256,
                "maxItems": 256,
                "description": "bucket b holds the objects whose sha256(id) starts with byte b",
            },
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "reasons"],
        "properties": {
            "ready": {"type": "boolean"},
            "reasons": {"type": "array", "items": {"type": "string"}},
        },
    },
    "QuarantineEntry": {
        "type": "object",
        "properties": {
            "seq": {"type": "integer"},
            "time": {"type": "string"},
            "reason": {"type": "string"},
            "detail": {"type": "string"},
            "headers": {"type": "object"},
            "body_excerpt": {"type": "string"},
        },
    },
}

_BODY_OBJECT = {"required": True, "content": {"application/json": {"schema": _ref("Object")}}}

PATHS: dict[str, Any] = {
    "/api/objects": {
        "get": {
            "summary": "All objects sorted by id (streamed)",
            "parameters": [
                _query(
                    "where",
                    "JSON object: keep objects whose properties equal these",
                    {"type": "string"},
                ),
                _query("limit", "at most this many objects", {"type": "integer", "minimum": 0}),
                _query("after", "only ids sorting after this one (paging)", {"type": "string"}),
                _CONFLICTS,
                _query(
                    "conflicted",
                    "true: only objects with a conflict",
                    {"type": "string", "enum": ["true", "false"]},
                ),
                _query(
                    "sort",
                    "property paths, - for descending: -price,name (pages of limit, 1000 by"
                    " default; continue with after=next)",
                    {"type": "string"},
                ),
                _query(
                    "fields",
                    "property paths to keep besides id: name,owner.name",
                    {"type": "string"},
                ),
                _query(
                    "count",
                    "true: only {count, revision}",
                    {"type": "string", "enum": ["true", "false"]},
                ),
                _query(
                    "explain",
                    "true: add which index served the query and how many objects it read",
                    {"type": "string", "enum": ["true", "false"]},
                ),
            ],
            "responses": {"200": _json(_ref("ObjectList"), "the objects"), **_errors(400)},
        },
        "post": {
            "summary": "Create one object or an array of objects in one revision",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                _ref("Object"),
                                {"type": "array", "minItems": 1, "items": _ref("Object")},
                            ]
                        }
                    }
                },
            },
            "parameters": [_IDEMPOTENCY_KEY],
            "responses": {
                "201": _json(_ref("Commit"), "created"),
                **_errors(400, 409, 413, 422),
            },
        },
    },
    "/api/objects/{id}": {
        "parameters": [_ID],
        "get": {
            "summary": "One object; its ETag names its version",
            "parameters": [
                _header("If-None-Match", "an ETag (or *): 304 when the object is at it"),
                _CONFLICTS,
            ],
            "responses": {
                "200": _json(
                    {"anyOf": [_ref("Object"), _ref("ObjectWithConflicts")]},
                    "the object; with conflicts=true, with its conflicts",
                ),
                "304": {"description": "the object is at the version If-None-Match names"},
                **_errors(400, 404),
            },
        },
        "put": {
            "summary": "Replace the whole object (creating it if absent)",
            "parameters": [_IF_MATCH, _header("If-None-Match", "*: create only, never replace")],
            "requestBody": _BODY_OBJECT,
            "responses": {
                "200": _json(_ref("Revision"), "replaced"),
                **_errors(400, 412, 413),
            },
        },
        "patch": {
            "summary": "Apply a JSON Merge Patch",
            "parameters": [_IF_MATCH],
            "requestBody": {
                "required": True,
                "content": {
                    "application/merge-patch+json": {"schema": _ref("MergePatch")},
                    "application/json": {"schema": _ref("MergePatch")},
                },
            },
            "responses": {
                "200": _json(_ref("Revision"), "updated"),
                **_errors(400, 404, 412, 413),
            },
        },
        "delete": {
            "summary": "Delete the object",
            "parameters": [_IF_MATCH],
            "responses": {"200": _json(_ref("Revision"), "deleted"), **_errors(400, 404, 412)},
        },
    },
    "/api/objects/{id}/history": {
        "parameters": [_ID],
        "get": {
            "summary": "Every revision of one object, oldest first",
            "parameters": [
                _query("limit", "at most this many entries", {"type": "integer", "minimum": 0}),
                _query(
                    "after",
                    "a changeset id of this history: the entries after it",
                    {"type": "string"},
                ),
            ],
            "responses": {
                "200": _list_of("history", _ref("HistoryEntry"), "the history"),
                **_errors(400, 404, 409),
            },
        },
    },
    "/api/transaction": {
        "post": {
            "summary": "Several operations, all or nothing, in one revision",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Transaction")}},
            },
            "parameters": [_IDEMPOTENCY_KEY],
            "responses": {
                "200": _json(_ref("Commit"), "committed"),
                **_errors(400, 404, 409, 412, 413, 422),
            },
        },
    },
    "/api/changesets": {
        "get": {
            "summary": "Changesets not contained in a revision, in causal order (streamed)",
            "parameters": [
                _query("since", "a revision; empty means all", {"type": "string"}),
                _query("limit", "at most this many changesets", {"type": "integer", "minimum": 0}),
            ],
            "responses": {
                "200": _list_of("changesets", _ref("Changeset"), "the changesets"),
                **_errors(400, 409),
            },
        },
    },
    "/api/changes": {
        "get": {
            "summary": "Every changeset stored, local or replicated, in apply order: a list, "
            "a long poll, newline-delimited JSON (continuous) or server-sent events (sse)",
            "parameters": [
                _query(
                    "since",
                    "a seq from an earlier entry, 0 (the default) for all, now, or a revision"
                    " (the changesets it does not contain); sse also reads Last-Event-ID",
                    {"type": "string"},
                ),
                _query(
                    "feed",
                    "normal (default), longpoll, continuous or sse",
                    {"type": "string", "enum": ["normal", "longpoll", "continuous", "sse"]},
                ),
                _query(
                    "timeout",
                    "milliseconds: how long a long poll waits (60000), how long a stream stays"
                    " open without changes (no limit)",
                    {"type": "integer", "minimum": 0},
                ),
                _query(
                    "heartbeat",
                    "milliseconds between keep-alive lines of a quiet stream (30000)",
                    {"type": "integer", "minimum": 100},
                ),
                _query(
                    "limit",
                    "at most this many entries (normal and longpoll: 1000, at most 10000)",
                    {"type": "integer", "minimum": 1},
                ),
                _query("ids", "a JSON array: only these objects", {"type": "string"}),
                _query(
                    "where",
                    "a JSON object: only objects whose current properties equal these",
                    {"type": "string"},
                ),
                _query(
                    "include_objects",
                    "true: each object as it is now",
                    {"type": "string", "enum": ["true", "false"]},
                ),
            ],
            "responses": {
                "200": {
                    "description": "normal and longpoll: the entries; continuous: one entry "
                    'per line, empty lines as heart-beats, {"last_seq"} last; sse: events '
                    "with id = seq, an end event with last_seq",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "results": {"type": "array", "items": _ref("Change")},
                                    "last_seq": {"type": "integer"},
                                    "more": {"type": "boolean"},
                                },
                            }
                        },
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors(400, 409),
            },
        },
    },
    "/api/changes/{seq}": {
        "parameters": [
            {
                "name": "seq",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        ],
        "get": {
            "summary": "One entry of the changes feed, its objects from objects_from on",
            "parameters": [
                _query(
                    "objects_from",
                    "the index of the first object listed",
                    {"type": "integer", "minimum": 0},
                ),
                _query("ids", "a JSON array: only these objects", {"type": "string"}),
                _query("where", "a JSON object, as for /api/changes", {"type": "string"}),
                _query(
                    "include_objects",
                    "true: each object as it is now",
                    {"type": "string", "enum": ["true", "false"]},
                ),
            ],
            "responses": {
                "200": _json(_ref("Change"), "the entry"),
                **_errors(400, 404, 409),
            },
        },
    },
    "/api/indexes": {
        "get": {
            "summary": "The property indexes and their state (building or ready)",
            "responses": {
                "200": _list_of(
                    "indexes",
                    {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string"},
                            "state": {"enum": ["building", "ready"]},
                            "built_upto": {"type": "string"},
                        },
                    },
                    "the indexes",
                )
            },
        },
        "post": {
            "summary": "Add an index on a property path; it is built in the background",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["path"],
                            "properties": {"path": {"type": "string"}},
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "202": _json(
                    {"type": "object"}, "added; building (or ready when the store is empty)"
                ),
                "200": _json({"type": "object"}, "there already"),
                **_errors(400, 413),
            },
        },
    },
    "/api/conflicts": {
        "get": {
            "summary": "Concurrent writes that were resolved, with winner and losers",
            "parameters": [_query("id", "only this object's conflicts", {"type": "string"})],
            "responses": {
                "200": _list_of("conflicts", _ref("Conflict"), "the conflicts"),
                **_errors(400),
            },
        },
    },
    "/api/status": {
        "get": {
            "summary": "Revision, digest, counts and replication state",
            "responses": {"200": _json(_ref("Status"), "the status")},
        },
    },
    "/api/quarantine": {
        "get": {
            "summary": "Messages replication refused (forged, unsigned, forks), newest first",
            "parameters": [
                _query("limit", "at most this many (default 100)", {"type": "integer"}),
                _query("reason", "only this reason, e.g. bad_signature", {"type": "string"}),
            ],
            "responses": {
                "200": _list_of("quarantine", _ref("QuarantineEntry"), "the entries"),
                **_errors(400),
            },
        },
    },
    "/api/digest": {
        "get": {
            "summary": "The digest of the live objects and of each of its 256 buckets, with "
            "the revision they describe (one snapshot)",
            "responses": {"200": _json(_ref("Digest"), "the digest"), **_errors(400)},
        },
    },
    "/ready": {
        "get": {
            "summary": "Readiness: 503 with the reasons when the store is unusable, the node "
            "is stuck or replication is down too long",
            "responses": {
                "200": _json(_ref("Readiness"), "ready"),
                "503": _json(_ref("Readiness"), "not ready, and why"),
                **_errors(400),
            },
        },
    },
    "/health": {
        "get": {
            "summary": "Liveness",
            "responses": {"200": _json({"type": "object"}, "running"), **_errors(503)},
        },
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
            },
        },
    },
}


#: Paths that never need a token (docs/http-api.md, Authentication).
OPEN_PATHS = ("/health", "/ready")
_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "api_token reads and writes, api_read_token only reads (GET, HEAD). "
        "A node without api_token needs none.",
    }
}


def _with_token_answers(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with the 401 (and, for writes, 403) every secured operation can answer."""
    unauthorized = _json(_ref("Error"), "no valid bearer token (WWW-Authenticate says why)")
    forbidden = _json(_ref("Error"), "a read-only token cannot write")
    out: dict[str, Any] = {}
    for path, item in paths.items():
        if path in OPEN_PATHS:
            out[path] = {
                m: {**op, "security": []} if m != "parameters" else op for m, op in item.items()
            }
            continue
        out[path] = {}
        for method, op in item.items():
            if method == "parameters":
                out[path][method] = op
                continue
            extra = {"401": unauthorized}
            if method not in ("get", "head"):
                extra["403"] = forbidden
            out[path][method] = {**op, "responses": {**op["responses"], **extra}}
    return out


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Vesper",
            "version": __version__,
            "description": "A JSON document datastore with full revision history. "
            'Every error answer is {"error": "..."}.',
        },
        "paths": _with_token_answers(PATHS),
        "components": {"schemas": SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
        # A bearer token, or none on a node without api_token.
        "security": [{"bearer": []}, {}],
    }


# -- /docs: the document as a page ---------------------------------------------------
#
# Rendered here from openapi_document(), as plain HTML with the dashboard's stylesheet:
# it needs no script and nothing from another host, so it works offline and on nodes
# that reach no CDN. (Swagger UI would need a vendored copy: the PyPI packages that ship
# one either bundle Swagger UI 4, which cannot read OpenAPI 3.1, or bring template and
# YAML libraries and a top-level ``test`` package along.)

_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
_DOCS_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _anchor(method: str, path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "root"
    return f"op-{method}-{slug}"


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    if "const" in schema:
        return _e(f"= {schema['const']!r}")
    if "enum" in schema:
        return _e("one of " + ", ".join(repr(v) for v in schema["enum"]))
    kind = schema.get("type")
    if isinstance(kind, list):
        text = " | ".join(_e(k) for k in kind)
    elif kind == "array":
        items = schema.get("items")
        text = f"array of {_type_of(items)}" if isinstance(items, dict) else "array"
    elif kind is not None:
        text = _e(kind)
    elif "oneOf" in schema or "anyOf" in schema:
        text = "one of"
    else:
        text = "any"
    extra = schema.get("format")
    return f"{text} ({_e(extra)})" if extra else text


def _schema(schema: dict[str, Any], depth: int = 0) -> str:
    """A schema as nested lists: its type, then its properties or alternatives."""
    parts = [f'<span class="type">{_type_of(schema)}</span>']
    if schema.get("description"):
        parts.append(f" — {_e(schema['description'])}")
    if depth > 6:
        return "".join(parts)
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        items = "".join(f"<li>{_schema(alt, depth + 1)}</li>" for alt in alternatives)
        parts.append(f'<ul class="schema">{items}</ul>')
    properties = schema.get("properties") or {}
    if properties:
        required = set(schema.get("required", ()))
        rows = []
        for name, prop in properties.items():
            mark = ' <span class="required">required</span>' if name in required else ""
            rows.append(
                f'<li><span class="prop">{_e(name)}</span>{mark}: {_schema(prop, depth + 1)}</li>'
            )
        parts.append(f'<ul class="schema">{"".join(rows)}</ul>')
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        parts.append(f'<ul class="schema"><li>other keys: {_schema(extra, depth + 1)}</li></ul>')
    elif extra is True and schema.get("type") == "object":
        parts.append('<ul class="schema"><li class="muted">other keys allowed</li></ul>')
    return "".join(parts)


def _content(content: dict[str, Any]) -> str:
    rows = []
    for media_type, body in content.items():
        schema = body.get("schema")
        shape = _schema(schema) if isinstance(schema, dict) else ""
        rows.append(f"<li><code>{_e(media_type)}</code> {shape}</li>")
    return f'<ul class="schema">{"".join(rows)}</ul>' if rows else ""


def _operation(path: str, method: str, op: dict[str, Any], shared: list[Any]) -> str:
    parts = [
        f'<section class="operation" id="{_anchor(method, path)}" data-method="{method}" '
        f'data-path="{_e(path)}">',
        f'<h3><span class="method {method}">{method}</span> <code>{_e(path)}</code> '
        f'<span class="summary">{_e(op.get("summary", ""))}</span></h3>',
    ]
    if op.get("security") == []:
        parts.append('<p class="muted">No token needed.</p>')
    parameters = [*shared, *op.get("parameters", [])]
    if parameters:
        rows = "".join(
            f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
            f"<td>{'yes' if p.get('required') else ''}</td>"
            f"<td>{_type_of(p.get('schema', {}))}</td><td>{_e(p.get('description', ''))}</td></tr>"
            for p in parameters
        )
        parts.append(
            "<h4>Parameters</h4><table><thead><tr><th>name</th><th>in</th><th>required</th>"
            f"<th>type</th><th>description</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    body = op.get("requestBody")
    if body:
        parts.append(f"<h4>Request body</h4>{_content(body.get('content', {}))}")
    rows = "".join(
        f"<tr><td><code>{_e(status)}</code></td><td>{_e(answer.get('description', ''))}"
        f"{_content(answer.get('content', {}))}</td></tr>"
        for status, answer in sorted(op.get("responses", {}).items())
    )
    parts.append(
        "<h4>Responses</h4><table><thead><tr><th>status</th><th>meaning</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )
    return "".join(parts)


def docs_page(document: dict[str, Any]) -> str:
    """The API reference page: every operation of ``document``, then its schemas."""
    info = document["info"]
    toc: list[str] = []
    sections: list[str] = []
    for path, item in document["paths"].items():
        shared = item.get("parameters", [])
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            toc.append(
                f'<li><a href="#{_anchor(method, path)}"><span class="method {method}">'
                f"{method}</span> <code>{_e(path)}</code></a> {_e(op.get('summary', ''))}</li>"
            )
            sections.append(_operation(path, method, op, shared))
    schemas = "".join(
        f'<section class="operation" id="schema-{_e(name)}"><h3><code>{_e(name)}</code></h3>'
        f"{_schema(schema)}</section>"
        for name, schema in document["components"]["schemas"].items()
    )
    security = "".join(
        f"<li><code>{_e(name)}</code>: {_e(scheme.get('description', ''))}</li>"
        for name, scheme in document["components"].get("securitySchemes", {}).items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(info["title"])} HTTP API</title>
<link rel="stylesheet" href="/ui/vesper.css"></head>
<body class="docs"><main>
<h1>{_e(info["title"])} HTTP API <span class="count">{_e(info["version"])}</span></h1>
<p>{_e(info.get("description", ""))} The machine-readable description is
<a href="/openapi.json">/openapi.json</a> (OpenAPI {_e(document["openapi"])}).
The <a href="/ui">dashboard</a> shows this node's state.</p>
<h2>Authentication</h2><ul>{security}</ul>
<h2>Operations</h2><ul class="toc">{"".join(toc)}</ul>
{"".join(sections)}
<h2>Schemas</h2>
{schemas}
</main></body></html>
"""


def routes() -> list[BaseRoute]:
    document = openapi_document()
    page = docs_page(document)
    headers = {
        "content-security-policy": _DOCS_CSP,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }

    async def openapi(request: Request) -> Response:
        return json_response(document)

    async def docs(request: Request) -> Response:
        return HTMLResponse(page, headers=headers)

    return [
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        Route("/docs", docs, methods=["GET"], include_in_schema=False),
    ]
