"""``GET /ready``: whether this node should get traffic (the readiness probe).

``/health`` answers whether the process is alive; a node can be alive and still not
fit to serve: its store failed, or it refuses local writes (starting, or its branch id
or key is disputed). The reasons come from ``Node.ready_reasons``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vesper.api.context import ApiContext
from vesper.api.jsonio import json_response, query_params


def routes(ctx: ApiContext) -> list[BaseRoute]:
    async def ready(request: Request) -> Response:
        query_params(request)
        reasons = ctx.node.ready_reasons()
        return json_response({"ready": not reasons, "reasons": reasons}, 503 if reasons else 200)

    return [Route("/ready", ready, methods=["GET"])]
