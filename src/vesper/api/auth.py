"""Bearer tokens (RFC 6750): who may read, who may write, and what is always open.

``api_token`` reads and writes, ``api_read_token`` reads only (GET and HEAD). Each may
hold several tokens while one is rotated. ``/health`` and ``/ready`` are always open,
``/metrics``
too when ``api_metrics_public`` says so; every other path, unknown ones included,
needs a token once tokens are set. Without ``api_token`` nothing is checked at all.

A browser cannot send a bearer token with a page load, so the dashboard (``/ui``,
vesper.api.dashboard) logs in once: it posts a token and gets a session cookie holding
a random session id, never the token. That cookie is accepted for GET and HEAD only: a
cookie is sent by the browser on its own, so letting it authorize a write would let
any page the operator visits write through it (CSRF). The dashboard's static files and
its login are open, since they hold no data.

The check runs in the request guard before anything reads the body, so a client
without a valid token never makes the node read (or wait for) its body.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from starlette.types import Scope, Send

from vesper.api.errors import JSON_TYPE
from vesper.api.metrics import ApiMetrics

log = logging.getLogger("vesper.api.auth")

REALM = 'Bearer realm="vesper"'
READ_METHODS = frozenset({"GET", "HEAD"})
#: Paths open whatever the tokens: a load balancer or orchestrator probes them, and
#: such probes rarely hold credentials. ``/ready`` tells only whether and why not.
ALWAYS_OPEN = frozenset({"/health", "/ready"})
#: The dashboard's pages, static files and login: open, since a browser must load them
#: before it can log in, and they hold no data (the data comes from /api/status ...).
DASHBOARD_OPEN = frozenset(
    {"/", "/ui", "/ui/", "/ui/session", "/ui/dashboard.js", "/ui/vesper.css"}
)
#: Session cookies are named this plus the node's branch id: cookies are not kept
#: apart by port, so nodes on one host would otherwise overwrite each other's.
SESSION_COOKIE_PREFIX = "vesper_session_"
#: A session ends this long after login, however busy ...
SESSION_LIFETIME_S = 12 * 3600.0
#: ... or this long after its last use (an open dashboard uses it every few seconds).
SESSION_IDLE_S = 3600.0
#: Sessions kept at most; past it the least recently used one is ended.
MAX_SESSIONS = 1000
#: Refusals are logged at most this often per client address.
LOG_INTERVAL_S = 60.0
#: Addresses remembered for that; past it, old entries are dropped first and, if all
#: are recent (a flood from many addresses), further refusals are only counted.
LOG_MEMORY = 4096


@dataclass(frozen=True)
class Refusal:
    """One kind of refused request and its complete answer."""

    reason: str
    """The ``reason`` label of ``vesper_http_auth_failures_total``."""
    status: int
    message: str
    challenge: str

    def headers(self, close: bool) -> list[tuple[bytes, bytes]]:
        body_length = str(len(self.body)).encode()
        headers = [
            (b"content-type", JSON_TYPE.encode()),
            (b"content-length", body_length),
            (b"www-authenticate", self.challenge.encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        return headers

    @property
    def body(self) -> bytes:
        return orjson.dumps({"error": self.message})


MISSING = Refusal(
    "missing", 401, "this node needs a bearer token: send 'Authorization: Bearer <token>'", REALM
)
INVALID = Refusal(
    "invalid_token", 401, "the bearer token is not valid", REALM + ', error="invalid_token"'
)
MALFORMED = Refusal(
    "malformed",
    400,
    "malformed Authorization header: send exactly one 'Authorization: Bearer <token>'",
    REALM + ', error="invalid_request"',
)
READ_ONLY = Refusal(
    "read_only",
    403,
    "this token may only read (GET and HEAD); writing needs a read-write token",
    REALM + ', error="insufficient_scope"',
)
# Sessions count under the token reasons: an unknown or expired session is a credential
# that is not valid, a session used to write is a read-only credential used to write.
BAD_SESSION = Refusal(
    "invalid_token",
    401,
    "the dashboard session is unknown or has expired: log in again at /ui",
    REALM + ', error="invalid_token"',
)
SESSION_WRITE = Refusal(
    "read_only",
    403,
    "a dashboard session only reads (GET and HEAD); writes need a bearer token",
    REALM + ', error="insufficient_scope"',
)


def _digest(token: bytes) -> bytes:
    # Tokens are compared as SHA-256 digests: equal lengths, so compare_digest takes
    # the same time whatever the length of the token a client sends.
    return hashlib.sha256(token).digest()


class Sessions:
    """Dashboard sessions: random ids mapped to their expiry, in memory only.

    The map holds SHA-256 digests of the ids, so a lookup's timing (a dict probe)
    says nothing useful about any real id. Sessions end on logout, at
    ``lifetime_s`` after login, ``idle_s`` after their last use, when ``max_sessions``
    newer ones push them out, and with the process: a restart (which is also how
    tokens change) logs every browser out.
    """

    def __init__(
        self,
        lifetime_s: float = SESSION_LIFETIME_S,
        idle_s: float = SESSION_IDLE_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime_s = lifetime_s
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        # digest -> (ends at, last used); ordered by last use, least recent first.
        self._live: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def create(self) -> str:
        """A new session's id: 256 random bits, URL-safe."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._expire(now)
            while len(self._live) >= self.max_sessions:
                self._live.popitem(last=False)
            self._live[_digest(session_id.encode())] = (now + self.lifetime_s, now)
        return session_id

    def valid(self, session_id: bytes) -> bool:
        """Whether ``session_id`` names a live session; a valid one counts as used."""
        return self.remaining(session_id) is not None

    def remaining(self, session_id: bytes) -> float | None:
        """Seconds the live session ``session_id`` has left at most (and it counts as
        used); None if there is no such session or it has ended."""
        key = _digest(session_id)
        now = self._clock()
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                return None
            ends, used = entry
            if now >= ends or now - used >= self.idle_s:
                del self._live[key]
                return None
            self._live[key] = (ends, now)
            self._live.move_to_end(key)
            return ends - now

    def end(self, session_id: bytes) -> None:
        with self._lock:
            self._live.pop(_digest(session_id), None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._live)

    def _expire(self, now: float) -> None:
        dead = [
            k for k, (ends, used) in self._live.items() if now >= ends or now - used >= self.idle_s
        ]
        for key in dead:
            del self._live[key]


