"""The replication service of one node: connection, failover, subscriptions, and the
sender, apply worker and anti-entropy working together.

A supervisor thread owns the connection. It connects to the first reachable broker of
``replication_hosts`` (starting after the one that failed last), subscribes, and on any
loss reconnects with exponential backoff and jitter, going round the list. Local reads
and writes never wait for any of this: commits land in the outbox and are sent when a
broker is there.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vesper.errors import ConfigError
from vesper.history.changeset import Changeset
from vesper.history.revision import parse_revision
from vesper.replication import parts, stomplog, wire
from vesper.replication.brokers import BrokerProfile
from vesper.replication.catchup import AntiEntropy
from vesper.replication.health import Drain
from vesper.replication.link import StompLink
from vesper.replication.loglimit import LogLimit
from vesper.replication.quarantine import Quarantine
from vesper.replication.receiver import ApplyWorker
from vesper.replication.sender import OutboxSender
from vesper.replication.stats import Stats
from vesper.replication.tls import BrokerTls
from vesper.replication.transport import Delivery, Link, LinkFactory
from vesper.store import Store
from vesper.trust.keyring import Keyring
from vesper.trust.keys import NodeKey
from vesper.trust.verifier import Verifier

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 10.0
TICK_S = 0.5
SETTLE_S = 0.5
"""After connecting, how long a starting node listens for its peers' answers to its
hello before it takes local writes (they answer at once; this covers a busy machine).
It stops listening sooner once every origin of its store has answered."""
MAX_CLAIMS = 20
"""Other keys claiming this node's branch kept for the status (the newest)."""
QUIET_S = 1.0
"""With no peer's announcement at all, how long a starting node waits before it takes
writes (it may be alone on the channel)."""
CLIENT_ID_LIVE_S = 15.0
"""A broker refusing this node's client-id this long means another live process holds it
(after a kill -9 the broker frees it within a few heart-beats)."""
START_CHECK_S = 10.0
"""How long ``wait_started`` waits for a broker before the node takes writes anyway."""


