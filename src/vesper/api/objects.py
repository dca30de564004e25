"""``/api/objects``: create, list, read, replace, patch and delete objects.

An id is one path segment: an id containing ``/`` is sent as ``%2F``. The server
decodes the path before routing, so routes are chosen from the raw path (``raw_path``
in the ASGI scope), where ``/api/objects/p1/history`` (p1's history) and
``/api/objects/p1%2Fhistory`` (the object ``p1/history``) differ; a raw path with more
segments than a route has matches no route, so no id can shadow another route, nor a
route an id.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from vesper.api import conditions
from vesper.api.context import ApiContext
from vesper.api.errors import HttpError
from vesper.api.jsonio import (
    int_param,
    json_object_param,
    json_response,
    json_type,
    query_params,
    raw_json_response,
    read_json,
)
from vesper.api.streaming import ThreadedBatches, array_response
from vesper.query.order import parse_fields, parse_sort
from vesper.store.query import Query, parse_where
from vesper.store.store import CommitResult

LIST_PARAMS = (
    "where",
    "limit",
    "after",
    "conflicts",
    "conflicted",
    "sort",
    "fields",
    "count",
    "explain",
)
DEFAULT_SORTED_LIMIT = 1_000
MAX_SORTED_LIMIT = 10_000
"""A sorted, projected or explained listing is built in memory: it comes in pages."""
ALL = 2**62


def routes(ctx: ApiContext) -> list[BaseRoute]:
    async def create_objects(request: Request) -> Response:
        query_params(request)
        body = await read_json(request)
        if type(body) is list:
            if not body:
                raise HttpError(400, "request body is an empty array: nothing to create")
        elif type(body) is not dict:
            raise HttpError(
                400, f"request body must be an object or an array of objects, got {json_type(body)}"
            )
        key = conditions.idempotency(request, await request.body())
        result = await ctx.write(ctx.store.create, body, key)
        if not result.replayed:
            ctx.metrics.committed("create")
        return _committed({"revision": result.revision, "ids": result.ids}, result, 201)

    async def list_objects(request: Request) -> Response:
        params = query_params(request, LIST_PARAMS)
        where = json_object_param(params, "where")
        limit = int_param(params, "limit")
        after = params.get("after")
        flags = _flag(params, "conflicted"), _flag(params, "conflicts")
        shaped = any(name in params for name in ("sort", "fields", "count", "explain"))
        if shaped or await ctx.in_thread(ctx.store.plans_index, where):
            query = _query(params, where, limit, after, flags, shaped)
            return json_response(await ctx.in_thread(ctx.store.run_query, query))
        # The revision is read in the listing's own snapshot: it names its contents.
        revision, rows = await ctx.read(ctx.store.query_snapshot, where, limit, after, *flags)
        batches = ThreadedBatches(rows)
        try:
            first = await batches.next()
        except BaseException:
            batches.close()
            raise
        tail = b'],"revision":' + orjson.dumps(revision) + b"}"
        return array_response(b'{"results":[', first, batches, tail)

    async def get_object(request: Request) -> Response:
        obj_id = request.path_params["id"]
        with_conflicts = _flag(query_params(request, ("conflicts",)), "conflicts")
        read = ctx.store.get_with_conflicts if with_conflicts else ctx.store.version
        found = await ctx.read(read, obj_id)
        if found is None:
            raise HttpError(404, f"object {obj_id!r} does not exist")
        text, version = found
        headers = {"ETag": conditions.etag(version)}
        if conditions.not_modified(request, version):
            return Response(status_code=304, headers=headers)
        response = raw_json_response(text)
        response.headers.update(headers)
        return response

    async def replace_object(request: Request) -> Response:
        query_params(request)
        doc = await read_json(request)
        version, absent = conditions.if_match(request), conditions.if_none_match_any(request)
        if version is not None and absent:
            raise HttpError(400, "If-Match and If-None-Match: * contradict each other")
        replace = functools.partial(
            ctx.store.replace, doc, request.path_params["id"], if_version=version, if_absent=absent
        )
        result = await ctx.write(replace)
        ctx.metrics.committed("replace")
        return _committed({"revision": result.revision}, result)

    async def patch_object(request: Request) -> Response:
        query_params(request)
        patch = await read_json(request, "merge patch")
        update = functools.partial(
            ctx.store.update,
            request.path_params["id"],
            patch,
            if_version=conditions.if_match(request),
        )
        result = await ctx.write(update)
        ctx.metrics.committed("update")
        return _committed({"revision": result.revision}, result)

    async def delete_object(request: Request) -> Response:
        query_params(request)
        delete = functools.partial(
            ctx.store.delete, request.path_params["id"], if_version=conditions.if_match(request)
        )
        result = await ctx.write(delete)
        ctx.metrics.committed("delete")
        return json_response({"revision": result.revision})

    async def object_history(request: Request) -> Response:
        obj_id = request.path_params["id"]
        params = query_params(request, ("limit", "after"))
        limit = int_param(params, "limit")
        store = ctx.store
        history = await ctx.in_thread(store.object_history, obj_id)
        if not history and await ctx.read(store.get_json, obj_id) is None:
            raise HttpError(404, f"object {obj_id!r} does not exist and has no history")
        if "after" in params:
            ids = [entry["changeset"] for entry in history]
            if params["after"] not in ids:
                raise HttpError(400, f"after: {params['after']!r} is not in this history")
            history = history[ids.index(params["after"]) + 1 :]
        answer: dict[str, Any] = {"history": history[:limit] if limit is not None else history}
        if limit is not None and len(history) > limit:
            answer["next"] = history[limit - 1]["changeset"] if limit else None
        return json_response(answer)

    # ``{id:path}`` lets an id decoded from %2F keep its "/"; ObjectRoute checks on
    # the raw path that the id was one segment.
    return [
        Route("/api/objects", list_objects, methods=["GET"], name="list_objects"),
        Route("/api/objects", create_objects, methods=["POST"], name="create_objects"),
        ObjectRoute("/api/objects/{id:path}/history", object_history, methods=["GET"]),
        ObjectRoute("/api/objects/{id:path}", get_object, methods=["GET"]),
        ObjectRoute("/api/objects/{id:path}", replace_object, methods=["PUT"]),
        ObjectRoute("/api/objects/{id:path}", patch_object, methods=["PATCH"]),
        ObjectRoute("/api/objects/{id:path}", delete_object, methods=["DELETE"]),
    ]


def _query(
    params: dict[str, str],
    where: dict[str, Any] | None,
    limit: int | None,
    after: str | None,
    flags: tuple[bool, bool],
    shaped: bool,
) -> Query:
    if shaped:
        limit = DEFAULT_SORTED_LIMIT if limit is None else limit
        if limit > MAX_SORTED_LIMIT:
            raise HttpError(
                400, f"limit is at most {MAX_SORTED_LIMIT} with sort, fields, count or explain"
            )
    return Query(
        where=parse_where(where),
        sort=parse_sort(params["sort"]) if "sort" in params else (),
        fields=parse_fields(params["fields"]) if "fields" in params else None,
        limit=ALL if limit is None else limit,
        after=after,
        count=_flag(params, "count"),
        explain=_flag(params, "explain"),
        conflicted=flags[0],
        with_conflicts=flags[1],
    )


def _flag(params: dict[str, str], name: str) -> bool:
    value = params.get(name, "false")
    if value not in ("true", "false"):
        raise HttpError(400, f"query parameter {name!r} must be true or false, got {value!r}")
    return value == "true"


def _committed(answer: dict[str, Any], result: CommitResult, status: int = 200) -> Response:
    """The answer to a write, with the ETag of the object it wrote when it wrote one,
    and ``Idempotent-Replayed`` when it repeats an earlier answer."""
    response = json_response(answer, status)
    versions = result.versions
    if len(versions) == 1:
        (version,) = versions.values()
        if version is not None:
            response.headers["ETag"] = conditions.etag(version)
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


class ObjectRoute(Route):
    """A route of one object: ``/api/objects/{id}`` or ``/api/objects/{id}/history``,
    where ``{id}`` is exactly one segment of the raw path."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        # "/api/objects/{id:path}/history" -> after the id: [b"history"]
        self._after_id = [part.encode() for part in path.split("}", 1)[1].split("/")[1:]]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE and not self._one_segment_id(scope):
            return Match.NONE, {}
        return match, child

    def _one_segment_id(self, scope: Scope) -> bool:
        raw = scope.get("raw_path")
        if raw is None:  # a server that does not say: the decoded path is all there is
            raw = scope["path"].encode()
        # uvicorn leaves the query string out of raw_path; some clients put it in.
        segments = raw.partition(b"?")[0].split(b"/")
        # b"", b"api", b"objects", id, *after
        after = [unquote_to_bytes(part) for part in segments[4:]]
        return len(segments) == 4 + len(self._after_id) and after == self._after_id