def session_cookies(scope: Scope) -> list[bytes]:
    """The values of every dashboard session cookie the request carries.

    Any node's cookie name counts: a browser sends the cookies of every node on the
    same host, and only this node's session ids are live here.
    """
    prefix = SESSION_COOKIE_PREFIX.encode()
    found = []
    for name, value in scope["headers"]:
        if name != b"cookie":
            continue
        for part in value.split(b";"):
            key, sep, cookie = part.strip().partition(b"=")
            if sep and key.startswith(prefix) and cookie:
                found.append(cookie.strip(b'"'))
    return found


class Authenticator:
    """Decides, from the request head alone, whether a request may go on."""

    def __init__(
        self,
        write_tokens: Sequence[str],
        read_tokens: Sequence[str] = (),
        metrics_public: bool = False,
        metrics: ApiMetrics | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        if not write_tokens:
            raise ValueError("an Authenticator needs at least one read-write token")
        self._write = tuple(_digest(t.encode("ascii")) for t in write_tokens)
        self._read = tuple(_digest(t.encode("ascii")) for t in read_tokens)
        self._open = ALWAYS_OPEN | DASHBOARD_OPEN | ({"/metrics"} if metrics_public else set())
        self._metrics = metrics
        self._logged: dict[str, float] = {}
        self.sessions = sessions if sessions is not None else Sessions()

    def refusal(self, scope: Scope) -> Refusal | None:
        """None if the request may proceed, else why it may not."""
        if scope["path"] in self._open:
            return None
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if header is not None:
                    return MALFORMED  # two headers: which one would count?
                header = value
        if header is None:
            return self._session_refusal(scope)
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return MISSING  # another scheme (Basic, ...) carries no bearer token
        token = token.strip(b" \t")
        if not token or b" " in token or b"\t" in token:
            return MALFORMED
        kind = self.token_kind(token)
        if kind == "write":
            return None
        if kind == "read":
            return None if scope["method"] in READ_METHODS else READ_ONLY
        return INVALID

    def token_kind(self, token: bytes) -> str | None:
        """``"write"``, ``"read"`` or None (not a configured token)."""
        digest = _digest(token)
        # Every configured token is compared, with no early exit: the time taken says
        # nothing about which one matched, or how close a guess came.
        writer = False
        for known in self._write:
            writer |= hmac.compare_digest(known, digest)
        reader = False
        for known in self._read:
            reader |= hmac.compare_digest(known, digest)
        return "write" if writer else "read" if reader else None

    def _session_refusal(self, scope: Scope) -> Refusal | None:
        cookies = session_cookies(scope)
        if not cookies:
            return MISSING
        # The method first: a write with a cookie is refused alike whether or not the
        # session is live, so a forged request learns nothing about which ids are.
        if scope["method"] not in READ_METHODS:
            return SESSION_WRITE
        if any(self.sessions.valid(c) for c in cookies):
            return None
        return BAD_SESSION

    async def refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        """Answer ``refusal``, count it, and log it unless this address was just logged.

        A request with a body is answered with ``Connection: close``: its body is
        never read, so the connection cannot carry another request.
        """
        if self._metrics is not None:
            self._metrics.auth_failed(refusal.reason)
        self._log(scope, refusal)
        close = any(
            (name == b"content-length" and value.strip() not in (b"", b"0"))
            or name == b"transfer-encoding"
            for name, value in scope["headers"]
        )
        await send(
            {
                "type": "http.response.start",
                "status": refusal.status,
                "headers": refusal.headers(close),
            }
        )
        await send({"type": "http.response.body", "body": refusal.body})

    def _log(self, scope: Scope, refusal: Refusal) -> None:
        client = scope.get("client")
        address = client[0] if client else "unknown"
        now = time.monotonic()
        last = self._logged.get(address)
        if last is not None and now - last < LOG_INTERVAL_S:
            return
        if last is None and len(self._logged) >= LOG_MEMORY:
            self._logged = {a: t for a, t in self._logged.items() if now - t < LOG_INTERVAL_S}
            if len(self._logged) >= LOG_MEMORY:
                return
        self._logged[address] = now
        log.info(
            "refused %s %r from %s: %s (%s); further refusals from this address are "
            "not logged for %d s",
            scope["method"],
            scope["path"],
            address,
            refusal.reason,
            refusal.status,
            LOG_INTERVAL_S,
        )


def authenticator_for(
    api_token: Sequence[str] | None,
    api_read_token: Sequence[str] | None,
    metrics_public: bool,
    metrics: ApiMetrics | None = None,
    sessions: Sessions | None = None,
) -> Authenticator | None:
    """The check for these settings; None when no token is set (the API is open)."""
    if not api_token:
        return None
    return Authenticator(api_token, api_read_token or (), metrics_public, metrics, sessions)
