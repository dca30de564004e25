"""``Client``: a remote node, with the embedded store's methods where they make sense.

Connection failures are retried (``retries`` times, with backoff) when sending again is
safe: reads, PUT, PATCH, and creates and transactions, which carry an idempotency key of
their own so a retry after a lost answer cannot commit twice. ``changes()`` follows the
node's changes feed and resumes from the last entry after a lost connection or a
restart of the node, so it misses nothing and repeats nothing.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from vesper.client import calls
from vesper.client.calls import Answer, Call, Commit, NodeUnreachable
from vesper.client.policy import PAGE, Backoff, headers_for, is_unsent, tls_verify

T = TypeVar("T")


class Client:
    """``Client("https://node:8001", token=..., verify="ca.pem")``; use it as a context
    manager or call ``close()``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        verify: bool | str | ssl.SSLContext = True,
        timeout: float = 30.0,
        retries: int = 8,
    ) -> None:
        self._http = httpx.Client(
            base_url=url, headers=headers_for(token), verify=tls_verify(verify), timeout=timeout
        )
        self._retries = retries

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the store's methods ---------------------------------------------------------

    def create(self, doc: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Commit:
        return self._run(calls.create(doc))

    def get(self, obj_id: str) -> dict[str, Any] | None:
        return self._run(calls.get(obj_id))

    def get_versioned(self, obj_id: str) -> tuple[dict[str, Any], str] | None:
        """The object and its version (ETag), for ``if_version``; None if absent."""
        return self._run(calls.get_versioned(obj_id))

    def get_with_conflicts(self, obj_id: str) -> dict[str, Any] | None:
        """``{"object", "conflicts"}``: the losing values of its conflicts too."""
        return self._run(calls.get_with_conflicts(obj_id))

    def replace(
        self,
        doc: Mapping[str, Any],
        obj_id: str | None = None,
        *,
        if_version: str | None = None,
        if_absent: bool = False,
    ) -> Commit:
        target = obj_id if obj_id is not None else str(doc["id"])
        return self._run(calls.replace(doc, target, if_version, if_absent))

    def update(
        self, obj_id: str, patch: Mapping[str, Any], *, if_version: str | None = None
    ) -> Commit:
        return self._run(calls.update(obj_id, patch, if_version))

    def delete(self, obj_id: str, *, if_version: str | None = None) -> Commit:
        return self._run(calls.delete(obj_id, if_version))

    def transaction(self, ops: Sequence[Mapping[str, Any]]) -> Commit:
        return self._run(calls.transaction(ops))

    def query(
        self, where: Mapping[str, Any] | None = None, *, conflicted: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every object (matching ``where``), by id, fetched a page at a time."""
        after = None
        while True:
            page = self._run(calls.query_page(where, after, PAGE, conflicted))
            yield from page
            if len(page) < PAGE:
                return
            after = page[-1]["id"]

    def changesets(self, since: str = "", limit: int | None = None) -> list[dict[str, Any]]:
        return self._run(calls.changesets(since, limit))

    def conflicts(self, obj_id: str | None = None) -> list[dict[str, Any]]:
        return self._run(calls.conflicts(obj_id))

    def status(self) -> dict[str, Any]:
        return self._run(calls.status())

    def digest(self) -> dict[str, Any]:
        return self._run(calls.digest())

    def changes(self, since: str | int = "now", **filters: Any) -> Iterator[dict[str, Any]]:
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
                with self._http.stream("GET", call.path, params=call.params) as answer:
                    if answer.status_code != 200:
                        answer.read()
                        calls.check(
                            call, Answer(answer.status_code, answer.headers, answer.content)
                        )
                    for line in answer.iter_lines():
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
            if not backoff.wait_sync():
                raise NodeUnreachable(f"{self._http.base_url}: {problem}")

    # -- sending ---------------------------------------------------------------------

    def _run(self, call: Call[T]) -> T:
        backoff = Backoff(self._retries)
        while True:
            try:
                answer = self._http.request(
                    call.method,
                    call.path,
                    params=call.params or None,
                    content=call.body,
                    headers=call.headers,
                )
            except httpx.TransportError as exc:
                if (call.retry == calls.RETRY_ALWAYS or is_unsent(exc)) and backoff.wait_sync():
                    continue
                where = f"{call.method} {self._http.base_url}{call.path}"
                raise NodeUnreachable(f"{where}: {exc}") from None
            if answer.status_code == 503 and backoff.wait_sync():
                continue
            return calls.check(call, Answer(answer.status_code, answer.headers, answer.content))
