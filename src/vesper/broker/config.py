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
    users_file: Path | None = None
    """File of ``login:passcode`` lines; None accepts any CONNECT."""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """Largest frame accepted (headers plus body); bigger ones get ERROR and a close."""
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    """Largest header section (command plus headers) of one frame."""
    max_headers: int = DEFAULT_MAX_HEADERS
    """Most header lines in one frame."""
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    """Undelivered bytes one subscription or queue keeps in memory. Beyond it, with
    ``data_dir`` queues and durable subscriptions keep the rest on disk only; otherwise
    the publishers sending to it are paused until it drains to half."""
    default_prefetch: int = DEFAULT_PREFETCH
    """In-flight unacknowledged messages per subscription when SUBSCRIBE has no
    ``activemq.prefetchSize`` / ``prefetch-count``; 0 means unbounded."""
    max_unwritten_bytes: int = DEFAULT_MAX_UNWRITTEN_BYTES
    """Bytes queued for the SQLite writer before publishers are paused."""
    control: bool = False
    """Accept fault-injection requests on ``/vesper-control/faults``."""
    faults: FaultSettings = dataclasses.field(default_factory=FaultSettings)
    """Fault injection in force at start."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise BrokerConfigError(f"port {self.port} is out of range: use 0-65535 (0 = free)")
        for name in ("max_frame_bytes", "max_header_bytes", "max_headers", "max_pending_bytes"):
            if getattr(self, name) <= 0:
                raise BrokerConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.default_prefetch < 0:
            raise BrokerConfigError(
                f"default_prefetch must be >= 0 (0 = unbounded), got {self.default_prefetch}"
            )
        if self.max_unwritten_bytes <= 0:
            raise BrokerConfigError(
                f"max_unwritten_bytes must be positive, got {self.max_unwritten_bytes}"
            )
