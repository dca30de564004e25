"""stomp.py's own log lines, folded into the replication service's.

stomp.py warns on every failed connection attempt ("could not connect to host ...")
and then raises ConnectFailedException with no message, so each retry logged two
lines: stomp.py's with the reason, and the service's with an empty one. Its warnings
say nothing the service does not say itself (a failed connection, a lost one), so they
are demoted to DEBUG, and the reason of a failed attempt is kept for the thread that
made it: the service puts it in its own one line per retry.
"""

from __future__ import annotations

import logging
import threading

STOMP_LOGGER = "stomp.py"

_local = threading.local()


class _Demote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.msg == "could not connect to host %s, port %s: %s" and record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            _local.connect_error = str(args[-1])
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(STOMP_LOGGER).isEnabledFor(logging.DEBUG)


def install() -> None:
    """Demote stomp.py's warnings (idempotent)."""
    logger = logging.getLogger(STOMP_LOGGER)
    if not any(isinstance(f, _Demote) for f in logger.filters):
        logger.addFilter(_Demote())


def take_connect_error() -> str | None:
    """Why stomp.py's last connection attempt on this thread failed, once."""
    reason = getattr(_local, "connect_error", None)
    _local.connect_error = None
    return reason


def clear() -> None:
    _local.connect_error = None
