"""``/api/indexes``: the property indexes of this node, and adding one (built in the
background; docs/queries.md)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vesper.api.context import ApiContext
from vesper.api.errors import HttpError
from vesper.api.jsonio import json_response, query_params, read_json_object


def routes(ctx: ApiContext) -> list[BaseRoute]:
    async def list_indexes(request: Request) -> Response:
        query_params(request)
        return json_response({"indexes": await ctx.in_thread(ctx.store.indexes.describe)})

    async def add_index(request: Request) -> Response:
        query_params(request)
        body = await read_json_object(request)
        if set(body) != {"path"}:
            raise HttpError(400, 'send {"path": "<property path>"}, e.g. {"path": "price"}')
        added = await ctx.in_thread(ctx.store.indexes.add, body["path"])
        state = "ready" if ctx.store.indexes.ready(body["path"]) else "building"
        return json_response({"path": body["path"], "state": state}, 202 if added else 200)

    return [
        Route("/api/indexes", list_indexes, methods=["GET"]),
        Route("/api/indexes", add_index, methods=["POST"]),
    ]
