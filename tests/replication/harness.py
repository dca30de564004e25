"""In-process replicating nodes for the replication tests.

Each node is a SQLite store plus a ReplicationService, as ``vesper serve`` runs them
minus HTTP; the end-to-end tests use real ``vesper serve`` processes instead.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vesper.replication.service import ReplicationConfig, ReplicationService
from vesper.store import Store, open_store
from vesper.trust.keys import NodeKey

DEADLINE_S = 60.0


def wait_for(
    condition: Callable[[], Any],
    timeout: float = DEADLINE_S,
    what: str | Callable[[], str] = "condition",
) -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}")
        time.sleep(0.05)


def new_channel() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


class Node:
    def __init__(
        self,
        branch: str,
        hosts: list[tuple[str, int]],
        channel: str | tuple[str, ...],
        folder: Path,
        send_ack: bool = True,
        heartbeat_ms: int = 1000,
        **options: Any,
    ) -> None:
        self.branch = branch
        self.hosts = hosts
        self.channels = (channel,) if isinstance(channel, str) else channel
        self.channel = self.channels[0]
        self.url = f"sqlite:///{folder}/{branch}.db"
        self.send_ack = send_ack
        self.heartbeat_ms = heartbeat_ms
        self.options = options
        """Further ReplicationConfig fields (e.g. ``message_ttl_s``)."""
        self.store: Store | None = None
        self.service: ReplicationService | None = None
        self.key = NodeKey.generate()
        """Kept across restarts, as a real node keeps its key file."""

    def start(self) -> Node:
        self.store = open_store(self.url, self.branch, save_history=True, outbox=True)
        config = ReplicationConfig(
            self.branch,
            tuple(self.hosts),
            self.channels,
            send_ack=self.send_ack,
            heartbeat_ms=self.heartbeat_ms,
            key=self.key,
            **self.options,
        )
        self.service = ReplicationService(self.store, config)
        self.service.start()
        self.service.wait_started()
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        if self.store is not None:
            self.store.close()
        self.service = self.store = None

    @property
    def s(self) -> Store:
        assert self.store is not None, f"node {self.branch} is stopped"
        return self.store

    def status(self) -> dict[str, Any]:
        assert self.service is not None
        return self.service.status()

    def connected(self) -> bool:
        return self.service is not None and self.status()["connected"] is not None


def converged(nodes: list[Node]) -> bool:
    first = nodes[0].s
    return all(
        n.s.revision == first.revision and n.s.digest() == first.digest() and n.s.pending_count == 0
        for n in nodes[1:]
    )


def wait_converged(nodes: list[Node], timeout: float = DEADLINE_S) -> None:
    wait_for(
        lambda: converged(nodes),
        timeout,
        lambda: (
            "convergence: "
            + "; ".join(f"{n.branch}={n.s.revision} pending={n.s.pending_count}" for n in nodes)
        ),
    )
