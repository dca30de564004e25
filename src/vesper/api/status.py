"""Node state: ``/api/status``, ``/health`` and ``/metrics``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vesper.api.context import ApiContext
from vesper.api.jsonio import int_param, json_response, query_params
from vesper.api.metrics import METRICS_CONTENT_TYPE


def routes(ctx: ApiContext) -> list[BaseRoute]:
    async def status(request: Request) -> Response:
        query_params(request)
        # The digest is kept up to date by the store (no scan), but the outbox is
        # counted in the database (O(outbox)): off the loop all the same.
        return json_response(await ctx.in_thread(ctx.node.status))

    async def quarantine(request: Request) -> Response:
        params = query_params(request, ("limit", "reason"))
        limit = int_param(params, "limit")
        entries = await ctx.in_thread(
            ctx.node.quarantine,
            min(limit if limit is not None else 100, 10_000),
            params.get("reason"),
        )
        return json_response({"quarantine": entries})

    async def health(request: Request) -> Response:
        query_params(request)
        ctx.store  # noqa: B018 - raises StoreClosed (503) unless the node is running
        return json_response({"status": "ok", "branch_id": ctx.node.branch_id})

    async def metrics(request: Request) -> Response:
        query_params(request)
        # Store figures read the database (outbox size): off the loop like the status.
        body = await ctx.in_thread(ctx.metrics.render)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    return [
        Route("/api/status", status, methods=["GET"]),
        Route("/api/quarantine", quarantine, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
