"""Prometheus metrics of one node: HTTP traffic, commits, and the store's state.

Each app has its own registry, so several nodes (or tests) in one process never share
counters. Store figures are read when ``/metrics`` is scraped, not on every commit.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from vesper import __version__
from vesper.errors import VesperError
from vesper.replication.peer_state import STATES as PEER_STATES
from vesper.storage.url import parse_storage_url

if TYPE_CHECKING:
    from vesper.node import Node

#: Latency buckets in seconds: a point read takes well under a millisecond, a full
#: scan of a large store seconds.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class ApiMetrics:
    """The counters the HTTP layer updates, and the registry ``/metrics`` renders."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vesper_http_requests",
            "HTTP requests answered, by method, endpoint (route template) and status",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vesper_http_request_duration_seconds",
            "Time from request start to the last byte of the answer",
            ["method", "endpoint", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.commits = Counter(
            "vesper_commits",
            "Commits made through the HTTP API since the node started, by operation",
            ["operation"],
            registry=self.registry,
        )
        self._commit_children = {
            op: self.commits.labels(op)
            for op in ("create", "replace", "update", "delete", "transaction")
        }
        self.auth_failures = Counter(
            "vesper_http_auth_failures",
            "Requests refused for want of a valid token, by reason (missing, "
            "invalid_token, malformed, read_only)",
            ["reason"],
            registry=self.registry,
        )
        self._auth_children = {
            reason: self.auth_failures.labels(reason)
            for reason in ("missing", "invalid_token", "malformed", "read_only")
        }
        self.connections_refused = Counter(
            "vesper_http_connections_refused",
            "Connections closed on arrival because api_max_connections were open",
            registry=self.registry,
        )
        self.timeouts = Counter(
            "vesper_http_timeouts",
            "Connections closed because the client was too slow, by phase (header: "
            "api_header_timeout, body: api_body_timeout)",
            ["phase"],
            registry=self.registry,
        )
        self._timeout_children = {p: self.timeouts.labels(p) for p in ("header", "body")}
        self.feeds_cut = Counter(
            "vesper_http_feeds_cut",
            "Changes feed clients cut off because they let api_feed_buffer_bytes fill",
            registry=self.registry,
        )
        self._open_connections: Callable[[], int] | None = None
        self.registry.register(_ConnectionsCollector(self))
        self.registry.register(StoreCollector(node))
        self.registry.register(ReplicationCollector(node))
        ProcessCollector(registry=self.registry)
        # Children are looked up once per label set: labels() formats and locks.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, endpoint, str(status))
            children = (self.requests.labels(*labels), self.latency.labels(*labels))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def committed(self, operation: str) -> None:
        self._commit_children[operation].inc()

    def auth_failed(self, reason: str) -> None:
        self._auth_children[reason].inc()

    def connection_refused(self) -> None:
        self.connections_refused.inc()

    def timed_out(self, phase: str) -> None:
        self._timeout_children[phase].inc()

    def feed_cut(self) -> None:
        self.feeds_cut.inc()

    def watch_connections(self, count: Callable[[], int]) -> None:
        """Report ``count()`` as the open connections (the server calls this)."""
        self._open_connections = count

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ConnectionsCollector:
    """The open HTTP connections, counted by the server when scraped."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        count = self._metrics._open_connections
        if count is not None:
            yield GaugeMetricFamily(
                "vesper_http_connections", "HTTP connections open now", value=count()
            )


class StoreCollector:
    """Gauges read from the node's store at scrape time."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def describe(self) -> list[Metric]:
        # Returning nothing keeps registration from calling collect() before the
        # node is started.
        return []

    def collect(self) -> Iterator[Metric]:
        node = self._node
        info = InfoMetricFamily("vesper_node", "This node's branch id and Vesper version")
        info.add_metric([], {"branch_id": node.branch_id, "version": __version__})
        yield info
        yield GaugeMetricFamily(
            "vesper_ready",
            "1 when GET /ready answers 200 (the node is fit for traffic), else 0",
            value=int(not node.ready_reasons()),
        )
        try:
            store = node.store
            objects, outbox, pending = store.count, store.outbox_count, store.pending_count
            vector = store.version_vector
        except VesperError:
            return  # not running: only the info above
        yield GaugeMetricFamily("vesper_objects", "Live objects in the store", value=objects)
        yield GaugeMetricFamily(
            "vesper_outbox_changesets",
            "Committed changesets not yet confirmed by the broker",
            value=outbox,
        )
        yield GaugeMetricFamily(
            "vesper_pending_changesets",
            "Received changesets waiting for a missing predecessor",
            value=pending,
        )
        # Not "..._counter": Prometheus reserves type names, and promtool refuses them.
        counters = GaugeMetricFamily(
            "vesper_revision_changesets",
            "Changesets of each branch applied: the revision's entries (latest counter)",
            labels=["branch"],
        )
        for branch, counter in sorted(vector.items()):
            counters.add_metric([branch], counter)
        yield counters
        size = store_bytes(node.settings.effective_storage_url)
        if size is not None:
            yield GaugeMetricFamily(
                "vesper_store_bytes", "Size of the database file and its WAL", value=size
            )


_REPLICATION_COUNTERS = {
    "messages_sent": "STOMP messages sent (changesets, announcements, catch-up)",
    "messages_received": "STOMP messages received",
    "changesets_sent": "Changesets published from the outbox",
    "changesets_received": "Changesets received from the broker (duplicates included)",
    "send_errors": "Failed sends",
    "receive_errors": "Messages rejected: malformed, forged or invalid changesets",
    "catchup_requests_sent": "Catch-up requests this node sent",
    "catchup_requests_answered": "Catch-up requests this node answered",
    "catchup_changesets_received": "Changesets received through catch-up",
    "forks": "Changesets refused as forks: another changeset of that origin and id, or a "
    "broken hash chain",
    "conflicts": "Conflicts detected: concurrent writes of different values to one property "
    "(or to an object's existence), resolved the same way on every node",
}


class ReplicationCollector:
    """Replication figures read from the node's replication service at scrape time."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        replication = self._node.replication
        if replication is None:
            return
        status = replication.status()
        yield GaugeMetricFamily(
            "vesper_replication_connected",
            "1 while connected to a broker",
            value=int(bool(status.get("connected"))),
        )
        for name, help_text in _REPLICATION_COUNTERS.items():
            if name in status:
                yield CounterMetricFamily(
                    f"vesper_replication_{name}", help_text, value=status[name]
                )
        # One series per peer and gauge: the peer list is bounded (MAX_PEERS). Not
        # "..._behind_us_...": promtool reads "us" as microseconds.
        lag = GaugeMetricFamily(
            "vesper_replication_peer_lag_changesets",
            "Changesets a peer announced that this node lacks (as ahead_of_us)",
            labels=["peer"],
        )
        ahead = GaugeMetricFamily(
            "vesper_replication_peer_ahead_changesets",
            "Changesets a peer announced that this node lacks",
            labels=["peer"],
        )
        behind = GaugeMetricFamily(
            "vesper_replication_peer_behind_changesets",
            "Changesets this node has that a peer's last announced revision lacks",
            labels=["peer"],
        )
        seen = GaugeMetricFamily(
            "vesper_replication_peer_seconds_since_seen",
            "Seconds since the peer's last announcement",
            labels=["peer"],
        )
        states = dict.fromkeys(PEER_STATES, 0)
        now = time.time()
        for peer, info in status.get("peers", {}).items():
            lag.add_metric([peer], info.get("lag", 0))
            ahead.add_metric([peer], info.get("ahead_of_us", 0))
            behind.add_metric([peer], info.get("behind_us", 0))
            seen.add_metric([peer], _seconds_since(info.get("last_heard"), now))
            state = info.get("state")
            if state in states:
                states[state] += 1
        yield lag
        yield ahead
        yield behind
        yield seen
        by_state = GaugeMetricFamily(
            "vesper_replication_peers",
            "Peers by state: in_sync, catching_up, stuck, gone",
            labels=["state"],
        )
        for state, count in states.items():
            by_state.add_metric([state], count)
        yield by_state
        refused = CounterMetricFamily(
            "vesper_replication_quarantined",
            "Messages refused and quarantined, by reason (unsigned, bad_signature, "
            "untrusted_key, key_mismatch, fork, broken_chain, pending_full, malformed)",
            labels=["reason"],
        )
        for reason, count in sorted(status.get("quarantined", {}).items()):
            refused.add_metric([reason], count)
        yield refused


def _seconds_since(iso: object, now: float) -> float:
    """Seconds from an ISO time of the status (``...Z``) to ``now``; 0 if unreadable."""
    try:
        then = datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return 0.0
    return round(max(0.0, now - then), 1)


def store_bytes(storage_url: str) -> int | None:
    """Bytes the SQLite database and its write-ahead log take; None for ``mem://``."""
    path = parse_storage_url(storage_url).path
    if path is None:
        return None
    total = 0
    for name in (path, path + "-wal"):
        with contextlib.suppress(OSError):  # no WAL file between checkpoints
            total += os.stat(name).st_size
    return total
