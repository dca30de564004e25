"""The outermost ASGI layer: body size limit, request metrics, last-resort errors.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, which costs a task
and a memory stream per request: this one only wraps ``send`` (and ``receive`` when
the body length is not known in advance).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import orjson
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vesper.api.errors import JSON_TYPE, BodyTooLarge
from vesper.api.metrics import ApiMetrics

UNMATCHED = "unmatched"


class RequestGuard:
    """Rejects bodies over ``max_body_bytes`` with 413 and times every request.

    A declared Content-Length over the limit is answered before any of the body is
    read; a chunked body is counted as it arrives and stops the request once over.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: ApiMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self._endpoints: dict[int, str] = {}
        # Route templates by handler, for Starlette versions whose router does not put
        # the matched route in the scope (it has always put the handler there).
        self._by_handler = {
            id(route.endpoint): _template(route.path)
            for route in getattr(app, "routes", ())
            if isinstance(route, Route)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await _send_error(send_and_watch, BodyTooLarge(self.max_body_bytes))
                return
            if declared is None and _has_body(scope):
                receive = self._counting(receive)
            await self.app(scope, receive, send_and_watch)
        except BodyTooLarge as exc:
            if status == 0:
                await _send_error(send_and_watch, exc)
        except Exception:
            # Starlette's ServerErrorMiddleware has logged it through our handler and
            # answered 500 unless the answer had started (an error mid-stream). It
            # re-raises for the server to log; swallowing it here avoids a second
            # traceback, and uvicorn then closes just this connection if unfinished.
            if status == 0:
                await _send_error(send_and_watch, None)
        finally:
            self.metrics.observe(
                scope["method"], self._endpoint(scope), status or 500, perf_counter() - start
            )

    def _counting(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return counting_receive

    def _endpoint(self, scope: Scope) -> str:
        route: BaseRoute | None = scope.get("route")
        if route is None:
            return self._by_handler.get(id(scope.get("endpoint")), UNMATCHED)
        name = self._endpoints.get(id(route))
        if name is None:
            name = _template(getattr(route, "path", UNMATCHED))
            self._endpoints[id(route)] = name
        return name


def _template(path: str) -> str:
    # "/api/objects/{id:path}" reads better as "/api/objects/{id}".
    return path.replace(":path}", "}")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser rejects these before we see them
    return None


def _has_body(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope["headers"])


async def _send_error(send: Send, exc: BodyTooLarge | None) -> None:
    status, message = (exc.status, exc.message) if exc else (500, "internal error")
    body = orjson.dumps({"error": message})
    headers: list[Any] = [
        (b"content-type", JSON_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
