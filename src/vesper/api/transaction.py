"""``POST /api/transaction``: several operations, all or nothing, one revision."""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vesper.api import conditions
from vesper.api.context import ApiContext
from vesper.api.errors import HttpError
from vesper.api.jsonio import json_response, query_params, read_json_object


def routes(ctx: ApiContext) -> list[BaseRoute]:
    async def transaction(request: Request) -> Response:
        query_params(request)
        body = await read_json_object(request)
        extra = sorted(set(body) - {"ops"})
        if extra:
            raise HttpError(
                400, f'unexpected field {extra[0]!r} in a transaction: send {{"ops": [...]}}'
            )
        if "ops" not in body:
            raise HttpError(400, 'a transaction needs "ops": a list of operations')
        key = conditions.idempotency(request, await request.body())
        result = await ctx.write(
            functools.partial(ctx.store.transaction, body["ops"], idempotency=key)
        )
        if not result.replayed:
            ctx.metrics.committed("transaction")
        response = json_response({"revision": result.revision, "ids": result.ids})
        if result.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    return [Route("/api/transaction", transaction, methods=["POST"])]
