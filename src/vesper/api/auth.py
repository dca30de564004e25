"""Bearer tokens (RFC 6750): who may read, who may write, and what is always open.

``api_token`` reads and writes, ``api_read_token`` reads only (GET and HEAD). Each may
hold several tokens while one is rotated. ``/health`` and ``/ready`` are always open,
``/metrics``
too when ``api_metrics_public`` says so; every other path, unknown ones included,
needs a token once tokens are set. Without ``api_token`` nothing is checked at all.

The check runs in the request guard before anything reads the body, so a client
without a valid token never makes the node read (or wait for) its body.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
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


def _digest(token: bytes) -> bytes:
    # Tokens are compared as SHA-256 digests: equal lengths, so compare_digest takes
    # the same time whatever the length of the token a client sends.
    return hashlib.sha256(token).digest()


class Authenticator:
    """Decides, from the request head alone, whether a request may go on."""

    def __init__(
        self,
        write_tokens: Sequence[str],
        read_tokens: Sequence[str] = (),
        metrics_public: bool = False,
        metrics: ApiMetrics | None = None,
    ) -> None:
        if not write_tokens:
            raise ValueError("an Authenticator needs at least one read-write token")
        self._write = tuple(_digest(t.encode("ascii")) for t in write_tokens)
        self._read = tuple(_digest(t.encode("ascii")) for t in read_tokens)
        self._open = ALWAYS_OPEN | ({"/metrics"} if metrics_public else set())
        self._metrics = metrics
        self._logged: dict[str, float] = {}

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
            return MISSING
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return MISSING  # another scheme (Basic, ...) carries no bearer token
        token = token.strip(b" \t")
        if not token or b" " in token or b"\t" in token:
            return MALFORMED
        digest = _digest(token)
        # Every configured token is compared, with no early exit: the time taken says
        # nothing about which one matched, or how close a guess came.
        writer = False
        for known in self._write:
            writer |= hmac.compare_digest(known, digest)
        reader = False
        for known in self._read:
            reader |= hmac.compare_digest(known, digest)
        if writer:
            return None
        if reader:
            return None if scope["method"] in READ_METHODS else READ_ONLY
        return INVALID

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
) -> Authenticator | None:
    """The check for these settings; None when no token is set (the API is open)."""
    if not api_token:
        return None
    return Authenticator(api_token, api_read_token or (), metrics_public, metrics)
