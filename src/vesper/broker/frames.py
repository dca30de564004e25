"""STOMP frames: a buffer-based incremental parser and the serializer.

The parser finds frame boundaries with ``bytes.find`` on one growing buffer and keeps
the state of a half-received frame, so a frame split across reads is never re-parsed
(coilmq's failure under pipelined load, see docs/broker.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vesper.broker.errors import ProtocolError

CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
#: CONNECT and CONNECTED are never escaped, whatever the version (STOMP 1.2, "Value Encoding").
_UNESCAPED_COMMANDS = frozenset({"CONNECT", "STOMP"})

_UNESCAPES = {"\\n": "\n", "\\c": ":", "\\\\": "\\", "\\r": "\r"}
_UNESCAPE_RE = re.compile(r"\\.")
_ESCAPE_11 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c"})
_ESCAPE_12 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c", "\r": "\\r"})


class Frame:
    """One parsed frame. Repeated headers keep their first value (STOMP 1.2)."""

    __slots__ = ("body", "command", "headers")

    def __init__(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        self.command = command
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Frame({self.command!r}, {self.headers!r}, {len(self.body)} bytes)"


def _unescape_match(m: re.Match[str]) -> str:
    # Kept verbatim rather than fatal: stomp.py sends header values unescaped, so a
    # backslash in a value is common and must not cost the client its connection.
    return _UNESCAPES.get(m.group(0), m.group(0))


def unescape(value: str) -> str:
    """Decode STOMP 1.1/1.2 header escapes (``\\n``, ``\\c``, ``\\\\``, ``\\r``)."""
    return _UNESCAPE_RE.sub(_unescape_match, value) if "\\" in value else value


def escape(value: str, version: str) -> str:
    """Encode a header key or value for a frame sent to a client of ``version``."""
    if version == "1.2":
        return value.translate(_ESCAPE_12)
    if version == "1.1":
        return value.translate(_ESCAPE_11)
    return value


def encode_frame(
    command: str,
    headers: Iterable[tuple[str, str]],
    body: bytes = b"",
    version: str = "1.2",
) -> bytes:
    """Serialize one frame; adds ``content-length`` when there is a body."""
    if command == "CONNECTED":
        version = "1.0"
    lines = [command]
    lines.extend(f"{escape(k, version)}:{escape(v, version)}" for k, v in headers)
    if body:
        lines.append(f"content-length:{len(body)}")
    return ("\n".join(lines) + "\n\n").encode() + body + b"\x00"


class FrameParser:
    """Turns a byte stream into frames; heart-beat EOLs between frames are skipped.

    After an error the parser is unusable: the connection must send ERROR and close.
    """

    def __init__(self, max_frame_bytes: int, max_header_bytes: int, max_headers: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_header_bytes = min(max_header_bytes, max_frame_bytes)
        self.max_headers = max_headers
        #: Negotiated protocol version; decides whether header values are unescaped.
        self.version = "1.0"
        self._buf = bytearray()
        # A frame whose headers are parsed but whose body has not fully arrived:
        # (command, headers, body_start, content_length or -1, next NUL search offset).
        self._pending: tuple[str, dict[str, str], int, int, int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held until the rest arrives."""
        return len(self._buf)

    def discard(self) -> None:
        """Drop what is buffered (the connection is closing)."""
        self._buf = bytearray()
        self._pending = None

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they complete.

        Raises ProtocolError for a malformed frame; frames completed before it are in
        the exception's ``frames`` attribute.
        """
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        n = len(buf)
        try:
            while pos < n:
                pending = self._pending
                if pending is None:
                    c = buf[pos]
                    if c == 10:  # heart-beat or the optional EOL after a frame
                        pos += 1
                        continue
                    if c == 13:
                        if pos + 1 >= n:
                            break
                        if buf[pos + 1] != 10:
                            raise ProtocolError("malformed frame", "CR not followed by LF")
                        pos += 2
                        continue
                    pending = self._parse_head(buf, pos, n)
                    if pending is None:
                        break
                command, headers, body_start, length, scan = pending
                if length >= 0:
                    end = body_start + length
                    if end >= n:
                        self._pending = pending
                        break
                    if buf[end] != 0:
                        raise ProtocolError(
                            "malformed frame",
                            f"{command} frame body is not terminated by NUL after"
                            f" content-length {length}",
                        )
                else:
                    end = buf.find(b"\x00", scan)
                    if end < 0:
                        if n - pos > self.max_frame_bytes:
                            raise ProtocolError(
                                "frame too large",
                                f"{command} frame exceeds {self.max_frame_bytes} bytes",
                            )
                        self._pending = (command, headers, body_start, -1, n)
                        break
                self._pending = None
                frames.append(Frame(command, headers, bytes(buf[body_start:end])))
                pos = end + 1
        except ProtocolError as exc:
            exc.frames = frames  # type: ignore[attr-defined]
            raise
        if pos:
            del buf[:pos]  # bytearray drops a prefix in O(1)
            if self._pending is not None:
                c, h, body_start, length, scan = self._pending
                self._pending = (c, h, body_start - pos, length, scan - pos)
        return frames

    def _parse_head(
        self, buf: bytearray, pos: int, n: int
    ) -> tuple[str, dict[str, str], int, int, int] | None:
        """Parse command and headers at ``pos``; None when they are not complete yet."""
        limit = min(n, pos + self.max_header_bytes + 4)
        end = buf.find(b"\n\n", pos, limit)
        # Only look for the CRLF form inside the header section, never across bodies.
        crlf = buf.find(b"\n\r\n", pos, end if end >= 0 else limit)
        if crlf >= 0:
            end, body_start = crlf, crlf + 3
        elif end >= 0:
            body_start = end + 2
        else:
            if n - pos > self.max_header_bytes:
                raise ProtocolError(
                    "frame too large", f"header section exceeds {self.max_header_bytes} bytes"
                )
            return None
        try:
            text = buf[pos:end].decode()
        except UnicodeDecodeError:
            raise ProtocolError("malformed frame", "headers are not valid UTF-8") from None
        lines = text.split("\n")
        command = lines[0].rstrip("\r")
        if command not in CLIENT_COMMANDS:
            raise ProtocolError("unknown command", f"unknown command {command[:64]!r}")
        if len(lines) > self.max_headers + 1:
            raise ProtocolError("too many headers", f"more than {self.max_headers} headers")
        decode = self.version != "1.0" and command not in _UNESCAPED_COMMANDS
        if "\r" not in text and "\n:" not in text and not (decode and "\\" in text):
            # Fast path: no CR, no empty key, nothing to unescape. Built from the
            # last line back, so a repeated header keeps its first value.
            try:
                headers = dict([line.split(":", 1) for line in lines[:0:-1]])
            except ValueError:
                headers = self._slow_headers(lines, decode)  # raises the precise error
        else:
            headers = self._slow_headers(lines, decode)
        length = -1
        cl = headers.get("content-length")
        if cl is not None:
            cl = cl.strip()
            if not (cl.isascii() and cl.isdigit()):
                raise ProtocolError("malformed frame", f"bad content-length {cl[:32]!r}")
            length = int(cl)
            if body_start - pos + length + 1 > self.max_frame_bytes:
                raise ProtocolError(
                    "frame too large",
                    f"{command} frame of {length} body bytes exceeds {self.max_frame_bytes}",
                )
        return command, headers, body_start, length, body_start

    @staticmethod
    def _slow_headers(lines: list[str], decode: bool) -> dict[str, str]:
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if not sep or not key:
                raise ProtocolError("malformed frame", f"bad header line {line[:64]!r}")
            if value.endswith("\r"):
                value = value[:-1]
            if decode:
                key = unescape(key)
                value = unescape(value)
            if key not in headers:
                headers[key] = value
        return headers
