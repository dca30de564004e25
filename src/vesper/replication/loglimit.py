"""Rate limits for log lines that a peer, or anyone on the broker, can cause at will.

A flood of forged messages, of conflicting writes or of invented peers must not flood
the log: every event is still counted (status, metrics, quarantine), but only so many
lines per reason and window are written, then one line saying how many were not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

Summary = Callable[[int, str, float], str]
"""(lines not logged, reason, seconds of the window) -> the line that says so."""


def _rejected(count: int, reason: str, seconds: float) -> str:
    return (
        f"{count} more messages rejected ({reason}) in the last {seconds:.0f} s; "
        "see GET /api/quarantine"
    )


class LogLimit:
    """At most ``per_window`` log lines per reason and window.

    ``allow(reason)`` says whether to log one more line. The line for what was held
    back comes with the first event after the window, or from ``flush()``, which the
    replication service calls every tick so it is never held back for long.
    """

    def __init__(
        self,
        per_window: int = 10,
        window_s: float = 60.0,
        summary: Summary = _rejected,
        logger: logging.Logger | None = None,
        level: int = logging.WARNING,
    ) -> None:
        self._per_window = per_window
        self._window_s = window_s
        self._summary = summary
        self._log = logger or logging.getLogger("vesper.replication.receiver")
        self._level = level
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, reason: str) -> bool:
        now = time.monotonic()
        with self._lock:
            start, count = self._windows.get(reason, (now, 0))
            if now - start >= self._window_s:
                self._report(reason, start, count, now)
                start, count = now, 0
            self._windows[reason] = (start, count + 1)
        return count < self._per_window

    def flush(self) -> None:
        """Log what windows that have ended held back, and forget those windows."""
        now = time.monotonic()
        with self._lock:
            for reason, (start, count) in list(self._windows.items()):
                if now - start >= self._window_s:
                    self._report(reason, start, count, now)
                    del self._windows[reason]

    def _report(self, reason: str, start: float, count: int, now: float) -> None:
        if count > self._per_window:
            self._log.log(
                self._level,
                self._summary(count - self._per_window, reason, now - start),
                extra={"reason": reason, "suppressed": count - self._per_window},
            )
