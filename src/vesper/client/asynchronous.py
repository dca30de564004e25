"""``AsyncClient``: ``Client`` for asyncio, method for method (``await`` each call,
``async for`` over ``query`` and ``changes``)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from vesper.client import calls
from vesper.client.calls import Answer, Call, Commit, NodeUnreachable
from vesper.client.policy import PAGE, Backoff, headers_for, is_unsent, tls_verify

T = TypeVar("T")


class AsyncClient:
    """``AsyncClient("https://node:8001", token=...)``; ``async with`` it or ``await
    aclose()``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        verify: bool | str | ssl.SSLContext = True,
        timeout: float = 30.0,
        retries: int = 8,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=url, headers=headers_for(token), verify=tls_verify(verify), timeout=timeout
        )
        self._retries = retries

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the store's methods ---------------------------------------------------------

    async def create(self, doc: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Commit:
        return await self._run(calls.create(doc))

    async def get(self, obj_id: str) -> dict[str, Any] | None:
        return await self._run(calls.get(obj_id))

    async def get_versioned(self, obj_id: str) -> tuple[dict[str, Any], str] | None:
        """The object and its version (ETag), for ``if_version``; None if absent."""
        return await self._run(calls.get_versioned(obj_id))

    async def get_with_conflicts(self, obj_id: str) -> dict[str, Any] | None:
        """``{"object", "conflicts"}``: the losing values of its conflicts too."""
        return await self._run(calls.get_with_conflicts(obj_id))

    async def replace(
        self,
        doc: Mapping[str, Any],
        obj_id: str | None = None,
        *,
        if_version: str | None = None,
        if_absent: bool = False,
    ) -> Commit:
        target = obj_id if obj_id is not None else str(doc["id"])
        return await self._run(calls.replace(doc, target, if_version, if_absent))

    async def update(
        self, obj_id: str, patch: Mapping[str, Any], *, if_version: str | None = None
    ) -> Commit:
        return await self._run(calls.update(obj_id, patch, if_version))

    async def delete(self, obj_id: str, *, if_version: str | None = None) -> Commit:
        return await self._run(calls.delete(obj_id, if_version))

    async def transaction(self, ops: Sequence[Mapping[str, Any]]) -> Commit:
        return await self._run(calls.transaction(ops))

    async def query(
        self, where: Mapping[str, Any] | None = None, *, conflicted: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Every object (matching ``where``), by id, fetched a page at a time."""
        after = None
        while True:
            page = await self._run(calls.query_page(where, after, PAGE, conflicted))
            for obj in page:
                yield obj
            if len(page) < PAGE:
                return
            after = page[-1]["id"]

    async def changesets(self, since: str = "", limit: int | None = None) -> list[dict[str, Any]]:
        return await self._run(calls.changesets(since, limit))

    async def conflicts(self, obj_id: str | None = None) -> list[dict[str, Any]]:
        return await self._run(calls.conflicts(obj_id))

    async def status(self) -> dict[str, Any]:
        return await self._run(calls.status())

    async def digest(self) -> dict[str, Any]:
        return await self._run(calls.digest())

    async def changes(
        self, since: str | int = "now", **filters: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """The changes feed from ``since`` (a seq, ``0``, ``now`` or a revision), entry
        by entry, for as long as it is iterated. Filters: ``ids``, ``where``,
        ``include_objects``, ``heartbeat`` (ms), ``timeout`` (ms: end after this long
        without a change). A lost connection or a node restart is resumed from the last
        entry; the node unreachable for longer than the retries allow raises
        NodeUnreachable."""
        feed = calls.Feed(since, filters)
        backoff = Backoff(self._retries)
        while True:
            call = feed.call()
            try:
                async with self._http.stream("GET", call.path, params=call.params) as answer:
                    if answer.status_code != 200:
                        await answer.aread()
                        calls.check(
                            call, Answer(answer.status_code, answer.headers, answer.content)
                        )
                    async for line in answer.aiter_lines():
                        entry = feed.line(line)
                        if entry is not None:
                            backoff.reset()
                            yield entry
                if feed.finished:
                    return
                # The node ended the feed (it is stopping): resume once it is back.
                problem = "the node ended the changes feed"
            except httpx.TransportError as exc:
                problem = str(exc)
            if not await backoff.wait_async():
                raise NodeUnreachable(f"{self._http.base_url}: {problem}")

    # -- sending ---------------------------------------------------------------------

    async def _run(self, call: Call[T]) -> T:
        backoff = Backoff(self._retries)
        while True:
            try:
                answer = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params or None,
                    content=call.body,
                    headers=call.headers,
                )
            except httpx.TransportError as exc:
                if (
                    call.retry == calls.RETRY_ALWAYS or is_unsent(exc)
                ) and await backoff.wait_async():
                    continue
                where = f"{call.method} {self._http.base_url}{call.path}"
                raise NodeUnreachable(f"{where}: {exc}") from None
            if answer.status_code == 503 and await backoff.wait_async():
                continue
            return calls.check(call, Answer(answer.status_code, answer.headers, answer.content))
