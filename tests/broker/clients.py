"""Test clients for the broker: a stomp.py wrapper that records frames, and a raw socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import stomp

from vesper.broker.adduser import add_user

DEFAULT_TIMEOUT_S = 10.0


def wait_until(
    predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT_S, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.005)


class Recorder(stomp.ConnectionListener):
    """Keeps every frame stomp.py hands to its listener."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: list[stomp.utils.Frame] = []
        self.receipts: list[str] = []
        self.errors: list[stomp.utils.Frame] = []
        self.connected_frames: list[stomp.utils.Frame] = []
        self.disconnects = 0
        self.heartbeat_timeouts = 0
        self.on_message_hook: Callable[[stomp.utils.Frame], None] | None = None

    def _add(self, items: list[Any], item: Any) -> None:
        with self.cond:
            items.append(item)
            self.cond.notify_all()

    def on_connected(self, frame: stomp.utils.Frame) -> None:
        self._add(self.connected_frames, frame)

    def on_message(self, frame: stomp.utils.Frame) -> None:
        self._add(self.messages, frame)
        if self.on_message_hook is not None:
            self.on_message_hook(frame)

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        self._add(self.receipts, frame.headers["receipt-id"])

    def on_error(self, frame: stomp.utils.Frame) -> None:
        self._add(self.errors, frame)

    def on_disconnected(self) -> None:
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def on_heartbeat_timeout(self) -> None:
        with self.cond:
            self.heartbeat_timeouts += 1
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            return predicate()


