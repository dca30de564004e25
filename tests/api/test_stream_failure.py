"""A streamed answer whose store fails midway is cut off, never passed off as whole."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.api.conftest import BASIC_CONFIG, NodeProcess, StartNode
from tests.api.faulty_node import CHANGESETS_FAIL_AFTER
from tests.api.helpers import address, metrics_of, read_until_closed, sample, sample_or_zero

#: Changesets made; the scan fails after FAIL_AFTER of them, well past the first
#: 64 KiB batch (about 130 of these), so the 200 and some batches are out by then.
CHANGESETS = 600
FAIL_AFTER = 400


@pytest.fixture
def failing(start_node: StartNode) -> NodeProcess:
    node = start_node(BASIC_CONFIG, faulty=True, env={CHANGESETS_FAIL_AFTER: str(FAIL_AFTER)})
    with node.client() as http:
        for i in range(CHANGESETS):
            http.post("/api/objects", json={"id": f"c{i:04d}", "pad": "p" * 300}).raise_for_status()
    return node


def test_a_store_failure_midway_aborts_the_stream(failing: NodeProcess) -> None:
    # httpx sees the chunked body end without its terminator: an error, not an answer.
    with failing.client() as http:
        with (
            pytest.raises(httpx.RemoteProtocolError),
            http.stream("GET", "/api/changesets") as response,
        ):
            assert response.status_code == 200
            for _ in response.iter_bytes():
                pass
        # The node goes on serving, the limit of the scan short of the failure too.
        assert http.get("/health").status_code == 200
        assert len(http.get("/api/changesets", params={"limit": 50}).json()["changesets"]) == 50
    # On the wire: the head, part of the body, then the connection closed, with no
    # final "0\r\n\r\n" chunk.
    host, port = address(failing.url)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /api/changesets HTTP/1.1\r\nHost: x\r\n\r\n")
        data, closed = read_until_closed(sock, 30)
    assert closed is not None
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head
    assert len(body) > 64 * 1024 and not body.endswith(b"0\r\n\r\n")
    with failing.client() as http:
        metrics = metrics_of(http)
    labels = {"method": "GET", "endpoint": "/api/changesets"}
    assert sample(metrics, "vesper_http_requests_total", status="503", **labels) == 2
    assert sample_or_zero(metrics, "vesper_http_requests_total", status="200", **labels) == 1
    assert failing.stop() == 0
    log = failing.log()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 2, log  # one line per failed answer, nothing more
    for line in errors:
        assert "GET '/api/changesets' failed midway, connection aborted: StorageError" in line
    assert "Traceback" not in log and "ASGI callable" not in log
