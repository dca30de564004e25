"""What both clients share: headers, paging, and when and how long to wait before
sending again."""

from __future__ import annotations

import asyncio
import ssl
import time

import httpx

PAGE = 1000
"""Objects per page of ``query``."""
FIRST_WAIT_S = 0.1
MAX_WAIT_S = 5.0


def headers_for(token: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def tls_verify(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """A CA file's path as the context httpx wants."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def is_unsent(exc: httpx.TransportError) -> bool:
    """Whether the request cannot have reached the node (no connection was made)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


class Backoff:
    """Exponential waits between attempts, ``retries`` of them at most."""

    def __init__(self, retries: int) -> None:
        self._retries = retries
        self._left = retries
        self._wait = FIRST_WAIT_S

    def reset(self) -> None:
        self._left, self._wait = self._retries, FIRST_WAIT_S

    def _next(self) -> float | None:
        if self._left <= 0:
            return None
        self._left -= 1
        wait, self._wait = self._wait, min(self._wait * 2, MAX_WAIT_S)
        return wait

    def wait_sync(self) -> bool:
        """Wait before the next attempt; False when no attempt is left."""
        wait = self._next()
        if wait is None:
            return False
        time.sleep(wait)
        return True

    async def wait_async(self) -> bool:
        wait = self._next()
        if wait is None:
            return False
        await asyncio.sleep(wait)
        return True
