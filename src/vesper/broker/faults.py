"""Fault injection: drop, duplicate or delay MESSAGE deliveries, or pause them all.

The replication tests use this to prove that Vesper recovers from a lossy broker.
A dropped delivery counts as consumed (it is never redelivered, even to a durable
subscriber); a duplicate is a second delivery that needs its own ACK; a delayed one
stays in flight until it is written.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable

from vesper.broker.errors import BrokerConfigError


@dataclasses.dataclass(frozen=True)
class FaultSettings:
    """Fault injection in force; all fractions are probabilities per MESSAGE delivery."""

    drop: float = 0.0
    """Fraction of deliveries silently discarded (and treated as acknowledged)."""
    duplicate: float = 0.0
    """Fraction of deliveries sent twice."""
    delay: float = 0.0
    """Fraction of deliveries held back ``delay_ms`` before being written."""
    delay_ms: int = 0
    """How long a delayed delivery waits."""
    paused: bool = False
    """True stops every MESSAGE delivery until resumed; messages wait in the broker."""
    seed: int | None = None
    """Seed of the random choices, for repeatable runs; None seeds from the OS."""

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "delay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise BrokerConfigError(f"fault fraction {name}={value!r} must be within 0..1")
        if self.delay_ms < 0:
            raise BrokerConfigError(f"delay_ms must be >= 0, got {self.delay_ms}")


class Faults:
    """Run-time fault switches, safe to change from any thread."""

    def __init__(self, settings: FaultSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = settings or FaultSettings()
        self._rng = random.Random(self._settings.seed)
        self._wake: Callable[[], None] | None = None
        self._refresh()

    def _refresh(self) -> None:
        s = self._settings
        # Hot-path copies: the delivery loop reads these plain attributes.
        self.active = bool(s.drop or s.duplicate or (s.delay and s.delay_ms))
        self.paused = s.paused

    @property
    def settings(self) -> FaultSettings:
        """The settings now in force."""
        return self._settings

    def bind(self, wake: Callable[[], None]) -> None:
        """Called by the broker: ``wake`` restarts deliveries after a resume."""
        self._wake = wake

    def set(
        self,
        *,
        drop: float | None = None,
        duplicate: float | None = None,
        delay: float | None = None,
        delay_ms: int | None = None,
        paused: bool | None = None,
    ) -> None:
        """Change the given settings, keep the others."""
        changes = {
            k: v
            for k, v in {
                "drop": drop,
                "duplicate": duplicate,
                "delay": delay,
                "delay_ms": delay_ms,
                "paused": paused,
            }.items()
            if v is not None
        }
        with self._lock:
            self._settings = dataclasses.replace(self._settings, **changes)
            self._refresh()
        self._kick()

    def reset(self) -> None:
        """Turn every fault off and resume delivery."""
        with self._lock:
            self._settings = FaultSettings(seed=self._settings.seed)
            self._refresh()
        self._kick()

    def pause(self) -> None:
        """Stop all MESSAGE deliveries; messages stay in the broker."""
        self.set(paused=True)

    def resume(self) -> None:
        """Restart deliveries stopped by :meth:`pause`."""
        self.set(paused=False)

    def _kick(self) -> None:
        if self._wake is not None and not self.paused:
            self._wake()

    def decide(self) -> tuple[int, float]:
        """For one delivery: how many copies to write (0-2) and the delay in seconds."""
        s = self._settings
        rng = self._rng
        if s.drop and rng.random() < s.drop:
            return 0, 0.0
        copies = 2 if s.duplicate and rng.random() < s.duplicate else 1
        delay = s.delay_ms / 1000.0 if s.delay and rng.random() < s.delay else 0.0
        return copies, delay
