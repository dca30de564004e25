"""What every route handler needs: the node, the metrics, and where store calls run."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from vesper.api.metrics import ApiMetrics
from vesper.node import Node
from vesper.store import Store

T = TypeVar("T")


@dataclass
class ApiContext:
    """Shared by the route factories; one per app.

    ``inline_writes`` / ``inline_reads``: run single-object store calls on the event
    loop instead of a worker thread. The store is synchronous and each such call takes
    tens to hundreds of microseconds, less than a thread hop costs on a 2-core machine
    (bench/http_bench.py --mode compares both). The price: while another
    thread holds the store's write lock (a large remote apply), the loop waits with it.
    Scans, history and the status always run in a thread: their cost grows with the
    store.
    """

    node: Node
    metrics: ApiMetrics
    inline_writes: bool = True
    inline_reads: bool = True

    @property
    def store(self) -> Store:
        return self.node.store

    async def in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))
        return await loop.run_in_executor(None, fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        if self.inline_writes:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        if self.inline_reads:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
