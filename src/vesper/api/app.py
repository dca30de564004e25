"""The ASGI application of one node: Starlette routes behind the request guard."""

from __future__ import annotations

from starlette.applications import Starlette

from vesper.api import (
    changes,
    dashboard,
    digest,
    history,
    indexes,
    objects,
    openapi,
    ready,
    status,
    transaction,
)
from vesper.api.auth import authenticator_for
from vesper.api.change_signal import ChangeSignal
from vesper.api.context import ApiContext
from vesper.api.errors import EXCEPTION_HANDLERS
from vesper.api.metrics import ApiMetrics
from vesper.api.middleware import RequestGuard
from vesper.node import Node


def create_app(
    node: Node,
    *,
    max_body_bytes: int | None = None,
    inline_writes: bool = True,
    inline_reads: bool = True,
) -> RequestGuard:
    """The HTTP API (docs/http-api.md) over ``node``, which the caller starts and closes.

    ``max_body_bytes`` defaults to the node's ``api_max_body_bytes``; ``inline_*``
    choose where single-object store calls run (see ApiContext). The result is an
    ASGI app; ``.app`` is the Starlette app inside and ``.metrics`` its metrics.
    """
    metrics = ApiMetrics(node)
    ctx = ApiContext(node, metrics, inline_writes=inline_writes, inline_reads=inline_reads)
    signal = ChangeSignal()
    routes = [
        *changes.routes(ctx, signal, node.settings.api_feed_buffer_bytes),
        *objects.routes(ctx),
        *transaction.routes(ctx),
        *history.routes(ctx),
        *indexes.routes(ctx),
        *status.routes(ctx),
        *digest.routes(ctx),
        *ready.routes(ctx),
        *openapi.routes(),
        *dashboard.routes(ctx),
    ]
    # Plain Starlette, not FastAPI: FastAPI's per-request dependency and validation
    # machinery cost ~3.5x Starlette's time per request here (measured when it was chosen);
    # the OpenAPI document is written out in vesper.api.openapi instead.
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
    app.state.context = ctx
    limit = max_body_bytes if max_body_bytes is not None else node.settings.api_max_body_bytes
    settings = node.settings
    auth = authenticator_for(
        settings.api_token, settings.api_read_token, settings.api_metrics_public, metrics
    )
    app.state.auth = auth  # the dashboard's login checks tokens and starts sessions
    guard = RequestGuard(app, limit, metrics, auth)
    guard.change_signal = signal  # the server ends the feeds when it stops
    return guard
