"""``GET /api/digest``: the store's digest and its 256 bucket digests, of one revision.

Two nodes with the same objects answer the same digest; where they differ, the bucket
digests that differ say which objects to compare (``vesper verify`` does).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vesper.api.context import ApiContext
from vesper.api.jsonio import json_response, query_params


def routes(ctx: ApiContext) -> list[BaseRoute]:
    async def digest(request: Request) -> Response:
        query_params(request)
        # Kept up to date by every commit: a bounded read (256 cached hashes), not a
        # scan, so it may run on the loop like a single-object read.
        revision, value, buckets = await ctx.read(ctx.store.digest_buckets)
        return json_response({"digest": value, "revision": revision, "buckets": buckets})

    return [Route("/api/digest", digest, methods=["GET"])]
