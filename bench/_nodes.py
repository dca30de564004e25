"""``vesper serve`` nodes and a minimal HTTP/1.1 client, for the benches that drive real
nodes (trust_bench.py, access_bench.py).

    node = start_node(work / "a", "A", {"save_history": True})   # port 0: a free one
    client = Client(node.host, node.port)                        # keep-alive, TCP_NODELAY
    client.get_json("/api/status")
    stop_node(node)

``launch_node`` + ``wait_serving`` start several nodes side by side. For HTTPS give
``Client`` an ``ssl_context``; for a node with ``api_token``, its ``token``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
SERVING_RE = re.compile(r' serving (https?)://([^\s"]+):(\d+)[\s"]')  # text or JSON log


class BenchError(Exception):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class HttpNode:
    label: str
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    """0 until ``wait_serving`` has read the node's address from its log."""
    log_path: Path
    scheme: str = "http"


def launch_node(
    work: Path,
    label: str,
    settings: Mapping[str, Any],
    command: Sequence[str] | None = None,
) -> HttpNode:
    """Write ``work/node.conf`` (``branch_id = label``, ``work_dir = work``, ``port = 0``
    and ``settings``, each ``name = repr(value)``) and start ``command`` (default
    ``python -m vesper serve``) with the file's path appended; returns at once."""
    work.mkdir(parents=True)
    config = work / "node.conf"
    values = {"branch_id": label, "work_dir": str(work), "port": 0, **settings}
    config.write_text("".join(f"{name} = {value!r}\n" for name, value in values.items()))
    config.chmod(0o600)  # it may hold a token or a broker passcode
    argv = [*(command or [sys.executable, "-m", "vesper", "serve"]), str(config)]
    log_path = work / "node.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return HttpNode(label, proc, "", 0, log_path)


def wait_serving(node: HttpNode, timeout: float = STARTUP_TIMEOUT_S) -> HttpNode:
    """Wait for the node's ``serving http(s)://host:port`` log line; fill in its address."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = SERVING_RE.search(node.log_path.read_text(errors="replace"))
        if match:
            node.scheme, node.host, node.port = match[1], match[2], int(match[3])
            return node
        if node.proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_node(node)
    raise BenchError(
        f"node {node.label} did not start:\n{node.log_path.read_text(errors='replace')}"
    )


def start_node(
    work: Path, label: str, settings: Mapping[str, Any], command: Sequence[str] | None = None
) -> HttpNode:
    """``launch_node`` and ``wait_serving``."""
    return wait_serving(launch_node(work, label, settings, command))


def stop_node(node: HttpNode) -> None:
    if node.proc.poll() is not None:
        return
    node.proc.send_signal(signal.SIGTERM)
    try:
        node.proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        node.proc.kill()
        node.proc.wait()


class Client:
    """One keep-alive HTTP/1.1 connection, one request at a time; HTTPS with
    ``ssl_context``, ``Authorization: Bearer`` on every request built here with
    ``token``."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""

    def build(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """A request's bytes, with this client's token; ``body`` is sent as JSON."""
        head = b"%s %s HTTP/1.1\r\nHost: bench\r\n%s" % (method.encode(), path.encode(), self.auth)
        if body is None:
            return head + b"\r\n"
        return head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )

    def request(self, data: bytes) -> tuple[int, bytes]:
        self.sock.sendall(data)
        status = int(self.file.readline()[9:12])
        length = 0
        while True:
            line = self.file.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, self.file.read(length) if length else b""

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request(self.build("GET", path))

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {body[:200]!r}")
        return orjson.loads(body)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def child_pids(pid: int) -> list[int]:
    """The live children of process ``pid`` (a node's digest worker) (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and of its live children (Linux /proc):
    a node's work includes its digest worker's."""
    total = 0.0
    for one in (pid, *child_pids(pid)):
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
