"""Oversized bodies (413) and unexpected exceptions (500) in a real server."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx

from tests.api.conftest import BASIC_CONFIG, NodeProcess, StartNode
from tests.api.helpers import error_of, sample

LIMIT = 65536  # api_max_body_bytes of the shared node (conftest)


def big_object(size: int) -> bytes:
    return b'{"id": "big", "pad": "' + b"x" * size + b'"}'


def test_body_over_the_limit_is_413_before_it_is_read(http: httpx.Client) -> None:
    message = error_of(http.post("/api/objects", content=big_object(LIMIT)), 413)
    assert str(LIMIT) in message and "api_max_body_bytes" in message
    error_of(http.put("/api/objects/big", content=big_object(LIMIT)), 413)
    assert http.get("/api/objects/big").status_code == 404
    # Just under the limit is fine, and the connection is still usable.
    assert http.post("/api/objects", content=big_object(LIMIT - 100)).status_code == 201


def test_chunked_body_over_the_limit_is_413_while_reading(http: httpx.Client) -> None:
    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"id": "chunked", "pad": "'
        for _ in range(total // 4096):
            yield b"y" * 4096
        yield b'"}'

    r = http.post("/api/transaction", content=chunks(LIMIT * 2))
    assert "api_max_body_bytes" in error_of(r, 413)
    assert http.post("/api/objects", content=chunks(LIMIT // 2)).status_code == 201
    assert http.get("/api/objects/chunked").json()["id"] == "chunked"


def test_declared_length_over_the_limit_gets_413_without_sending_the_body(
    node: NodeProcess,
) -> None:
    # A client that waits for the answer before sending its body must not hang.
    host, port = re.fullmatch(r"http://(.+):(\d+)", node.url).groups()  # type: ignore[union-attr]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /api/objects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'{"error":' in answer


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response: the head, then as many body bytes as it declares.

    TCP may deliver the head and the body in separate segments, so a single recv()
    can return only part of the answer.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    declared = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    length = int(declared.group(1)) if declared else None
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_unexpected_exception_is_500_logged_and_the_node_keeps_serving(
    start_node: StartNode,
) -> None:
    node = start_node(BASIC_CONFIG, faulty=True)
    with node.client() as http:
        http.post("/api/objects", json=[{"id": "explode"}, {"id": "fine"}]).raise_for_status()
        message = error_of(http.get("/api/objects/explode"), 500)
        assert "RuntimeError" in message and "planted" not in message  # no internals leak
        assert http.get("/api/objects/fine").json() == {"id": "fine"}
        assert http.get("/health").status_code == 200
        metrics = http.get("/metrics").text
    labels = {"endpoint": "/api/objects/{id}", "method": "GET", "status": "500"}
    assert sample(metrics, "vesper_http_requests_total", **labels) == 1
    assert node.stop() == 0
    log = node.log()
    assert "unexpected error answering GET /api/objects/explode" in log
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: planted bug for the test" in log
    assert log.count("Traceback") == 1  # logged once, not again by the server
