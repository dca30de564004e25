"""``/api/objects``: create, list, read, replace, patch and delete objects."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

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

LIST_PARAMS = ("where", "limit", "after")


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
        result = await ctx.write(ctx.store.create, body)
        ctx.metrics.committed("create")
        return json_response({"revision": result.revision, "ids": result.ids}, 201)

    async def list_objects(request: Request) -> Response:
        params = query_params(request, LIST_PARAMS)
        where = json_object_param(params, "where")
        limit = int_param(params, "limit")
        after = params.get("after")
        # The revision is read in the listing's own snapshot: it names its contents.
        revision, rows = await ctx.read(ctx.store.query_snapshot, where, limit, after)
        batches = ThreadedBatches(rows)
        try:
            first = await batches.next()
        except BaseException:
            batches.close()
            raise
        tail = b'],"revision":' + orjson.dumps(revision) + b"}"
        return array_response(b'{"results":[', first, batches, tail)

    async def get_object(request: Request) -> Response:
        query_params(request)
        return await _get(request.path_params["id"])

    async def _get(obj_id: str) -> Response:
        text = await ctx.read(ctx.store.get_json, obj_id)
        if text is None:
            raise HttpError(404, f"object {obj_id!r} does not exist")
        return raw_json_response(text)

    async def replace_object(request: Request) -> Response:
        query_params(request)
        doc = await read_json(request)
        result = await ctx.write(ctx.store.replace, doc, request.path_params["id"])
        ctx.metrics.committed("replace")
        return json_response({"revision": result.revision})

    async def patch_object(request: Request) -> Response:
        query_params(request)
        patch = await read_json(request, "merge patch")
        result = await ctx.write(ctx.store.update, request.path_params["id"], patch)
        ctx.metrics.committed("update")
        return json_response({"revision": result.revision})

    async def delete_object(request: Request) -> Response:
        query_params(request)
        result = await ctx.write(ctx.store.delete, request.path_params["id"])
        ctx.metrics.committed("delete")
        return json_response({"revision": result.revision})

    async def object_history(request: Request) -> Response:
        obj_id = request.path_params["id"]
        if not request.scope.get("raw_path", b"/history").endswith(b"/history"):
            # The path ended in "%2Fhistory": the id itself ends with "/history".
            query_params(request)
            return await _get(obj_id + "/history")
        query_params(request)
        store = ctx.store
        history = await ctx.in_thread(store.object_history, obj_id)
        if not history and await ctx.read(store.get_json, obj_id) is None:
            raise HttpError(404, f"object {obj_id!r} does not exist and has no history")
        return json_response({"history": history})

    # Ids may contain "/" (sent as %2F): ``path`` lets the route see it, and the
    # history route goes first so ".../history" is not read as part of an id.
    return [
        Route("/api/objects", list_objects, methods=["GET"], name="list_objects"),
        Route("/api/objects", create_objects, methods=["POST"], name="create_objects"),
        Route("/api/objects/{id:path}/history", object_history, methods=["GET"]),
        Route("/api/objects/{id:path}", get_object, methods=["GET"]),
        Route("/api/objects/{id:path}", replace_object, methods=["PUT"]),
        Route("/api/objects/{id:path}", patch_object, methods=["PATCH"]),
        Route("/api/objects/{id:path}", delete_object, methods=["DELETE"]),
    ]
