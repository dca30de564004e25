"""The operator dashboard: ``/`` (links), ``/ui`` (the page), its static files, and the
login that gives a browser a session cookie (docs/dashboard.md).

The page is static: hand-written HTML, JavaScript and CSS in vesper/api/ui/, read once
when the app is made. Everything it shows it fetches from the API (``/api/status``,
``/api/conflicts``, ``/api/quarantine``, ``/ready``) with the browser's session cookie,
so it is exactly as live and as authorized as those endpoints.

The login (``POST /ui/session``) takes a token, checks it as the request guard would,
and answers with a cookie holding a new random session id (vesper.api.auth.Sessions);
the token itself never leaves the request. Failed logins are rate limited per client
address, so the login is not a faster way to guess a token than the bearer check.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vesper import __version__
from vesper.api.auth import DASHBOARD_OPEN, SESSION_COOKIE_PREFIX, Authenticator, session_cookies
from vesper.api.context import ApiContext
from vesper.api.errors import HttpError, error_response
from vesper.api.jsonio import json_response, query_params
from vesper.document import strict_json

log = logging.getLogger("vesper.api.dashboard")

#: The static files under /ui/ and their types; each is open (auth.DASHBOARD_OPEN).
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "vesper.css": "text/css; charset=utf-8",
}
PAGE = "dashboard.html"
#: The page loads only its own files and talks only to its own node: a policy that
#: says so makes injected markup inert and any request elsewhere impossible.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
#: A login body is one token: anything longer is not one, and an open endpoint should
#: not read megabytes for anyone.
MAX_LOGIN_BYTES = 4096
#: Failed logins an address may make at once, and how fast that allowance refills.
LOGIN_BURST = 5
LOGIN_REFILL_S = 12.0
#: Addresses whose failures are remembered; past it, new ones share one more allowance.
LOGIN_MEMORY = 4096

LANDING = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Vesper</title><link rel="stylesheet" href="/ui/vesper.css"></head>
<body class="landing"><main>
<h1>Vesper {__version__}</h1>
<ul>
<li><a href="/ui">Dashboard</a>: this node, its peers, catch-up, conflicts, quarantine</li>
<li><a href="/docs">HTTP API</a> (<a href="/openapi.json">OpenAPI document</a>)</li>
<li><a href="/health">/health</a>, <a href="/ready">/ready</a>,
<a href="/metrics">/metrics</a></li>
</ul>
<p>On a node with <code>api_token</code>, log in on the dashboard first: its session
then opens the other pages in this browser too.</p>
</main></body></html>
"""


