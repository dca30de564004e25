"""Assertions shared by the API tests."""

from __future__ import annotations

import re
import socket
import time

import httpx


def error_of(response: httpx.Response, status: int) -> str:
    """The ``error`` text of an error answer, after checking its status and shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``metrics``."""
    for line in metrics.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    raise AssertionError(f"no sample {name} {labels} in:\n{metrics}")


def address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a node URL such as ``http://127.0.0.1:8001``."""
    match = re.fullmatch(r"https?://\[?([^\]]+?)\]?:(\d+)", url)
    assert match, url
    return match.group(1), int(match.group(2))


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float | None]:
    """Everything ``sock`` receives until the peer closes it, and the monotonic time it
    did; the time is None if it was still open after ``timeout_s``."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, None
        except ConnectionResetError:
            return data, time.monotonic()
        if not chunk:
            return data, time.monotonic()
        data += chunk


def metrics_of(client: httpx.Client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


def sample_or_zero(metrics: str, name: str, **labels: str) -> float:
    try:
        return sample(metrics, name, **labels)
    except AssertionError:
        return 0.0


def server_errors(metrics: str) -> list[str]:
    """The request samples of ``metrics`` with a 5xx status and a non-zero count."""
    return [
        line
        for line in metrics.splitlines()
        if line.startswith("vesper_http_requests_total{")
        and re.search(r'status="5\d\d"', line)
        and float(line.rsplit(" ", 1)[1]) > 0
    ]
