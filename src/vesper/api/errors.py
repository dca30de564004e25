"""Translation of errors into ``{"error": "..."}`` answers.

Handlers raise VesperError (from the core) or HttpError (request problems found by the
API itself); nothing else is expected. Anything else is a bug: it answers 500, is
logged with its traceback, and the node keeps serving. A client that goes away is not
an error of the node: it is logged at debug level and counted with status 499.
"""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from vesper.errors import (
    ConfigError,
    DocumentExists,
    DocumentNotFound,
    HistoryDisabled,
    IdempotencyKeyReused,
    InvalidChangeset,
    InvalidDocument,
    InvalidOperation,
    InvalidRevision,
    PreconditionFailed,
    StorageError,
    StoreClosed,
    VesperError,
    WritesRefused,
)

log = logging.getLogger("vesper.api")

JSON_TYPE = "application/json"

#: Status of each core error; a subclass not listed takes its nearest listed base.
STATUS_OF: dict[type[VesperError], int] = {
    InvalidDocument: 400,
    InvalidOperation: 400,
    InvalidRevision: 400,
    InvalidChangeset: 400,
    DocumentNotFound: 404,
    DocumentExists: 409,
    PreconditionFailed: 412,
    IdempotencyKeyReused: 422,
    # The request is fine; this node's configuration (save_history) rules it out.
    HistoryDisabled: 409,
    StoreClosed: 503,
    WritesRefused: 503,
    StorageError: 503,
    ConfigError: 500,
}

#: Seconds a client should wait before retrying a 503 caused by a retryable error.
RETRY_AFTER_S = 1

#: Status recorded in the metrics (never sent) for a request whose client went away
#: before the answer was complete, as nginx does.
CLIENT_GONE = 499
#: Status recorded for a request the server gave up on because its body came too slowly.
TIMED_OUT = 408
#: Scope key under which the server, or a response that failed midway, records the
#: status the metrics should count instead of the one the answer started with.
OUTCOME = "vesper.outcome"
#: Scope key of a callable the server provides to abort the connection at once (the
#: answer's end is never sent), for a streamed answer that fails midway.
ABORT = "vesper.abort"


class HttpError(Exception):
    """A request problem the API detects itself (bad JSON, unknown parameter, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyTooLarge(HttpError):
    """The request body exceeds ``api_max_body_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"request body is larger than {limit} bytes (api_max_body_bytes = {limit})"
        )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status, headers=headers, media_type=JSON_TYPE)


def status_of(exc: VesperError) -> int:
    for cls in type(exc).__mro__:
        status = STATUS_OF.get(cls)  # type: ignore[call-overload]
        if status is not None:
            return status
    return 500


async def vesper_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VesperError)
    status = status_of(exc)
    if status >= 500:
        log.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.retryable else None
    return error_response(status, str(exc), headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.message)


async def starlette_http_handler(request: Request, exc: Exception) -> Response:
    """Routing errors: unknown path (404) and wrong method (405)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        # Starlette's Allow names the methods of the first route of the path only; a
        # path served by several routes (one per method) has all of theirs.
        allowed = allowed_methods(getattr(request.app, "routes", ()), request.scope)
        if allowed:
            return error_response(405, message, {**(exc.headers or {}), "Allow": allowed})
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, exc.headers)


def allowed_methods(routes: object, scope: Scope) -> str:
    """The methods of every route that matches the request's path, for ``Allow``."""
    methods: set[str] = set()
    for route in routes:  # type: ignore[attr-defined]
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


async def client_gone_handler(request: Request, exc: Exception) -> Response:
    """The client went away before its request was read: nothing to answer, no error."""
    log.debug("client went away during %s %r", request.method, request.url.path)
    request.scope.setdefault(OUTCOME, CLIENT_GONE)
    # Sent to a closed connection, so the server drops it; only the metrics see it.
    return Response(status_code=CLIENT_GONE)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); see the node's log")


EXCEPTION_HANDLERS = {
    VesperError: vesper_error_handler,
    HttpError: http_error_handler,
    HTTPException: starlette_http_handler,
    ClientDisconnect: client_gone_handler,
    Exception: unexpected_error_handler,
}
