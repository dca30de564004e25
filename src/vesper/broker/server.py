"""The broker: an asyncio STOMP server over a router of mailboxes and a store."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import itertools
import logging
import secrets
import ssl
from collections.abc import Callable
from typing import Any

from vesper.broker.config import BrokerConfig
from vesper.broker.connection import StompConnection
from vesper.broker.destinations import Router
from vesper.broker.expiry import DurableExpiry
from vesper.broker.faults import Faults
from vesper.broker.memory import MemoryBudget
from vesper.broker.persistence import MemoryStore, SqliteStore, Store
from vesper.broker.tls import server_context
from vesper.broker.users import User, Users

log = logging.getLogger("vesper.broker")

#: How long stop() lets clients read what was buffered for them.
STOP_GRACE_S = 2.0
LISTEN_BACKLOG = 1024
#: How often messages that expired while nobody consumed them are dropped (a message
#: reaching a consumer after its expiry is dropped then instead).
SWEEP_INTERVAL_S = 1.0
#: Threads checking passcodes: scrypt needs 16 MiB and ~50 ms each, so a CONNECT flood
#: queues up here instead of taking the CPU and memory of the whole machine.
AUTH_THREADS = 2
#: A client must finish the TLS handshake within this time.
TLS_HANDSHAKE_TIMEOUT_S = 10.0


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Broker:
    """An embedded STOMP 1.0/1.1/1.2 broker; ``await start()`` then ``await stop()``.

    Everything but ``faults`` must be used from the event loop the broker runs on.
    """

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.faults = Faults(self.config.faults)
        """Fault injection; safe to change from any thread."""
        cfg = self.config
        self.users = Users.load(cfg.users) if cfg.users is not None else None
        self.ssl_context: ssl.SSLContext | None = (
            server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
            if cfg.tls_cert is not None and cfg.tls_key is not None
            else None
        )
        self.store: Store = (
            SqliteStore(cfg.data_dir, cfg.max_unwritten_bytes)
            if cfg.data_dir is not None
            else MemoryStore()
        )
        self.budget = MemoryBudget(cfg.max_memory, self._relieved)
        self.router = Router(self.store, self.faults, cfg.max_pending_bytes, self.budget)
        self.expiry = DurableExpiry(self.router, cfg.durable_expiry)
        self._auth_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None
        self.connections: set[StompConnection] = set()
        self.client_ids: dict[str, StompConnection] = {}
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._server: asyncio.Server | None = None
        self._message_ids = itertools.count(1)
        self._sessions = itertools.count(1)
        # message-id must stay unique across restarts (stored messages keep theirs), and
        # holds no character that header escaping would touch.
        self._id_prefix = f"vesper-{secrets.token_hex(6)}"

    async def start(self) -> None:
        """Open the store, recover its queues and subscriptions, start listening."""
        self.loop = asyncio.get_running_loop()
        self.faults.bind(self._wake)
        cfg = self.config
        try:
            self.router.recover(await self.store.open())
            self.expiry.check()
            self._server = await self.loop.create_server(
                lambda: StompConnection(self),
                cfg.host,
                cfg.port,
                backlog=LISTEN_BACKLOG,
                ssl=self.ssl_context,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if self.ssl_context else None,
            )
        except BaseException:
            await self.store.close()
            raise
        if self.users is not None:
            self._auth_pool = concurrent.futures.ThreadPoolExecutor(
                AUTH_THREADS, thread_name_prefix="vesper-broker-auth"
            )
        if self.expiry.enabled:
            self._expiry_timer = self.loop.call_later(self.expiry.interval, self._check_expiry)
        self._sweep_timer = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        if cfg.allow_anonymous and not is_loopback(cfg.host):
            log.warning(
                "broker: --allow-anonymous on %s: anyone who can reach this address has"
                " every right on every destination; use --users for a network",
                cfg.host,
            )
        if cfg.allow_anonymous and self.users is not None:
            log.warning(
                "broker: --allow-anonymous with --users: a CONNECT without login gets"
                " every right, so the users' permissions restrict nobody"
            )

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``port=0``)."""
        assert self._server is not None, "the broker is not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def url(self) -> str:
        """``stomp://host:port``, or ``stomp+ssl://host:port`` for a TLS listener."""
        host = self.host
        scheme = "stomp+ssl" if self.ssl_context is not None else "stomp"
        return (
            f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"
        )

    async def stop(self) -> None:
        """Stop listening, close every connection, write what is pending to the store."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for timer in (self._expiry_timer, self._sweep_timer):
            if timer is not None:
                timer.cancel()
        for conn in list(self.connections):
            conn.close()
        deadline = self.loop.time() + STOP_GRACE_S
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)  # let connection_lost run for the aborted ones
        await server.wait_closed()
        if self._auth_pool is not None:
            self._auth_pool.shutdown(wait=True, cancel_futures=True)
        await self.store.close()

    def authenticate(
        self, login: str | None, passcode: str | None, done: Callable[[User | None], None]
    ) -> None:
        """Check a login on a worker thread; ``done(user or None)`` runs on the loop."""
        assert self.users is not None and self._auth_pool is not None
        future = self.loop.run_in_executor(
            self._auth_pool, self.users.authenticate, login, passcode
        )

        def finished(f: asyncio.Future[User | None]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("broker: checking the passcode of %r failed: %s", login, exc)
            done(None if exc is not None else f.result())

        future.add_done_callback(finished)

    def _check_expiry(self) -> None:
        try:
            self.expiry.check()
        finally:
            if self._server is not None:
                self._expiry_timer = self.loop.call_later(self.expiry.interval, self._check_expiry)

    def _sweep(self) -> None:
        try:
            self.router.sweep()
        finally:
            if self._server is not None:
                self._sweep_timer = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _relieved(self) -> None:
        """The budget has room again: stored mailboxes may read back from disk."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon(self.router.redispatch)

    def _wake(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.router.redispatch)

    def disconnect_clients(
        self, client_id: str | None = None, keep: StompConnection | None = None
    ) -> int:
        """Drop client connections without a word, as a network failure would: all of
        them, or those of one ``client-id``. Returns how many were dropped."""
        dropped = 0
        for conn in list(self.connections):
            if conn is keep or conn.transport is None:
                continue
            if client_id is None or conn.client_id == client_id:
                conn.transport.abort()
                dropped += 1
        return dropped

    def new_message_id(self) -> str:
        return f"{self._id_prefix}-{next(self._message_ids)}"

    def new_session_id(self) -> str:
        return f"{self._id_prefix}-session-{next(self._sessions)}"

    def stats(self) -> dict[str, Any]:
        """Counts for tests and diagnostics: connections, the depth of every mailbox and
        the memory budget (also on ``/vesper-control/status``)."""
        router = self.router
        return {
            "connections": len(self.connections),
            "blocked_publishers": sum(1 for c in self.connections if c.blocked),
            "queues": {d: box.depth for d, box in router.queues.items()},
            "durables": {n: box.depth for n, box in router.durables.items()},
            "subscriptions": sum(
                1 for boxes in router.topics.values() for b in boxes if b.kind == "subscription"
            ),
            "memory": self.budget.stats(),
            "expired_durables": self.expiry.removed,
            "expired_messages": sum(box.expired for box in router.all()),
        }
