"""Wakes the changes feed's waiting clients after every commit and apply.

The store calls ``notify`` on the thread that wrote, after the write is visible to
readers. A client takes ``future()`` *before* it reads the store and waits on it only
if it found nothing new, so a write between its read and its wait is never missed:
either ``notify`` sees its future, or the write was visible before the future existed
and its read found it. With no client waiting, ``notify`` costs an attribute read, so
writers pay nothing for the feed.
"""

from __future__ import annotations

import asyncio

from vesper.store import Store


class ChangeSignal:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._scheduled = False
        self._store: Store | None = None
        self.closing = asyncio.Event()
        """Set when the server stops: feeds end their answers cleanly."""

    def future(self, store: Store) -> asyncio.Future[None]:
        """A future done at the next change (event loop only); ``discard`` it when done
        waiting, or it stays until that change."""
        if self._store is not store:
            self._store = store
            store.add_change_listener(self.notify)
        loop = asyncio.get_running_loop()
        self._loop = loop
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        return waiter

    def discard(self, waiter: asyncio.Future[None] | None) -> None:
        """A waiter that no longer waits: a node without writes would otherwise keep
        one per finished request."""
        if waiter is not None:
            self._waiters.discard(waiter)

    def notify(self) -> None:
        """Any thread: a change was stored."""
        loop = self._loop
        if not self._waiters or loop is None or self._scheduled:
            return
        self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: the server has stopped
            self._scheduled = False

    def _wake(self) -> None:
        self._scheduled = False
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """The server is stopping (event loop)."""
        self.closing.set()
        self._wake()
