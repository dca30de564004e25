"""The HTTP server of a node: uvicorn, with the limits a server facing a network needs.

uvicorn has a keep-alive timeout and a concurrency limit, but nothing bounds how long
a client may take to send a request: one byte every few seconds holds a connection
forever. ``NodeHttpProtocol`` (uvicorn's httptools protocol, extended) adds

- a header timeout: a request head not complete within ``api_header_timeout`` of the
  connection (or of the first byte of a later request) closes the connection, with a
  408 when no answer is in flight;
- a body timeout: a body not complete within ``api_body_timeout`` of its head gets a
  408 and the connection is closed; the handler waiting for the body sees the client
  gone, so nothing is committed;
- a connection limit: past ``api_max_connections`` open connections, new ones are
  closed as they arrive;
- a limit of ``MAX_HEAD_BYTES`` on a request head (431 past it);
- an abort hook for streamed answers that fail midway (vesper.api.streaming).

Idle keep-alive connections close after ``api_idle_timeout`` (uvicorn's own timer).
Clients that go away are logged at debug level and counted as 499, never as errors.
``create_server`` builds the whole server from the settings, TLS included.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

import httptools
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from vesper.api.errors import ABORT, CLIENT_GONE, OUTCOME, TIMED_OUT
from vesper.api.metrics import ApiMetrics
from vesper.config import Settings
from vesper.errors import ConfigError

log = logging.getLogger("vesper.serve")
http_log = logging.getLogger("vesper.api.http")

#: Seconds uvicorn waits for requests in flight (long streams) after a stop signal.
GRACEFUL_SHUTDOWN_S = 30
#: Largest request head (request line and headers) accepted, in bytes.
MAX_HEAD_BYTES = 64 * 1024
#: File descriptors the process needs besides its connections: the store, its WAL,
#: the listening socket, the broker connection, logs, worker threads' files.
SPARE_FILE_DESCRIPTORS = 128
#: uvicorn's exit status when its startup fails (uvicorn.server.STARTUP_FAILURE).
_STARTUP_FAILURE = 3


def _canned(status: str, message: str) -> bytes:
    body = b'{"error":"' + message.encode() + b'"}'
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class NodeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body timeouts and a connection limit.

    One timer per connection at most, for whichever phase is running: the head (from
    the connection, or from the first read of a later request), then the body (from
    the end of the head). A later request that arrives whole in one read arms no
    timer at all. Between requests uvicorn's keep-alive timer runs instead.
    """

    def __init__(
        self,
        config: ServerConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[arg-type]
        self._header_timeout = config.header_timeout
        self._body_timeout = config.body_timeout
        self._max_connections = config.max_connections
        self._metrics = config.metrics
        self._timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None  # a request head (or bytes before one) began
        self._head_bytes = 0
        self._body_since: float | None = None  # a head ended; its body is not complete
        self._fed_at = 0.0  # when the bytes being parsed arrived
        self._refused = False
        self._abort_now = self._abort  # one bound method per connection, not per request

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections:
            self._refused = True
            self.transport = transport
            transport.abort()
            if self._metrics is not None:
                self._metrics.connection_refused()
            _warn_limit(self._max_connections)
            return
        super().connection_made(transport)
        now = self._head_since = self.loop.time()
        self._head_bytes = 0
        self._timer = self.loop.call_at(now + self._header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._cancel_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The client went away (or was cut off) before its answer was complete.
            cycle.scope.setdefault(OUTCOME, CLIENT_GONE)  # type: ignore[misc]
            http_log.debug(
                "%s: connection lost during %s %r%s",
                self._peer(),
                cycle.scope["method"],
                cycle.scope["path"],
                f" ({exc})" if exc else "",
            )
        super().connection_lost(exc)

    # The parser callbacks below run on every request: they are kept to a few
    # attribute reads and writes, with one clock reading per read from the socket.

    def data_received(self, data: bytes) -> None:
        keep_alive = self.timeout_keep_alive_task
        if keep_alive is not None:
            keep_alive.cancel()
            self.timeout_keep_alive_task = None
        now = self._fed_at = self.loop.time()
        if self._head_since is not None:
            self._head_bytes += len(data)
        elif self._body_since is None:
            # A new request, or bytes before one. (A pipelined request that begins in
            # the same read as the end of the one before is timed from the next read.)
            self._head_since = now
            self._head_bytes = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # uvicorn logs each of these as a warning: any client could fill the log.
            http_log.debug("%s: invalid HTTP request: %s", self._peer(), exc)
            self._cancel_timer()
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            # WebSocket and h2c upgrades are not served: the request is answered as
            # plain HTTP/1.1 and the connection closed after it (the parser stops
            # reading at an upgrade).
            http_log.debug("%s: upgrade request answered as HTTP/1.1", self._peer())
            if self.cycle is not None:
                self.cycle.keep_alive = False
        head_since = self._head_since
        if head_since is not None:
            if self._head_bytes > MAX_HEAD_BYTES:
                if not self.transport.is_closing():
                    self._refuse_head()
            elif self._timer is None and not self.transport.is_closing():
                self._arm(head_since + self._header_timeout, self._head_timed_out)
        elif (
            self._body_since is not None and self._timer is None and not self.transport.is_closing()
        ):
            self._arm(self._body_since + self._body_timeout, self._body_timed_out)

    # -- parser callbacks ------------------------------------------------------------

    def on_headers_complete(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        self._head_since = None
        self._body_since = self._fed_at
        self.scope[ABORT] = self._abort_now  # type: ignore[literal-required]
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._body_since = None
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        cycle = self.cycle
        HttpToolsProtocol.on_message_complete(self)
        if (
            cycle.response_complete
            and self.timeout_keep_alive_task is None
            and not self.pipeline
            and not self.transport.is_closing()
        ):
            # The answer went out before the body was all read (a refusal, a 413):
            # uvicorn armed its keep-alive timer then, and each later piece of body
            # cancelled it. The connection is idle now.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # -- timeouts --------------------------------------------------------------------

    def _arm(self, when: float, callback: Callable[[], None]) -> None:
        self._timer = self.loop.call_at(when, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle(self) -> bool:
        """No answer is in flight or waiting on this connection."""
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def _in_head(self) -> bool:
        """The parser has begun a request whose head is not complete: uvicorn makes a
        new scope at each request's first byte and hands it to a cycle at its end."""
        return self.scope is not None and (self.cycle is None or self.scope is not self.cycle.scope)

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        idle = self._idle()
        if not idle and not self._in_head():
            # Only stray bytes (blank lines) arrived while an answer is in flight: the
            # keep-alive timer takes over once it is done.
            self._head_since = None
            return
        self._count_timeout("header")
        http_log.debug(
            "%s: no complete request head within %g s (api_header_timeout): closing",
            self._peer(),
            self._header_timeout,
        )
        if idle:
            self.transport.write(_HEAD_TIMEOUT_RESPONSE)
            self.transport.close()
        else:
            self._abort()  # a pipelined head stalled behind an answer: no room for a 408

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.pipeline:
            # This request waits behind another and uvicorn stopped reading for it:
            # its client is not the slow one. Its time counts once reading resumes.
            self._arm(self.loop.time() + self._body_timeout, self._body_timed_out)
            return
        self._count_timeout("body")
        http_log.debug(
            "%s: request body not complete within %g s (api_body_timeout): closing",
            self._peer(),
            self._body_timeout,
        )
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()  # a body nobody reads any more (answered already)
            return
        cycle.scope[OUTCOME] = TIMED_OUT  # type: ignore[literal-required]
        if not cycle.response_started:
            self.transport.write(_BODY_TIMEOUT_RESPONSE)
        # The handler waiting for the body gets http.disconnect; its answer is dropped.
        cycle.disconnected = True
        cycle.keep_alive = False
        cycle.message_event.set()
        self.transport.close()

    def _refuse_head(self) -> None:
        http_log.debug("%s: request head over %d bytes: closing", self._peer(), MAX_HEAD_BYTES)
        if self._idle():
            self.transport.write(_HEAD_TOO_LARGE_RESPONSE)
            self.transport.close()
        else:
            self._abort()

    def _count_timeout(self, phase: str) -> None:
        if self._metrics is not None:
            self._metrics.timed_out(phase)

    def _abort(self) -> None:
        """Close the connection at once; the answer in flight is never completed."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # Set now, not when the loop calls connection_lost: the app may return
            # before that, and uvicorn would then log an incomplete answer as an error.
            cycle.disconnected = True
            cycle.keep_alive = False
            cycle.message_event.set()
        self._cancel_timer()
        self.transport.abort()

    def _peer(self) -> str:
        client = self.client
        return f"{client[0]}:{client[1]}" if client else "client"


_HEAD_TIMEOUT_RESPONSE = _canned(
    "408 Request Timeout", "the request head did not arrive in time (api_header_timeout)"
)
_BODY_TIMEOUT_RESPONSE = _canned(
    "408 Request Timeout", "the request body did not arrive in time (api_body_timeout)"
)
_HEAD_TOO_LARGE_RESPONSE = _canned(
    "431 Request Header Fields Too Large", f"the request head is over {MAX_HEAD_BYTES} bytes"
)

_limit_warned_at: float | None = None


def _warn_limit(limit: int) -> None:
    """Log the connection limit being hit, at most once a minute."""
    global _limit_warned_at
    now = time.monotonic()
    if _limit_warned_at is None or now - _limit_warned_at >= 60:
        _limit_warned_at = now
        log.warning(
            "%d connections open (api_max_connections): closing new ones as they arrive "
            "(logged at most once a minute; counted in vesper_http_connections_refused_total)",
            limit,
        )


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus what NodeHttpProtocol reads."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        header_timeout: float,
        body_timeout: float,
        max_connections: int,
        metrics: ApiMetrics | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.metrics = metrics


class ApiServer(uvicorn.Server):
    """uvicorn's server, announcing the node's URL once it accepts connections.

    With TLS the listening sockets are set up here rather than by uvicorn, only to give
    the handshake ``api_header_timeout`` instead of asyncio's 60 s: a client that
    connects and never says hello is closed like one that never sends its headers.
    """

    config: ServerConfig

    def __init__(self, config: ServerConfig, branch_id: str) -> None:
        super().__init__(config)
        self._branch_id = branch_id
        if config.metrics is not None:
            config.metrics.watch_connections(lambda: len(self.server_state.connections))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Feeds stay open as long as their clients: end them first, or the stop
        # waits GRACEFUL_SHUTDOWN_S for them.
        signal = getattr(self.config.app, "change_signal", None)
        if signal is not None:
            signal.close()
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None or self.config.ssl is None:
            await super().startup(sockets)
        else:
            await self._startup_tls(sockets)
        if self.started and sockets:
            # The real port when port = 0: tests and scripts read it from this line.
            scheme = "https" if self.config.ssl is not None else "http"
            log.info("vesper node %s serving %s", self._branch_id, url_of(sockets[0], scheme))

    async def _startup_tls(self, sockets: list[socket.socket]) -> None:
        # uvicorn.Server.startup for given sockets, plus ssl_handshake_timeout.
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(_STARTUP_FAILURE)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        self.servers = [
            await loop.create_server(
                create_protocol,
                sock=sock,
                ssl=config.ssl,
                backlog=config.backlog,
                ssl_handshake_timeout=config.header_timeout,
            )
            for sock in sockets
        ]
        self.started = True


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def create_server(settings: Settings, app: ASGIApp, branch_id: str) -> ApiServer:
    """The HTTP server for ``app`` as ``settings`` configure it; ``run(sockets=[...])``
    serves until a stop signal. ConfigError naming the variable if the TLS files
    cannot be used."""
    tls = tls_context(settings)
    raise_file_limit(settings.api_max_connections)
    config = ServerConfig(
        app,
        header_timeout=settings.api_header_timeout,
        body_timeout=settings.api_body_timeout,
        max_connections=settings.api_max_connections,
        metrics=getattr(app, "metrics", None),
        # uvloop when installed (a dependency except on Windows), else asyncio.
        loop="auto",
        http=NodeHttpProtocol,
        ws="none",
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        server_header=False,
        timeout_keep_alive=settings.api_idle_timeout,  # type: ignore[arg-type]
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None,
    )
    return ApiServer(config, branch_id)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context of ``api_tls_cert`` and ``api_tls_key`` (TLS 1.2 or
    later), None for plain HTTP; ConfigError naming the variable at fault."""
    cert_path, key_path = settings.api_tls_cert, settings.api_tls_key
    if cert_path is None or key_path is None:
        return None  # Settings refuses one without the other
    # Imported here: a node serving plain HTTP does not load the X.509 code.
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    cert_pem = _read("api_tls_cert", cert_path)
    key_pem = _read("api_tls_key", key_path)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError(
            f"api_tls_cert: {cert_path} holds no PEM certificate ('-----BEGIN CERTIFICATE-----')"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            f"api_tls_key: {key_path} is encrypted; give the key without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"api_tls_key: {key_path} holds no PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise ConfigError(
            f"api_tls_key: {key_path} is not the key of the certificate in api_tls_cert "
            f"({cert_path})"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"api_tls_cert: cannot use {cert_path} with api_tls_key {key_path}: {exc}"
        ) from None
    not_after = chain[0].not_valid_after_utc
    if not_after < datetime.datetime.now(datetime.UTC):
        log.warning("api_tls_cert: %s expired on %s: clients will refuse it", cert_path, not_after)
    return context


def _read(name: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None


def raise_file_limit(max_connections: int) -> None:
    """Raise the soft limit on open files toward the hard one if ``max_connections``
    connections would not fit under it; WARNING if they cannot."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    needed = max_connections + SPARE_FILE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning(
                "api_max_connections = %d needs about %d open files, but the limit is "
                "%d and cannot be raised (%s): connections past it will fail",
                max_connections,
                needed,
                soft,
                exc,
            )
            return
        log.debug("raised the open-file limit from %d to %d", soft, target)
    if target < needed:
        log.warning(
            "api_max_connections = %d needs about %d open files, but the hard limit is "
            "%d: lower api_max_connections or raise the limit (ulimit -n)",
            max_connections,
            needed,
            hard,
        )
