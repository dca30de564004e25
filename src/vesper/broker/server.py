"""The broker: an asyncio STOMP server over a router of mailboxes and a store."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Any

from vesper.broker.auth import Users
from vesper.broker.config import BrokerConfig
from vesper.broker.connection import StompConnection
from vesper.broker.destinations import Router
from vesper.broker.faults import Faults
from vesper.broker.persistence import MemoryStore, SqliteStore, Store

log = logging.getLogger("vesper.broker")

#: How long stop() lets clients read what was buffered for them.
STOP_GRACE_S = 2.0
LISTEN_BACKLOG = 1024


class Broker:
    """An embedded STOMP 1.0/1.1/1.2 broker; ``await start()`` then ``await stop()``.

    Everything but ``faults`` must be used from the event loop the broker runs on.
    """

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.faults = Faults(self.config.faults)
        """Fault injection; safe to change from any thread."""
        self.users = Users.load(self.config.users_file) if self.config.users_file else None
        self.store: Store = (
            SqliteStore(self.config.data_dir, self.config.max_unwritten_bytes)
            if self.config.data_dir is not None
            else MemoryStore()
        )
        self.router = Router(self.store, self.faults, self.config.max_pending_bytes)
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
        try:
            self.router.recover(await self.store.open())
            self._server = await self.loop.create_server(
                lambda: StompConnection(self),
                self.config.host,
                self.config.port,
                backlog=LISTEN_BACKLOG,
            )
        except BaseException:
            await self.store.close()
            raise

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
        host = self.host
        return f"stomp://[{host}]:{self.port}" if ":" in host else f"stomp://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop listening, close every connection, write what is pending to the store."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
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
        await self.store.close()

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
        """Counts for tests and diagnostics: connections and the depth of every mailbox."""
        router = self.router
        return {
            "connections": len(self.connections),
            "blocked_publishers": sum(1 for c in self.connections if c.blocked),
            "queues": {d: box.depth for d, box in router.queues.items()},
            "durables": {n: box.depth for n, box in router.durables.items()},
            "subscriptions": sum(
                1 for boxes in router.topics.values() for b in boxes if b.kind == "subscription"
            ),
        }