class Client:
    """A stomp.py connection plus its recorder, with waits that have deadlines."""

    def __init__(
        self,
        port: int,
        version: str = "1.2",
        heartbeats: tuple[int, int] = (0, 0),
        host: str = "127.0.0.1",
    ) -> None:
        cls = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}
        kwargs: dict[str, Any] = {"heartbeats": heartbeats} if version != "1.0" else {}
        self.conn = cls[version]([(host, port)], reconnect_attempts_max=1, **kwargs)
        self.version = version
        self.rec = Recorder()
        self.conn.set_listener("recorder", self.rec)

    def connect(self, wait: bool = True, **headers: str) -> Client:
        login = headers.pop("login", None)
        passcode = headers.pop("passcode", None)
        self.conn.connect(login, passcode, wait=wait, headers=headers)
        if wait:  # stomp.py returns before its listeners have seen CONNECTED
            self.rec.wait(lambda: self.rec.connected_frames, DEFAULT_TIMEOUT_S, "CONNECTED")
        return self

    @property
    def messages(self) -> list[stomp.utils.Frame]:
        return self.rec.messages

    def bodies(self) -> list[str]:
        with self.rec.cond:
            return [m.body for m in self.rec.messages]

    def wait_messages(self, n: int, timeout: float = DEFAULT_TIMEOUT_S) -> list[Any]:
        self.rec.wait(lambda: len(self.rec.messages) >= n, timeout, f"{n} messages")
        with self.rec.cond:
            return list(self.rec.messages)

    def wait_receipt(self, receipt: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.rec.wait(lambda: receipt in self.rec.receipts, timeout, f"receipt {receipt}")

    def wait_error(self, timeout: float = DEFAULT_TIMEOUT_S) -> stomp.utils.Frame:
        self.rec.wait(lambda: self.rec.errors, timeout, "an ERROR frame")
        return self.rec.errors[0]

    def wait_disconnected(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.rec.wait(lambda: self.rec.disconnects, timeout, "disconnection")

    def ack(self, frame: stomp.utils.Frame, **kw: Any) -> None:
        if self.version == "1.2":
            self.conn.ack(frame.headers["ack"], **kw)
        elif self.version == "1.1":
            self.conn.ack(frame.headers["message-id"], frame.headers["subscription"], **kw)
        else:
            self.conn.ack(frame.headers["message-id"], **kw)

    def nack(self, frame: stomp.utils.Frame, **kw: Any) -> None:
        if self.version == "1.2":
            self.conn.nack(frame.headers["ack"], **kw)
        else:
            self.conn.nack(frame.headers["message-id"], frame.headers["subscription"], **kw)

    def send_sync(
        self, destination: str, body: str, timeout: float = DEFAULT_TIMEOUT_S, **headers: str
    ) -> None:
        """SEND with a receipt and wait for it."""
        receipt = f"sync-{time.monotonic_ns()}"
        self.conn.send(destination, body, headers={**headers, "receipt": receipt})
        self.wait_receipt(receipt, timeout)

    def disconnect(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """DISCONNECT with a receipt, wait for it, close the socket."""
        if self.conn.is_connected():
            receipt = f"bye-{time.monotonic_ns()}"
            try:
                self.conn.send_frame("DISCONNECT", {"receipt": receipt})
                self.wait_receipt(receipt, timeout)
            except stomp.exception.NotConnectedException:
                pass
        self.close()

    def close(self) -> None:
        """Drop the socket without DISCONNECT (what a crash looks like to the broker)."""
        transport = self.conn.transport
        transport.disconnect_socket()
        io_thread = getattr(transport, "io_thread", None)
        if io_thread is not None and io_thread is not threading.current_thread():
            io_thread.join(DEFAULT_TIMEOUT_S)


class RawFrame:
    def __init__(self, command: str, headers: dict[str, str], body: bytes) -> None:
        self.command = command
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"RawFrame({self.command!r}, {self.headers!r}, {self.body[:60]!r})"


class RawClient:
    """A plain socket speaking STOMP by hand, for malformed input and many connections."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT_S):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.heartbeats = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        lines = [command] + [f"{k}:{v}" for k, v in (headers or {}).items()]
        if body:
            lines.append(f"content-length:{len(body)}")
        self.send(("\n".join(lines) + "\n\n").encode() + body + b"\x00")

    def connect(self, version: str = "1.2", **headers: str) -> RawFrame:
        self.frame("CONNECT", {"accept-version": version, "host": "/", **headers})
        reply = self.read()
        assert reply.command == "CONNECTED", reply
        return reply

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame from the broker in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(262144)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read(self, timeout: float | None = None) -> RawFrame:
        """The next frame (heart-beat EOLs are counted and skipped); EOFError on close."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            stripped = self.buf.lstrip(b"\r\n")
            self.heartbeats += self.buf[: len(self.buf) - len(stripped)].count(b"\n")
            self.buf = stripped
            end = self.buf.find(b"\n\n")
            if end >= 0:
                head = self.buf[:end].decode().split("\n")
                headers: dict[str, str] = {}
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    headers.setdefault(k, v)
                start = end + 2
                if "content-length" in headers:
                    stop = start + int(headers["content-length"])
                    if len(self.buf) > stop:
                        body, self.buf = self.buf[start:stop], self.buf[stop + 1 :]
                        return RawFrame(head[0], headers, body)
                else:
                    nul = self.buf.find(b"\x00", start)
                    if nul >= 0:
                        body, self.buf = self.buf[start:nul], self.buf[nul + 1 :]
                        return RawFrame(head[0], headers, body)
            if not self._fill(deadline):
                raise EOFError("broker closed the connection")

    def wait_heartbeats(self, n: int, timeout: float | None = None) -> None:
        """Read until ``n`` heart-beat EOLs have arrived (no frame may come meanwhile)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while self.heartbeats + self.buf.count(b"\n") < n:
            if self.buf.strip(b"\r\n"):
                raise AssertionError(f"a frame arrived instead of heart-beats: {self.buf[:80]!r}")
            if not self._fill(deadline):
                raise EOFError("broker closed the connection")

    def read_until_closed(self, timeout: float | None = None) -> list[RawFrame]:
        """Every frame until the broker closes the socket."""
        frames = []
        while True:
            try:
                frames.append(self.read(timeout))
            except EOFError:
                return frames
            except (ConnectionResetError, BrokenPipeError):
                return frames

    def close(self) -> None:
        self.sock.close()


def make_users(path: Path, users: dict[str, dict[str, Any]]) -> Path:
    """Write a users file with ``adduser``: ``{"name": {"passcode": "pw", "read": [...],
    "write": [...], "admin": [...]}}``."""
    for name, spec in users.items():
        add_user(
            path,
            name,
            spec["passcode"],
            spec.get("read", ()),
            spec.get("write", ()),
            spec.get("admin", ()),
        )
    return path
