"""One log format for the node and the broker.

Every line carries the same fields: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
``logger``, ``message``, and the event's own fields (``extra=`` of the logging call).
``text`` writes them on one line for people::

    2026-11-21T23:30:00.123Z INFO vesper.serve: vesper node N1 serving http://... port=8001

``json`` writes one JSON object per line for log collectors. A traceback follows a text
line indented, and is the ``exc`` field of a JSON line.

Libraries keep their own loggers: uvicorn's would appear under ``uvicorn.error`` beside
the node's own lines, so its records are renamed into ``vesper.http``, and its routine
start-up and lifespan lines are demoted to DEBUG (the node says itself when it serves
and when it has stopped). What it says while stopping ("Shutting down", "Waiting for
connections to close") stays at INFO: it tells why a stop takes a while.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

FORMATS = ("text", "json")

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

#: uvicorn's routine lines (format strings), DEBUG once renamed.
UVICORN_ROUTINE = (
    "Started server process",
    "Waiting for application startup",
    "Application startup complete",
    "Uvicorn running on",
    "Waiting for application shutdown",
    "Application shutdown complete",
    "Finished server process",
)

#: uvicorn's loggers and the names their records take.
UVICORN_NAMES = {
    "uvicorn": "vesper.http",
    "uvicorn.error": "vesper.http",
    "uvicorn.asgi": "vesper.http",
    "uvicorn.access": "vesper.http.access",
}


def iso_utc(created: float) -> str:
    """``2026-11-21T23:30:00.123Z`` for a ``time.time()`` value."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[0] != "_"}


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{iso_utc(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        extra = fields_of(record)
        if extra:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            out.setdefault(key, value)  # an extra field never hides a standard one
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    return orjson.dumps(value, default=str).decode()


class Rename(logging.Filter):
    """Gives a library's records a name of ours, and its routine lines (those whose
    format string starts with one of ``routine``) the level DEBUG.

    Attached to the library's own logger, so it sees exactly that logger's records. A
    demoted record is dropped unless DEBUG is enabled for its new name: the logger's
    level was checked before the filter ran, and the root's is never checked for
    records that propagate.
    """

    def __init__(self, name: str, routine: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.new_name = name
        self.routine = routine

    def filter(self, record: logging.LogRecord) -> bool:
        record.name = self.new_name
        if (
            self.routine
            and record.levelno == logging.INFO
            and str(record.msg).startswith(self.routine)
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(self.new_name).isEnabledFor(logging.DEBUG)
        return True


def adopt_uvicorn() -> None:
    """Rename uvicorn's records into ``vesper.http`` (idempotent)."""
    for name, new_name in UVICORN_NAMES.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, Rename)]:
            logger.removeFilter(old)
        # Access lines are what debug level asks for: they keep INFO.
        routine = () if name == "uvicorn.access" else UVICORN_ROUTINE
        logger.addFilter(Rename(new_name, routine))


def configure(level: str | int, fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in ``fmt``, at ``level`` and above."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    adopt_uvicorn()