class LoginLimiter:
    """A bucket of ``burst`` failed logins per client address, refilled one per
    ``refill_s``; an address with an empty bucket is refused before its token is
    even looked at."""

    def __init__(
        self,
        burst: int = LOGIN_BURST,
        refill_s: float = LOGIN_REFILL_S,
        memory: int = LOGIN_MEMORY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.memory = memory
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 if it may now."""
        with self._lock:
            left = self._left(self._key(address), self._clock())
        return 0.0 if left >= 1 else (1 - left) * self.refill_s

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            key = self._key(address)
            self._buckets[key] = (max(0.0, self._left(key, now) - 1), now)
            self._buckets.move_to_end(key)

    def _left(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        left, at = entry
        return min(float(self.burst), left + (now - at) / self.refill_s)

    def _key(self, address: str) -> str:
        if address in self._buckets or len(self._buckets) < self.memory:
            return address
        now = self._clock()
        # Full buckets remember nothing: forget those first.
        for key in [k for k in self._buckets if self._left(k, now) >= self.burst]:
            del self._buckets[key]
        # A flood from more addresses than fit shares one allowance: it cannot grow
        # the map, nor push out the buckets of the addresses already refused.
        return address if len(self._buckets) < self.memory else "*"


def _asset(name: str) -> bytes:
    return importlib.resources.files("vesper.api.ui").joinpath(name).read_bytes()


def _static(body: bytes, media_type: str, request: Request) -> Response:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    # Revalidated on every load, so a node upgraded in place serves its new page at once.
    headers = {**SECURITY_HEADERS, "cache-control": "no-cache", "etag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _address(request: Request) -> str:
    client = request.client
    return client.host if client is not None else "unknown"


async def _limited_body(request: Request, limit: int) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HttpError(413, f"a login body is at most {limit} bytes")
    return body


def _token_of(body: bytes, content_type: str) -> str:
    """The token of a login body: JSON ``{"token": ...}`` or a form's ``token=...``."""
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise HttpError(400, "the login form is not valid UTF-8") from None
        token = dict(fields).get("token")
    else:
        value = strict_json.loads(body, "login body")
        token = value.get("token") if isinstance(value, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise HttpError(400, 'a login body is {"token": "<api_token or api_read_token>"}')
    return token.strip()


def routes(ctx: ApiContext) -> list[BaseRoute]:
    page = _asset(PAGE)
    assets = {name: _asset(name) for name in ASSETS}
    # Every static file must be reachable before login, or the login form cannot load.
    assert {f"/ui/{name}" for name in ASSETS} <= DASHBOARD_OPEN
    cookie_name = SESSION_COOKIE_PREFIX + ctx.node.branch_id
    limiter = LoginLimiter()

    def authenticator(request: Request) -> Authenticator | None:
        # Set by create_app; None on a node without api_token, which needs no login.
        return getattr(request.app.state, "auth", None)

    async def landing(request: Request) -> Response:
        query_params(request)
        return _static(LANDING.encode(), "text/html; charset=utf-8", request)

    async def dashboard(request: Request) -> Response:
        query_params(request)
        return _static(page, "text/html; charset=utf-8", request)

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        body = assets.get(name)
        if body is None:
            raise HttpError(404, f"no such dashboard file: {name!r}")
        return _static(body, ASSETS[name], request)

    async def session(request: Request) -> Response:
        query_params(request)
        auth = authenticator(request)
        remaining = None
        if auth is not None:
            for cookie in session_cookies(request.scope):
                remaining = auth.sessions.remaining(cookie)
                if remaining is not None:
                    break
        answer = {
            "tokens_required": auth is not None,
            "session": remaining is not None,
            "expires_in": None if remaining is None else round(remaining),
        }
        return json_response(answer)

    async def login(request: Request) -> Response:
        query_params(request)
        auth = authenticator(request)
        if auth is None:
            raise HttpError(409, "this node has no api_token: the dashboard needs no login")
        address = _address(request)
        wait = limiter.retry_after(address)
        if wait > 0:
            return error_response(
                429,
                f"too many failed logins from {address}: try again in {wait:.0f} s",
                {"Retry-After": str(max(1, round(wait)))},
            )
        token = _token_of(
            await _limited_body(request, MAX_LOGIN_BYTES), request.headers.get("content-type", "")
        )
        kind = auth.token_kind(token.encode()) if token.isascii() else None
        if kind is None:
            limiter.failed(address)
            ctx.metrics.auth_failed("invalid_token")
            log.info("dashboard login from %s refused: not a valid token", address)
            return error_response(401, "the token is not valid")
        session_id = auth.sessions.create()
        lifetime = round(auth.sessions.lifetime_s)
        response = json_response({"session": True, "expires_in": lifetime})
        response.headers["cache-control"] = "no-store"
        response.set_cookie(
            cookie_name,
            session_id,
            max_age=lifetime,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        log.info("dashboard session started for %s (%s token)", address, kind)
        return response

    async def logout(request: Request) -> Response:
        query_params(request)
        auth = authenticator(request)
        if auth is not None:
            for cookie in session_cookies(request.scope):
                auth.sessions.end(cookie)
        response = json_response({"session": False})
        response.headers["cache-control"] = "no-store"
        response.delete_cookie(
            cookie_name,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def settings(request: Request) -> Response:
        # Behind the token check (not in DASHBOARD_OPEN): what the page needs to judge
        # the status it reads, such as when a silent peer counts as gone.
        query_params(request)
        s = ctx.node.settings
        return json_response(
            {
                "version": __version__,
                "branch_id": ctx.node.branch_id,
                "replication_peer_gone_after": s.replication_peer_gone_after,
                "replication_peer_expiry": s.replication_peer_expiry,
            }
        )

    # Not in /openapi.json: pages and browser plumbing, not the API.
    return [
        Route("/", landing, methods=["GET"], include_in_schema=False),
        Route("/ui", dashboard, methods=["GET"], include_in_schema=False),
        Route("/ui/session", session, methods=["GET"], include_in_schema=False),
        Route("/ui/session", login, methods=["POST"], include_in_schema=False),
        Route("/ui/session", logout, methods=["DELETE"], include_in_schema=False),
        Route("/ui/settings", settings, methods=["GET"], include_in_schema=False),
        Route("/ui/{asset}", asset, methods=["GET"], include_in_schema=False),
    ]
