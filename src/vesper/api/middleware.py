"""The outermost ASGI layer: tokens, path encoding, body size limit, request metrics,
last-resort errors.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, which costs a task
and a memory stream per request: this one only wraps ``send`` (and ``receive`` when
the body length is not known in advance).
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vesper.api.auth import Authenticator
from vesper.api.errors import CLIENT_GONE, JSON_TYPE, OUTCOME, BodyTooLarge, HttpError
from vesper.api.metrics import ApiMetrics

log = logging.getLogger("vesper.api")

UNMATCHED = "unmatched"
#: The endpoint label of requests refused by the token check, before any routing.
REFUSED = "refused"
BAD_PATH = HttpError(400, "the path is not valid UTF-8 once percent-decoded")


class RequestGuard:
    """Checks the token, rejects bodies over ``max_body_bytes`` with 413 and times
    every request.

    The token is checked first, on the request head alone (see vesper.api.auth). A
    declared Content-Length over the limit is answered before any of the body is read;
    a chunked body is counted as it arrives and stops the request once over. A path
    whose percent-decoding is not UTF-8 is a 400: decoded leniently, ``%FF`` and
    ``%FE`` would both name the object U+FFFD.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        metrics: ApiMetrics,
        auth: Authenticator | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.auth = auth
        self._endpoints: dict[int, str] = {}
        # Route templates by handler, for Starlette versions whose router does not put
        # the matched route in the scope (it has always put the handler there).
        self._by_handler = {
            id(route.endpoint): _template(route.path)
            for route in getattr(app, "routes", ())
            if isinstance(route, Route)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                # No endpoint speaks WebSocket: refused here, before any token check
                # could be skipped by a route that did.
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 0
        endpoint = None

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            auth = self.auth
            if auth is not None:
                refusal = auth.refusal(scope)
                if refusal is not None:
                    endpoint = REFUSED
                    await auth.refuse(scope, send_and_watch, refusal)
                    return
            raw_path = scope.get("raw_path")
            if raw_path is not None and b"%" in raw_path and not _is_utf8(raw_path):
                await _send_error(send_and_watch, BAD_PATH)
                return
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
        except ClientDisconnect:
            # Normally answered by the handler in vesper.api.errors; this is for one
            # raised outside the routes. The client is gone: nothing to send.
            log.debug("client went away during %s %r", scope["method"], scope["path"])
            scope.setdefault(OUTCOME, CLIENT_GONE)
        except Exception:
            # Starlette's ServerErrorMiddleware has logged it through our handler and
            # answered 500 unless the answer had started (an error mid-stream). It
            # re-raises for the server to log; swallowing it here avoids a second
            # traceback, and uvicorn then closes just this connection if unfinished.
            if status == 0:
                await _send_error(send_and_watch, None)
        finally:
            # The server (client gone, body too slow) or a stream that failed midway
            # may have recorded an outcome other than the status the answer began with.
            self.metrics.observe(
                scope["method"],
                endpoint or self._endpoint(scope),
                scope.get(OUTCOME) or status or 500,
                perf_counter() - start,
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


def _is_utf8(raw_path: bytes) -> bool:
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _send_error(send: Send, exc: HttpError | None) -> None:
    status, message = (exc.status, exc.message) if exc else (500, "internal error")
    body = orjson.dumps({"error": message})
    headers: list[Any] = [
        (b"content-type", JSON_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
