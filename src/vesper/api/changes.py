"""``GET /api/changes``: every changeset this node stores, local or replicated, in its
apply order, as a list, a long poll, a continuous stream or server-sent events.

Each entry names its position (``seq``): a client that resumes from the last one it
handled misses nothing and sees nothing twice, across restarts of the node too
(``vesper.store.changes``). Streams read the store, not a copy of what was written:
a commit or an apply only wakes them (``ChangeSignal``), so no feed client ever slows
or blocks a writer. What a stream has read but its client has not taken yet waits in
a buffer of ``api_feed_buffer_bytes``; a client that lets it fill is cut off (it
resumes from its last ``seq``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from vesper.api.change_signal import ChangeSignal
from vesper.api.context import ApiContext
from vesper.api.errors import ABORT, HttpError
from vesper.api.jsonio import int_param, json_object_param, json_response, query_params
from vesper.document import strict_json
from vesper.query.expression import Expr
from vesper.store import Store
from vesper.store.changes import Change
from vesper.store.query import parse_where

log = logging.getLogger("vesper.api")

FEEDS = ("normal", "longpoll", "continuous", "sse")
PARAMS = (
    "since",
    "feed",
    "timeout",
    "heartbeat",
    "limit",
    "ids",
    "where",
    "include_objects",
    "objects_from",
)
DEFAULT_LIMIT = 1_000
MAX_LIMIT = 10_000
"""Entries of one normal or long-poll answer (a stream takes any ``limit``)."""
DEFAULT_LONGPOLL_MS = 60_000
DEFAULT_HEARTBEAT_MS = 30_000
MIN_HEARTBEAT_MS = 100
OBJECTS_PER_ENTRY = 1_000
"""Objects listed in one entry; a larger changeset is paged with
``GET /api/changes/{seq}?objects_from=``."""
PAGE_ENTRIES = 500
"""Changesets a stream reads from the store at a time."""
SSE_TYPE = "text/event-stream"
NDJSON_TYPE = "application/x-ndjson"


@dataclass(frozen=True, slots=True)
class Filter:
    ids: frozenset[str] | None
    where: Expr | None
    include_objects: bool

    def entry(self, store: Store, change: Change, objects_from: int = 0) -> dict[str, Any] | None:
        """The entry of one change, or None when the filter leaves none of its objects.
        Objects are given as they are now on this node (``include_objects``), the same
        for ``where``: a feed tells what changed; a read tells what is."""
        objects = change.objects
        if self.ids is not None:
            objects = [o for o in objects if o[0] in self.ids]
        current: dict[str, Any] = {}
        if self.where is not None or self.include_objects:
            wanted = (
                objects if self.where is not None else objects[objects_from:][:OBJECTS_PER_ENTRY]
            )
            current = {obj_id: store.get(obj_id) for obj_id, _ in wanted}
        if self.where is not None:
            where = self.where
            objects = [
                o for o in objects if current[o[0]] is not None and where.matches(current[o[0]])
            ]
        if not objects:
            return None
        page = objects[objects_from : objects_from + OBJECTS_PER_ENTRY]
        listed = []
        for obj_id, deleted in page:
            item: dict[str, Any] = {"id": obj_id, "deleted": deleted}
            if self.include_objects:
                item["object"] = current.get(obj_id)
            listed.append(item)
        entry: dict[str, Any] = {
            "seq": change.seq,
            "id": change.id,
            "origin": change.origin,
            "time": change.time,
            "revision": change.revision,
            "objects": listed,
            "objects_total": len(objects),
        }
        if objects_from + OBJECTS_PER_ENTRY < len(objects):
            entry["objects_next"] = objects_from + OBJECTS_PER_ENTRY
        return entry


def _filter(params: dict[str, str]) -> Filter:
    ids = None
    if "ids" in params:
        value = strict_json.loads(params["ids"], "query parameter 'ids'")
        if type(value) is not list or not all(type(i) is str for i in value):
            raise HttpError(400, "query parameter 'ids' must be a JSON array of object ids")
        ids = frozenset(value)
    where_value = json_object_param(params, "where")
    where = parse_where(where_value) if where_value is not None else None
    include = params.get("include_objects", "false")
    if include not in ("true", "false"):
        raise HttpError(400, f"include_objects must be true or false, got {include!r}")
    return Filter(ids, where, include == "true")


def _read(
    store: Store, after: int, limit: int, skip: dict[str, int] | None, filt: Filter
) -> tuple[list[dict[str, Any]], int, bool]:
    """Up to ``limit`` entries after ``after`` (worker thread): (entries, the position
    reached, whether more changesets follow)."""
    entries: list[dict[str, Any]] = []
    position = after
    while len(entries) < limit:
        changes = store.changes(position, PAGE_ENTRIES, skip)
        for change in changes:
            entry = filt.entry(store, change)
            position = change.seq
            if entry is not None:
                entries.append(entry)
                if len(entries) == limit:
                    return entries, position, bool(store.changes(position, 1, skip))
        if len(changes) < PAGE_ENTRIES:
            return entries, position, False
    return entries, position, True


def routes(ctx: ApiContext, signal: ChangeSignal, buffer_bytes: int) -> list[BaseRoute]:
    async def changes(request: Request) -> Response:
        params = query_params(request, PARAMS[:-1])
        feed = params.get("feed", "normal")
        if feed not in FEEDS:
            raise HttpError(400, f"feed must be one of {', '.join(FEEDS)}, got {feed!r}")
        since = params.get("since", "")
        if feed == "sse" and "last-event-id" in request.headers:
            since = request.headers["last-event-id"]  # a browser's EventSource resuming
        limit = int_param(params, "limit")
        if limit == 0:
            raise HttpError(400, "limit must be at least 1")
        timeout = int_param(params, "timeout")
        heartbeat = int_param(params, "heartbeat")
        if heartbeat is not None and heartbeat < MIN_HEARTBEAT_MS:
            raise HttpError(400, f"heartbeat is in milliseconds, at least {MIN_HEARTBEAT_MS}")
        filt = _filter(params)
        store = ctx.store
        after, skip = await ctx.in_thread(store.feed_start, since)
        if feed in ("normal", "longpoll"):
            if limit is not None and limit > MAX_LIMIT:
                raise HttpError(400, f"limit is at most {MAX_LIMIT} here; page with since")
            return await _answer(store, after, skip, filt, limit or DEFAULT_LIMIT, feed, timeout)
        return FeedStream(
            ctx,
            signal,
            buffer_bytes,
            after,
            skip,
            filt,
            sse=feed == "sse",
            limit=limit,
            timeout_s=None if timeout is None else timeout / 1000,
            heartbeat_s=(heartbeat or DEFAULT_HEARTBEAT_MS) / 1000,
        )

    async def _answer(
        store: Store,
        after: int,
        skip: dict[str, int] | None,
        filt: Filter,
        limit: int,
        feed: str,
        timeout: int | None,
    ) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (DEFAULT_LONGPOLL_MS if timeout is None else timeout) / 1000
        waiter: asyncio.Future[None] | None = None
        try:
            while True:
                if feed == "longpoll" and (waiter is None or waiter.done()):
                    waiter = signal.future(store)
                entries, position, more = await ctx.in_thread(
                    _read, store, after, limit, skip, filt
                )
                left = deadline - loop.time()
                if waiter is None or entries or left <= 0 or signal.closing.is_set():
                    return json_response({"results": entries, "last_seq": position, "more": more})
                after = position  # changesets the filter left out are not read again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), left)
        finally:
            signal.discard(waiter)

    async def change(request: Request) -> Response:
        params = query_params(request, ("ids", "where", "include_objects", "objects_from"))
        text = request.path_params["seq"]
        if not text.isascii() or not text.isdigit():
            raise HttpError(400, f"a change is named by its seq, a number; got {text!r}")
        filt = _filter(params)
        start = int_param(params, "objects_from") or 0

        def read() -> dict[str, Any] | None:
            if len(text) > 18:  # past SQLite's 64-bit integers: no such change
                return None
            found = ctx.store.change_at(int(text))
            return None if found is None else filt.entry(ctx.store, found, start)

        entry = await ctx.in_thread(read)
        if entry is None:
            raise HttpError(404, f"no change {text} (or none of its objects pass the filter)")
        return json_response(entry)

    return [
        Route("/api/changes", changes, methods=["GET"]),
        Route("/api/changes/{seq}", change, methods=["GET"]),
    ]


class FeedStream(Response):
    """A continuous (newline-delimited JSON) or server-sent-events feed.

    Two tasks: this one reads the store and fills the buffer, ``_send_all`` empties it
    into the connection; a third watches for the client leaving. The buffer holds
    encoded entries the connection has not taken: past ``buffer_bytes`` the client is
    cut off, so a client that stops reading costs at most that much memory.
    """

    def __init__(
        self,
        ctx: ApiContext,
        signal: ChangeSignal,
        buffer_bytes: int,
        after: int,
        skip: dict[str, int] | None,
        filt: Filter,
        *,
        sse: bool,
        limit: int | None,
        timeout_s: float | None,
        heartbeat_s: float,
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self._signal = signal
        self._buffer_bytes = buffer_bytes
        self._after = after
        self._skip = skip
        self._filter = filt
        self._sse = sse
        self._limit = limit
        self._timeout_s = timeout_s
        self._heartbeat_s = heartbeat_s
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._more = asyncio.Event()
        self._ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Not Response's headers: they carry a Content-Length of its empty body.
        media = SSE_TYPE + "; charset=utf-8" if self._sse else NDJSON_TYPE
        headers = [(b"content-type", media.encode()), (b"cache-control", b"no-store")]
        if self._sse:
            headers.append((b"x-accel-buffering", b"no"))  # proxies: do not hold events
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.Event()
        sender = asyncio.create_task(self._send_all(send))
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            cut = await self._produce(gone, sender)
            if cut:
                self._cut(scope)
                return
            self._ended = True
            self._more.set()
            await sender
        finally:
            for task in (sender, watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _produce(self, gone: asyncio.Event, sender: asyncio.Task[None]) -> bool:
        """Read and buffer entries until the limit, the timeout, the client leaving or
        the server stopping. True when the client must be cut off."""
        loop = asyncio.get_running_loop()
        store = self._ctx.store
        sent = 0
        idle_since = loop.time()
        waiter: asyncio.Future[None] | None = None
        if self._sse:
            self._push(b"retry: 2000\n\n")
        try:
            while not gone.is_set() and not sender.done():
                if waiter is None or waiter.done():
                    waiter = self._signal.future(store)
                want = (
                    PAGE_ENTRIES if self._limit is None else min(PAGE_ENTRIES, self._limit - sent)
                )
                entries, self._after, more = await self._ctx.in_thread(
                    _read, store, self._after, want, self._skip, self._filter
                )
                for entry in entries:
                    if not self._push(self._encode(entry)):
                        return True
                sent += len(entries)
                if self._limit is not None and sent >= self._limit:
                    break
                if entries or more:
                    idle_since = loop.time()
                    if more:
                        continue
                if self._signal.closing.is_set():
                    break
                wait = self._heartbeat_s
                if self._timeout_s is not None:
                    left = idle_since + self._timeout_s - loop.time()
                    if left <= 0:
                        break
                    wait = min(wait, left)
                done, waiting = await asyncio.wait(
                    [
                        asyncio.ensure_future(asyncio.shield(waiter)),
                        asyncio.ensure_future(gone.wait()),
                        asyncio.ensure_future(self._signal.closing.wait()),
                    ],
                    timeout=wait,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in waiting:
                    task.cancel()
                if not done and not self._push(b": heartbeat\n\n" if self._sse else b"\n"):
                    return True
        finally:
            self._signal.discard(waiter)
        if not gone.is_set():
            last = orjson.dumps({"last_seq": self._after})
            self._push(b"event: end\ndata: " + last + b"\n\n" if self._sse else last + b"\n")
        return False

    def _encode(self, entry: dict[str, Any]) -> bytes:
        data = orjson.dumps(entry)
        if self._sse:
            return b"id: %d\ndata: %s\n\n" % (entry["seq"], data)
        return data + b"\n"

    def _push(self, chunk: bytes) -> bool:
        """Buffer a chunk for the connection; False when the buffer is past its bound."""
        if self._held + len(chunk) > self._buffer_bytes and self._chunks:
            return False
        self._chunks.append(chunk)
        self._held += len(chunk)
        self._more.set()
        return True

    async def _send_all(self, send: Send) -> None:
        while True:
            await self._more.wait()
            self._more.clear()
            while self._chunks:
                chunk = self._chunks.popleft()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._held -= len(chunk)
            if self._ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return

    def _cut(self, scope: Scope) -> None:
        self._ctx.metrics.feed_cut()
        log.warning(
            "changes feed client %s cut off: %d bytes waiting for it (api_feed_buffer_bytes"
            " = %d); it resumes from its last seq",
            _client(scope),
            self._held,
            self._buffer_bytes,
        )
        abort: Callable[[], None] | None = scope.get(ABORT)
        if abort is not None:
            abort()


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"
