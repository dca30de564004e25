"""Streaming JSON arrays from the store's synchronous iterators.

A list answer may cover the whole store, so it is never built in memory and never
scanned on the event loop: a worker thread pulls about ``CHUNK_BYTES`` of items at a
time and the loop sends them while serving other requests. A result that fits in the
first chunk goes out as a plain response with a Content-Length.

A streamed answer has sent its 200 before the store is done: if the store fails
midway (StorageError, StoreDamaged), the connection is aborted, so the answer never
gets its chunked end and no client can take the truncated body for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from vesper.api.errors import ABORT, JSON_TYPE, OUTCOME, status_of
from vesper.errors import VesperError

log = logging.getLogger("vesper.api")

#: Bytes of JSON gathered per worker-thread call: large enough that the thread hop is
#: noise, small enough that no call holds the GIL for long.
CHUNK_BYTES = 64 * 1024


class ThreadedBatches:
    """Comma-joined batches of JSON items, each pulled from ``items`` in a worker thread.

    The iterator usually holds a database snapshot, so it is always closed, in a thread
    and never while a batch is being pulled, even when the client goes away mid-stream.
    """

    def __init__(self, items: Iterator[Any], encode: Callable[[Any], bytes] | None = None) -> None:
        self._items = items
        self._encode = encode
        self._lock = threading.Lock()
        self._first = True
        self._closed = False
        self.done = False

    def _take(self) -> bytes:
        with self._lock:
            if self._closed:
                self.done = True
                return b""
            parts: list[bytes] = []
            size = 0
            encode = self._encode
            for item in self._items:
                data = encode(item) if encode is not None else _as_bytes(item)
                parts.append(data)
                size += len(data)
                if size >= CHUNK_BYTES:
                    break
            else:
                self.done = True
        if not parts:
            return b""
        chunk = b",".join(parts)
        if not self._first:
            chunk = b"," + chunk
        self._first = False
        return chunk

    async def next(self) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(None, self._take)

    def _close_now(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                close = getattr(self._items, "close", None)
                if close is not None:
                    close()

    def close(self) -> None:
        """Close the iterator once any batch in flight is done; does not wait."""
        if self._closed:
            return
        if self.done:
            self._closed = True  # exhausted: the iterator has already closed itself
            return
        try:
            asyncio.get_running_loop().run_in_executor(None, self._close_now)
        except RuntimeError:  # no running loop (or its executor is shut down)
            self._close_now()


def _as_bytes(item: str | bytes) -> bytes:
    return item.encode() if isinstance(item, str) else item


def array_response(
    head: bytes, first: bytes, batches: ThreadedBatches, tail: bytes, status: int = 200
) -> Response:
    """``head`` + items + ``tail``: one body if ``first`` was all, else a stream."""
    if batches.done:
        batches.close()
        return Response(head + first + tail, status, media_type=JSON_TYPE)
    return AbortingStream(_stream(head + first, batches, tail), status, media_type=JSON_TYPE)


class AbortingStream(StreamingResponse):
    """A streamed answer that aborts its connection when its body fails midway.

    The failure is logged once, here, at ERROR, and counted with the status it would
    have had (503 for a storage error) instead of the 200 already sent. The server
    provides the abort (vesper.api.server); under another server the exception goes
    on, and the server closes the connection without ending the answer either.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            failed = status_of(exc) if isinstance(exc, VesperError) else 500
            scope[OUTCOME] = failed
            where = f"{scope.get('method')} {scope.get('path')!r}"
            if isinstance(exc, VesperError):
                log.error(
                    "%s failed midway, connection aborted: %s: %s", where, type(exc).__name__, exc
                )
            else:
                log.error("%s failed midway, connection aborted", where, exc_info=exc)
            abort = scope.get(ABORT)
            if abort is None:
                raise
            abort()


async def _stream(start: bytes, batches: ThreadedBatches, tail: bytes) -> AsyncIterator[bytes]:
    try:
        yield start
        while not batches.done:
            chunk = await batches.next()
            if chunk:
                yield chunk
        yield tail
    finally:
        batches.close()
