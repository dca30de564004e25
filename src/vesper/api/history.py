"""History endpoints: changesets since a revision, and resolved conflicts.

(One object's history lives with the other ``/api/objects/{id}`` routes.)
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vesper.api.context import ApiContext
from vesper.api.jsonio import int_param, json_response, query_params
from vesper.api.streaming import ThreadedBatches, array_response


def routes(ctx: ApiContext) -> list[BaseRoute]:
    async def changesets(request: Request) -> Response:
        params = query_params(request, ("since", "limit"))
        limit = int_param(params, "limit")
        # Validates ``since`` and history being on before anything streams.
        items = ctx.store.changesets(params.get("since", ""), limit)
        batches = ThreadedBatches(items, orjson.dumps)
        try:
            first = await batches.next()
        except BaseException:
            batches.close()
            raise
        return array_response(b'{"changesets":[', first, batches, b"]}")

    async def conflicts(request: Request) -> Response:
        params = query_params(request, ("id",))
        found = await ctx.in_thread(ctx.store.conflicts, params.get("id"))
        return json_response({"conflicts": found})

    return [
        Route("/api/changesets", changesets, methods=["GET"]),
        Route("/api/conflicts", conflicts, methods=["GET"]),
    ]
