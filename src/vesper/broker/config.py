"""Broker settings: one immutable value read at the edges (CLI, fixtures), defaults named here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vesper.broker.errors import BrokerConfigError
from vesper.broker.faults import FaultSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 61613
#: ActiveMQ refuses bodies over 100 MiB, RabbitMQ over 128 MiB; a test broker needs less.
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
#: The header section of one frame (command line plus headers).
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 1000
#: Undelivered bytes one subscription or queue holds in memory before flow control.
DEFAULT_MAX_PENDING_BYTES = 32 * 1024 * 1024
#: Everything clients can make the broker hold: unfinished frames and held messages.
DEFAULT_MAX_MEMORY = 256 * 1024 * 1024
#: SUBSCRIBEs one connection may have open at once (a Vesper node needs three).
DEFAULT_MAX_SUBSCRIPTIONS = 1000
#: A durable subscription nobody has resumed for this long is deleted with its messages.
DEFAULT_DURABLE_EXPIRY_S = 30 * 86400.0
#: Unacknowledged messages in flight per subscription when SUBSCRIBE names no prefetch.
DEFAULT_PREFETCH = 1000
#: Bytes waiting for the SQLite writer before publishers are paused.
DEFAULT_MAX_UNWRITTEN_BYTES = 8 * 1024 * 1024
#: Heart-beats below this are raised to it, so a client cannot make the broker spin.
MIN_HEARTBEAT_MS = 100
#: A client is dropped after this many of its heart-beat intervals pass in silence.
HEARTBEAT_GRACE = 2.0
#: A connection that sends no CONNECT frame within this time is closed.
CONNECT_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    """Everything a :class:`~vesper.broker.server.Broker` needs to run."""

    host: str = DEFAULT_HOST
    """Interface to listen on."""
    port: int = DEFAULT_PORT
    """TCP port; 0 picks a free one (read it back from ``Broker.port``)."""
    data_dir: Path | None = None
    """Folder for the SQLite file holding queues and durable subscriptions; None keeps
    them in memory only (lost when the broker stops)."""
    users: Path | None = None
    """TOML file of users, passcode hashes and permissions (see docs/broker.md); None
    means no logins, which needs ``allow_anonymous``."""
    allow_anonymous: bool = False
    """Accept CONNECTs without ``login``, with every right on every destination. With
    neither this nor ``users`` the broker refuses to start: an open broker must be a
    choice, never a default."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key`` the listener speaks STOMP over TLS."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    tls_ca: Path | None = None
    """PEM authority whose client certificates are required; None asks for none."""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """Largest frame accepted (headers plus body); bigger ones get ERROR and a close."""
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    """Largest header section (command plus headers) of one frame."""
    max_headers: int = DEFAULT_MAX_HEADERS
    """Most header lines in one frame."""
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    """Undelivered bytes one subscription or queue keeps in memory. Beyond it, with
    ``data_dir`` queues and durable subscriptions keep the rest on disk only; a plain
    topic subscription's consumer is disconnected as too slow; a memory-only queue or
    durable subscription pauses the publishers sending to it until it drains to half."""
    default_prefetch: int = DEFAULT_PREFETCH
    """In-flight unacknowledged messages per subscription when SUBSCRIBE has no
    ``activemq.prefetchSize`` / ``prefetch-count``; 0 means unbounded."""
    max_memory: int = DEFAULT_MAX_MEMORY
    """Budget for unfinished frames plus messages held in memory, all connections
    together (see ``memory.MemoryBudget``)."""
    max_subscriptions_per_connection: int = DEFAULT_MAX_SUBSCRIPTIONS
    """SUBSCRIBEs open at once on one connection; one more gets ERROR."""
    durable_expiry: float = DEFAULT_DURABLE_EXPIRY_S
    """Seconds a durable subscription may go without a consumer before it is deleted
    with its messages; 0 keeps them forever."""
    max_unwritten_bytes: int = DEFAULT_MAX_UNWRITTEN_BYTES
    """Bytes queued for the SQLite writer before publishers are paused."""
    control: bool = False
    """Accept fault-injection requests on ``/vesper-control/faults``."""
    faults: FaultSettings = dataclasses.field(default_factory=FaultSettings)
    """Fault injection in force at start."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise BrokerConfigError(f"port {self.port} is out of range: use 0-65535 (0 = free)")
        if self.users is None and not self.allow_anonymous:
            raise BrokerConfigError(
                "no users and no anonymous access: pass --users FILE (make one with"
                " `vesper broker adduser FILE NAME`) or --allow-anonymous"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise BrokerConfigError(
                "--tls-cert and --tls-key go together: give both files, or neither"
            )
        if self.tls_ca is not None and self.tls_cert is None:
            raise BrokerConfigError(
                "--tls-ca checks client certificates of a TLS listener: add --tls-cert"
                " and --tls-key"
            )
        names = (
            "max_frame_bytes",
            "max_header_bytes",
            "max_headers",
            "max_pending_bytes",
            "max_memory",
            "max_subscriptions_per_connection",
        )
        for name in names:
            if getattr(self, name) <= 0:
                raise BrokerConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.default_prefetch < 0:
            raise BrokerConfigError(
                f"default_prefetch must be >= 0 (0 = unbounded), got {self.default_prefetch}"
            )
        if self.max_frame_bytes > self.max_memory:
            raise BrokerConfigError(
                f"max_frame_bytes {self.max_frame_bytes} exceeds max_memory {self.max_memory}:"
                " such a frame could never be accepted; lower --max-frame-bytes or raise"
                " --max-memory"
            )
        if self.durable_expiry < 0:
            raise BrokerConfigError(
                f"durable_expiry must be >= 0 seconds (0 = never), got {self.durable_expiry}"
            )
        if self.max_unwritten_bytes <= 0:
            raise BrokerConfigError(
                f"max_unwritten_bytes must be positive, got {self.max_unwritten_bytes}"
            )
