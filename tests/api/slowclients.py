"""Hostile and well-behaved HTTP clients on raw asyncio streams, for the timeout tests."""

from __future__ import annotations

import asyncio
import re
import socket
import statistics
import struct
import time
from dataclasses import dataclass, field


@dataclass
class Closed:
    """How a connection ended, from the client's side."""

    after_s: float | None
    """Seconds from connecting to the server closing; None if it was still open."""
    received: bytes

    @property
    def status(self) -> int | None:
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", self.received)
        return int(match.group(1)) if match else None


async def trickle(
    host: str,
    port: int,
    data: bytes,
    interval_s: float,
    timeout_s: float,
    step: int = 1,
    prefix: bytes = b"",
    delay_s: float = 0.0,
) -> Closed:
    """Connect, send ``prefix`` at once, wait ``delay_s``, then send ``data`` ``step``
    bytes every ``interval_s`` (nothing when ``data`` is empty) until the server closes
    or ``timeout_s`` passes."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    if prefix:
        writer.write(prefix)
    received = bytearray()

    async def read() -> float:
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                break
            if not chunk:
                break
            received.extend(chunk)
        return time.monotonic()

    reading = asyncio.create_task(read())
    deadline = started + timeout_s
    try:
        if delay_s:
            await asyncio.wait({reading}, timeout=delay_s)
        for offset in range(0, len(data), step):
            if reading.done() or time.monotonic() > deadline:
                break
            try:
                writer.write(data[offset : offset + step])
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait({reading}, timeout=interval_s)
        remaining = max(0.0, deadline - time.monotonic())
        done, _ = await asyncio.wait({reading}, timeout=remaining)
        closed_at = reading.result() if done else None
    finally:
        reading.cancel()
        writer.transport.abort()
    return Closed(None if closed_at is None else closed_at - started, bytes(received))


@dataclass
class SteadyClient:
    """A well-behaved keep-alive client: one request after another, timing each."""

    host: str
    port: int
    request: bytes = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    pause_s: float = 0.02
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            while not stop.is_set():
                started = time.monotonic()
                writer.write(self.request)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    await reader.readexactly(int(length.group(1)) if length else 0)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    self.failures.append(repr(exc))
                    return
                if not head.startswith(b"HTTP/1.1 200 "):
                    self.failures.append(head.decode(errors="replace"))
                self.latencies.append(time.monotonic() - started)
                await asyncio.sleep(self.pause_s)
        finally:
            writer.transport.abort()

    def summary(self) -> str:
        if not self.latencies:
            return f"no request answered; failures: {self.failures}"
        q = statistics.quantiles(self.latencies, n=20) if len(self.latencies) > 1 else [0] * 19
        return (
            f"{len(self.latencies)} requests, median {statistics.median(self.latencies):.4f} s, "
            f"p95 {q[18]:.4f} s, max {max(self.latencies):.4f} s; failures: {self.failures}"
        )


def reset_on_close(sock: socket.socket) -> None:
    """Make ``close()`` send a TCP reset instead of a FIN (a client that vanishes)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