def routes(branch_id: str, channels: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Subscription id -> (what arrives on it, channel): a MESSAGE's ``subscription``
    header tells the apply worker where it came from."""
    out: dict[str, tuple[str, str]] = {}
    for channel in channels:
        out[f"vesper-{channel}-{branch_id}"] = (wire.CHANGESETS, channel)
        out[f"vesper-sync-{channel}-{branch_id}"] = (wire.ANNOUNCE, channel)
        out[f"vesper-queue-{channel}-{branch_id}"] = (wire.REQUEST, channel)
    return out


@dataclass(frozen=True)
class ReplicationConfig:
    branch_id: str
    hosts: tuple[tuple[str, int], ...]
    channels: tuple[str, ...]
    send_ack: bool = True
    broker: str | None = None
    queue_type: str = "classic"
    """RabbitMQ's type for the durable queues (``replication_queue_type``)."""
    login: str | None = None
    passcode: str | None = None
    heartbeat_ms: int = 1000
    message_ttl_s: int = 0
    """How long a changeset message may wait on the broker (0: forever)."""
    key: NodeKey | None = None
    """Signs this node's changesets and control messages (required: a node that got a
    new key at every start would be refused by the peers that pinned its first one)."""
    trusted_keys: dict[str, tuple[str, ...]] | None = None
    peer_expiry_s: float = 7 * 24 * 3600.0
    peer_gone_after_s: float = 60.0
    """A peer not heard from for this long is shown as gone."""
    ready_timeout_s: float = 60.0
    """Disconnected from every broker, or stuck, this long: not ready (``/ready``)."""
    tls_hosts: frozenset[tuple[str, int]] = frozenset()
    """The brokers of ``hosts`` reached over TLS."""
    tls: BrokerTls = field(default_factory=BrokerTls)
    """Certificates and verification for the ``tls_hosts``."""

    @classmethod
    def from_settings(cls, settings: Any, key: NodeKey | None = None) -> ReplicationConfig:
        hosts = tuple(settings.replication_hosts or ())
        return cls(
            branch_id=settings.branch_id or settings.trunk_id,
            hosts=hosts,
            channels=tuple(settings.channels),
            send_ack=settings.send_stomp_ack,
            broker=settings.replication_broker,
            queue_type=settings.replication_queue_type,
            login=settings.replication_login,
            passcode=settings.replication_passcode,
            heartbeat_ms=settings.replication_heartbeat_ms,
            message_ttl_s=settings.replication_message_ttl,
            key=key,
            trusted_keys=settings.replication_trusted_keys,
            peer_expiry_s=settings.replication_peer_expiry,
            peer_gone_after_s=settings.replication_peer_gone_after,
            ready_timeout_s=settings.replication_ready_timeout,
            tls_hosts=frozenset(h for h in hosts if settings.broker_tls(h)),
            tls=BrokerTls(
                ca_file=settings.replication_tls_ca,
                cert_file=settings.replication_tls_cert,
                key_file=settings.replication_tls_key,
                verify=settings.replication_tls_verify,
            ),
        )


class ReplicationService:
    def __init__(
        self, store: Store, config: ReplicationConfig, links: LinkFactory | None = None
    ) -> None:
        if not store.save_history:
            raise ValueError("replication needs save_history = True")
        if not config.hosts or not config.channels:
            raise ValueError("replication needs replication_hosts and a channel")
        if config.tls_hosts:
            config.tls.check()
            if not config.tls.verify:
                log.warning(
                    "replication_tls_verify is False: broker certificates are not checked, "
                    "so anyone on the network path can pose as the broker"
                )
        self.store = store
        self.config = config
        self.stats = Stats()
        self._link: Link | None = None
        self._make_link = links or self._stomp_link
        self._generation = 0
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._next_host = 0
        self.profile: BrokerProfile | None = None
        if config.key is None:
            raise ValueError("replication needs the node's key (ReplicationConfig.key)")
        self.key = config.key
        listed = (config.trusted_keys or {}).get(config.branch_id)
        if listed and self.key.public not in listed:
            raise ConfigError(
                f"replication_trusted_keys lists {', '.join(listed)} for this node's branch "
                f"{config.branch_id!r}, not this node's key {self.key.public}: another node "
                "has this branch id, or this is not this node's key file"
            )
        self.keyring = Keyring(store.db, config.branch_id, self.key.public, config.trusted_keys)
        self.keyring.on_own_branch_claimed = self._own_branch_claimed
        self.fatal: str | None = None
        """Set when this node must not run: its branch id is live under another key."""
        self.claims: dict[str, str] = {}
        """Other keys seen signing for this node's branch id -> when (ISO time)."""
        self._connected_at: float | None = None
        self._start_mark: tuple[float, int] | None = None
        """(connection time, deliveries handed to the worker by the end of the
        listening) for the start check."""
        self._client_id_taken_since: float | None = None
        self._started = threading.Event()
        self._log_limit = LogLimit()
        stomplog.install()
        self._disconnected_since: float | None = time.monotonic()
        """Monotonic time replication lost (or, from the start, has not had) a broker."""
        self._disconnected_at: str | None = _iso_now()
        self._connected_at_wall: str | None = None
        self.last_error: str | None = None
        """Why the last attempt to reach a broker, or the last connection, failed."""
        self._pending_drain = Drain()
        # Catch-up runs on every channel: a hub answers the nodes of each of them.
        self.anti_entropy = {
            channel: AntiEntropy(
                store,
                config.branch_id,
                channel,
                self.stats,
                self._send,
                self.key,
                self.keyring,
                config.peer_expiry_s,
                config.peer_gone_after_s,
            )
            for channel in config.channels
        }
        for anti_entropy in self.anti_entropy.values():
            anti_entropy.on_refused = self._refused_by_peer
        self._routes = routes(config.branch_id, config.channels)
        self.sender = OutboxSender(
            store,
            config.channels,
            config.branch_id,
            self.stats,
            self.current_link,
            self.key,
            self._expiry_headers,
        )
        verifier = Verifier(self.keyring)
        self.worker = ApplyWorker(
            store,
            config.branch_id,
            self.stats,
            self.anti_entropy,
            self._routes,
            config.send_ack,
            self.current_link,
            verifier,
            Quarantine(store.db),
            parts.PartStore(store.db, verifier),
            self.relay if len(config.channels) > 1 else None,
        )
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        queued = self.store.queue_unsigned_own()
        if queued:
            log.info(
                "signing and publishing %d changesets of this node written before changesets "
                "were signed; peers keep the signatures for their copies",
                queued,
            )
        self.store.add_commit_listener(self.sender.committed)
        self.worker.start()
        self.sender.start()
        self._thread = threading.Thread(
            target=self._supervise, name="vesper-replication", daemon=True
        )
        self._thread.start()

    def wait_started(self, timeout: float = START_CHECK_S) -> None:
        """Block until this node may take local writes: connected, its peers heard, and
        every changeset of its own that a peer holds re-imported (a store restored from
        an older copy, or in memory, must not reuse a changeset id). Raises ConfigError
        if its branch id is live on the channel under another key. Without a broker
        within ``timeout`` it goes on with a warning: it cannot check, and an offline
        node must still serve."""
        deadline = time.monotonic() + timeout
        starting = "starting: checking this node's own history with its peers"
        self.store.refuse_writes(starting)
        try:
            while not self._stop.is_set():
                taken = self._client_id_taken_since
                if taken is not None and time.monotonic() - taken >= CLIENT_ID_LIVE_S:
                    # A killed process's connection is released within a few heart-beats;
                    # one held this long belongs to a live process with this branch id.
                    self.fatal = (
                        f"branch_id {self.config.branch_id!r} is in use: the broker has "
                        f"refused this node's client-id for {CLIENT_ID_LIVE_S:.0f} s because "
                        "another process is connected with it (this node's key is "
                        f"{self.key.public}). Give this node a branch_id of its own, or stop "
                        "the other process"
                    )
                if self.fatal is not None:
                    raise ConfigError(self.fatal)
                if self._own_history_checked():
                    return
                if time.monotonic() > deadline and taken is None:
                    refusing = {b for ae in self.anti_entropy.values() for b in ae.refusing()}
                    if self.claims or refusing:
                        log.error(
                            "branch %s looks taken: %s. Taking writes anyway (any broker "
                            "client could claim this); peers that know another key for it "
                            "will refuse them. Give this node a branch_id of its own",
                            self.config.branch_id,
                            "; ".join(
                                [f"another key signs for it: {k}" for k in self.claims]
                                + [f"peer {b} refuses this node's key" for b in sorted(refusing)]
                            ),
                        )
                    else:
                        log.warning(
                            "could not check this node's own history with its peers "
                            "within %.0f s (no broker or no answer); taking writes anyway",
                            timeout,
                        )
                    return
                self._stop.wait(0.02)
        finally:
            if self.fatal is None:
                if self.store.writes_refused == starting:
                    self.store.refuse_writes(None)
                self._started.set()

    def _own_history_checked(self) -> bool:
        """Connected, the peers' answers to the hello processed (or none came), and none
        of them holds more of this node's branch than it has."""
        connected_at = self._connected_at
        if connected_at is None:
            return False
        waited = time.monotonic() - connected_at
        heard = any(ae.heard_since(connected_at) for ae in self.anti_entropy.values())
        if (waited < SETTLE_S and not self._origins_answered(connected_at)) or (
            not heard and waited < QUIET_S
        ):
            return False
        # Whatever was queued by the end of the listening (a flood, say) is processed
        # first, so the answers behind it are not missed; what keeps arriving after it
        # (a catch-up streaming in for minutes) does not hold the start up.
        if self._start_mark is None or self._start_mark[0] != connected_at:
            self._start_mark = connected_at, self.worker.received
        if not self.worker.handled_through(self._start_mark[1]):
            return False
        own = self.store.own_head()[0]
        return all(ae.own_elsewhere <= own for ae in self.anti_entropy.values())

    def _origins_answered(self, since: float) -> bool:
        """Whether every other origin of the store announced itself after ``since``.
        The nodes that wrote what this store holds are the ones that hold its own
        changesets too, so once they have all answered, listening on for the rest of
        SETTLE_S would only delay a restart. Their announcements are signed: a broker
        client cannot answer for them. A node without such origins (a new one, or one
        whose writers sit behind a hub) listens for all of SETTLE_S."""
        origins = self.store.version_vector.keys() - {self.config.branch_id}
        return bool(origins) and all(
            any(ae.heard_from(origin, since) for ae in self.anti_entropy.values())
            for origin in origins
        )

    def _check_refusals(self) -> None:
        """Peers refuse this node's key for its branch: with configured trusted keys
        their word is authenticated, so local writes stop (they would never reach
        anyone). Under trust on first use any broker client can claim it, so it is
        reported in the status and the log, never obeyed."""
        if self.keyring.trust_on_first_use:
            return
        refusing = sorted({b for ae in self.anti_entropy.values() for b in ae.refusing()})
        held = self.store.writes_refused
        if refusing and held is None:
            self.store.refuse_writes(
                f"peers {', '.join(refusing)} refuse this node's key for branch "
                f"{self.config.branch_id}: another node runs with this branch id, or this "
                "node lost its key. Give it a new branch_id, or its old key back"
            )
        elif not refusing and held is not None and held.startswith("peers "):
            log.info("no peer refuses this node's key any more: taking writes again")
            self.store.refuse_writes(None)

    def _refused_by_peer(self, peer: str) -> None:
        if self._log_limit.allow("refused"):
            log.error(
                "peer %s refuses this node's key %s for branch %s: its branch id is taken "
                "by another node, this node lost its key, or the peer does not list it in "
                "replication_trusted_keys (docs/security.md)",
                peer,
                self.key.public,
                self.config.branch_id,
            )

    def _own_branch_claimed(self, key: str) -> None:
        """Something validly signed claims this node's branch under another key."""
        if key not in self.claims and self._log_limit.allow("claim"):
            log.error(
                "a message signed by %s claims this node's branch %s (this node's key is "
                "%s): another node runs with this branch id, or an impostor; not obeyed",
                key,
                self.config.branch_id,
                self.key.public,
            )
        self.claims[key] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        while len(self.claims) > MAX_CLAIMS:
            del self.claims[next(iter(self.claims))]  # the oldest

    def stop(self) -> None:
        self._stop.set()
        self._lost.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sender.stop()
        self.worker.stop()
        link = self._link
        self._link = None
        if link is not None:
            link.close()

    close = stop

    def current_link(self) -> Link | None:
        return self._link

    def _expiry_headers(self) -> dict[str, str]:
        """What makes a changeset message expire on the broker connected now."""
        ttl, profile = self.config.message_ttl_s, self.profile
        return profile.expiry_headers(ttl) if ttl and profile is not None else {}

    def _send(self, destination: str, body: bytes, headers: dict[str, str]) -> None:
        link = self._link
        if link is None or not link.connected:
            return
        frame_bytes = self.profile.max_frame_bytes if self.profile else None
        for piece, piece_headers in parts.split(
            body,
            headers,
            self.config.branch_id,
            self.key,
            frame_bytes=frame_bytes,
            destination=destination,
        ):
            link.send(destination, piece, piece_headers)
            self.stats.messages_sent += 1

    # -- connection ----------------------------------------------------------------

    def _supervise(self) -> None:
        # The one thread that reconnects: if it ended, replication would stop for good
        # while the node kept serving, so nothing it meets may end it.
        while not self._stop.is_set():
            try:
                self._supervise_rounds()
            except Exception:
                log.exception("replication supervisor failed; starting it again")
                self._stop.wait(1.0)

    def _supervise_rounds(self) -> None:
        delay = BACKOFF_INITIAL_S
        while not self._stop.is_set():
            if self.store.failure is not None:
                self._halt(self.store.failure)
                return
            self._watch()
            if self._link is None or not self._link.connected:
                failures = self._connect_any()
                if not failures:
                    delay = BACKOFF_INITIAL_S
                else:
                    # Jitter spreads reconnects of many nodes after a broker restart.
                    wait = delay * random.uniform(0.5, 1.5)
                    if not self._stop.is_set():
                        self._log_failures(failures, wait)
                    self._stop.wait(wait)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
            self._lost.wait(TICK_S)
            if self._lost.is_set():
                self._lost.clear()
                continue
            try:
                for anti_entropy in self.anti_entropy.values():
                    anti_entropy.tick()
                self._check_refusals()
            except Exception:
                log.exception("anti-entropy tick failed")

    def _halt(self, failure: str) -> None:
        """Stop replicating from a damaged store: send nothing read from it, answer
        no catch-up request with it and acknowledge nothing, so the broker keeps every
        message for the store that replaces this one."""
        log.error(
            "replication stopped: the store is damaged (%s); nothing more is sent, "
            "answered or acknowledged until the node restarts with a sound store",
            failure,
        )
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _log_failures(self, failures: list[str], wait: float) -> None:
        """One line per broker tried, with its reason; the last says when the next
        round starts."""
        for i, failure in enumerate(failures):
            if i < len(failures) - 1:
                log.warning("cannot replicate through %s", failure)
            else:
                log.warning(
                    "cannot replicate through %s; next attempt in %.1f s",
                    failure,
                    wait,
                    extra={"retry_in_s": round(wait, 1)},
                )

    def _connect_any(self) -> list[str]:
        """Connect to the first broker that answers; what went wrong with each one
        tried, as ``host:port: reason`` (empty: connected)."""
        hosts = self.config.hosts
        old = self._link
        self._link = None
        self._mark_disconnected()
        start = self._next_host
        if old is not None:
            old.close()
            start += 1  # a connection was lost: try the brokers after that one first
        failures = []
        for i in range(len(hosts)):
            index = (start + i) % len(hosts)
            if self._stop.is_set():
                break
            problem = self._connect(hosts[index])
            if problem is None:
                self._next_host = index
                return []
            failures.append(f"{hosts[index][0]}:{hosts[index][1]}: {problem}")
        return failures or ["no broker: stopping"]

    def _connect(self, host: tuple[str, int]) -> str | None:
        """Connect and subscribe; None when done, else why not."""
        self._generation += 1
        link = self._make_link(
            host, self._generation, self.worker.deliver, self.sender.receipt, self._on_lost
        )
        stomplog.clear()
        try:
            profile = link.connect()
            for sub_id, (kind, channel) in self._routes.items():
                link.subscribe(kind, channel, sub_id, acked=self.config.send_ack)
        except Exception as exc:
            link.close()
            problem = _reason(exc, stomplog.take_connect_error())
            self.last_error = f"{host[0]}:{host[1]}: {problem}"
            if _client_id_taken(str(exc)) and self._client_id_taken_since is None:
                self._client_id_taken_since = time.monotonic()
            return problem
        self._client_id_taken_since = None
        self.profile = profile
        self.sender.frame_bytes = profile.max_frame_bytes
        self._link = link
        self._connected_at = time.monotonic()
        self._disconnected_since = self._disconnected_at = None
        self._connected_at_wall = _iso_now()
        log.info(
            "replicating through %s (%s) on %s",
            link.address,
            profile.server or profile.name,
            ", ".join(self.config.channels),
        )
        try:
            for anti_entropy in self.anti_entropy.values():
                anti_entropy.on_connected()
        except Exception:
            # The first announcement failed (the connection broke at once, or a bug):
            # the connection is kept if it still stands, the announcement goes out
            # with the next tick, and a lost connection is noticed as any other.
            log.warning("announcing after connecting failed", exc_info=True)
        self.sender.wake()
        return None

    def _stomp_link(
        self,
        host: tuple[str, int],
        generation: int,
        on_message: Callable[[Delivery], None],
        on_receipt: Callable[[str], None],
        on_lost: Callable[[Link], None],
    ) -> Link:
        return StompLink(
            host,
            self.config.branch_id,
            generation=generation,
            login=self.config.login,
            passcode=self.config.passcode,
            heartbeat_ms=self.config.heartbeat_ms,
            broker=self.config.broker,
            queue_type=self.config.queue_type,
            tls=self.config.tls if host in self.config.tls_hosts else None,
            on_message=on_message,
            on_receipt=on_receipt,
            on_lost=on_lost,
        )

    def relay(self, changesets: list[Changeset], source: str | None) -> None:
        """A hub republishes changesets it applied for the first time on its other
        channels, unchanged and under their origin's ``clientid``. Each node applies a
        changeset once, so nothing loops; a lost relay is repaired by catch-up, since
        the hub announces the relayed changesets on every channel."""
        by_origin: dict[str, list[bytes]] = {}
        for origin, run in _runs(changesets).items():
            if run:
                by_origin[origin] = [cs.encode() for cs in run]
        for channel in self.config.channels:
            if channel == source:
                continue
            for origin, bodies in by_origin.items():
                headers = wire.changeset_headers(origin, self._expiry_headers())
                self._send(wire.topic(channel), b"[" + b",".join(bodies) + b"]", headers)

    def _on_lost(self, link: Link) -> None:
        if link is self._link:
            reason = link.error or "disconnected"
            log.warning("lost connection to broker %s: %s", link.address, reason)
            self.last_error = f"{link.address}: {reason}"
            self._mark_disconnected()
            self._lost.set()

    def _mark_disconnected(self) -> None:
        if self._disconnected_since is None:
            self._disconnected_since = time.monotonic()
            self._disconnected_at = _iso_now()

    # -- readiness -----------------------------------------------------------------

    def _watch(self) -> None:
        """Supervisor loop, every round: sample what readiness follows, and write what
        the log limits held back."""
        self._pending_drain.observe(self.store.pending_count, time.monotonic())
        self.worker.flush_logs()

    def ready_problems(self) -> list[str]:
        """Why replication makes this node unfit for traffic (``GET /ready``): no broker
        for longer than ``ready_timeout_s``, an apply that does not finish, or changesets
        pending for a predecessor for that long. Empty when none."""
        now = time.monotonic()
        timeout = self.config.ready_timeout_s
        problems = []
        since = self._disconnected_since
        if since is not None and now - since >= timeout:
            problems.append(
                f"replication disconnected from every broker for {now - since:.0f} s "
                f"(replication_ready_timeout = {timeout:g}): {self.last_error or 'no broker'}"
            )
        stalled = self.worker.stalled_s()
        if stalled >= timeout:
            problems.append(
                "replication stuck: the apply worker "
                + (
                    "stopped"
                    if stalled == float("inf")
                    else f"has run one batch for {stalled:.0f} s"
                )
                + f", {self.worker.backlog} messages waiting"
            )
        pending = self.store.pending_count
        self._pending_drain.observe(pending, now)
        blocked = self._pending_drain.blocked_s(now)
        if blocked >= timeout:
            problems.append(
                f"replication stuck: {pending} changesets pending for {blocked:.0f} s, waiting "
                "for predecessors no peer has sent (pending_detail in /api/status)"
            )
        return problems

    # -- status --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        link = self._link
        s = self.stats
        connected = link is not None and link.connected
        out: dict[str, Any] = {
            "enabled": True,
            "connected": link.address if connected and link is not None else None,
            "channel": self.config.channels[0],
            "channels": list(self.config.channels),
            "broker": self.profile.server if self.profile else None,
            "broker_kind": self.profile.name if self.profile else None,
            "send_stomp_ack": self.config.send_ack,
            "messages_sent": s.messages_sent,
            "messages_received": s.messages_received,
            "changesets_sent": s.changesets_sent,
            "changesets_received": s.changesets_received,
            "send_errors": s.send_errors,
            "receive_errors": s.receive_errors,
            "outbox": self.store.outbox_count,
            "pending": self.store.pending_count,
            "last_message_received": s.last_message_received,
            "apply_backlog": self.worker.backlog,
            "announcements_dropped": self.worker.announcements_dropped,
            "catchup_requests_sent": s.catchup_requests_sent,
            "catchup_requests_answered": s.catchup_requests_answered,
            "catchup_changesets_received": s.catchup_changesets_received,
            "public_key": self.key.public,
            "trust": "trust on first use" if self.keyring.trust_on_first_use else "configured",
            "forks": s.forks,
            "quarantined": dict(sorted(self.worker.quarantine.counts.items())),
            "quarantine_held": self.worker.quarantine.held,
            "parts_held": dict(zip(("sets", "bytes"), self.worker.parts.held, strict=True)),
            "branch_claims": dict(self.claims),
            "refused_by": sorted({b for ae in self.anti_entropy.values() for b in ae.refusing()}),
            "connected_since": self._connected_at_wall if connected else None,
            "disconnected_since": None if connected else self._disconnected_at,
            "last_error": self.last_error,
            "conflicts": self.worker.conflicts,
            "problems": self.ready_problems(),
        }
        peers: dict[str, Any] = {}
        catchup = None
        answering: dict[str, Any] = {}
        for channel, anti_entropy in self.anti_entropy.items():
            part = anti_entropy.status()
            for branch, info in part["peers"].items():
                peers.setdefault(branch, {**info, "channel": channel})
            catchup = catchup or part["catchup"]
            answering.update(part["answering"])
        out.update(
            peers=peers,
            catchup=catchup,
            answering=answering,
            pending_detail=self._pending_detail(peers),
        )
        return out

    def _pending_detail(self, peers: dict[str, Any]) -> list[dict[str, Any]]:
        """Each origin's waiting changesets with what they miss and which peers
        announced having it (none: catch-up cannot fetch it yet)."""
        vectors = {b: parse_revision(p["revision"]) for b, p in peers.items()}
        detail = self.store.pending_explained()
        for entry in detail:
            entry["announced_by"] = sorted(
                b
                for b, vector in vectors.items()
                if all(
                    vector.get(origin, 0) >= int(counter)
                    for origin, _, counter in (m.rpartition(".") for m in entry["missing"])
                )
            )[:10]
        return detail


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _reason(exc: Exception, stomp_reason: str | None) -> str:
    """What went wrong connecting: stomp.py raises ConnectFailedException without a
    word, and said why in its own (demoted) log line."""
    text = str(exc)
    if stomp_reason and text.startswith("ConnectFailedException"):
        return stomp_reason
    return text or type(exc).__name__


def _client_id_taken(error: str) -> bool:
    """The broker refused the CONNECT because another connection holds the client-id
    (the embedded broker: "... is in use"; ActiveMQ: "... already connected")."""
    lowered = error.lower()
    return "client" in lowered and ("in use" in lowered or "already connected" in lowered)


def _runs(changesets: list[Changeset]) -> dict[str, list[Changeset]]:
    """Each origin's changesets that a message can carry: those signed, and those that
    the next one chains onto, up to a signed one. An unsigned tail (its signature is
    on a changeset still pending here) is left out rather than sent to be refused as
    unsigned: the receivers fetch it by catch-up, from this hub's announcements."""
    by_origin: dict[str, list[Changeset]] = {}
    for cs in changesets:
        by_origin.setdefault(cs.origin, []).append(cs)
    out: dict[str, list[Changeset]] = {}
    for origin, run in by_origin.items():
        keep: list[Changeset] = []
        covered = False
        for i in range(len(run) - 1, -1, -1):
            cs = run[i]
            follows = i + 1 < len(run) and run[i + 1].counter == cs.counter + 1
            # Format 1 has neither chain nor signature: relayed as it always was.
            legacy = cs.prev is None and not cs.signed
            chained = follows and run[i + 1].prev == cs.hash
            covered = cs.signed or legacy or (covered and chained)
            if covered:
                keep.append(cs)
        out[origin] = keep[::-1]
    return out
