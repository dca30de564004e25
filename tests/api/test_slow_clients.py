"""Slow, idle, greedy and vanishing clients against a real ``vesper serve``.

Each hostile client runs beside a well-behaved one, which must keep being answered
quickly throughout. Timeouts are short (1 s) so the tests are; every wait has a
deadline, and "near the limit" allows for a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import time
from pathlib import Path

import pytest

from tests.api.conftest import (
    BASIC_CONFIG,
    NodeProcess,
    StartNode,
    node_command,
    wait_for,
    write_config,
)
from tests.api.helpers import (
    address,
    metrics_of,
    read_until_closed,
    sample,
    sample_or_zero,
    server_errors,
)
from tests.api.slowclients import Closed, SteadyClient, reset_on_close, trickle

#: How much later than its timeout a connection may be closed on a loaded machine.
SLACK_S = 1.0
#: The slowest answer the well-behaved client may see while others misbehave.
MAX_LATENCY_S = 1.0


def fast_timeouts(header: float = 1, body: float = 1, idle: float = 5) -> str:
    return (
        BASIC_CONFIG
        + f"api_header_timeout = {header}\napi_body_timeout = {body}\napi_idle_timeout = {idle}\n"
    )


async def beside_a_steady_client(
    node: NodeProcess, *attacks: object
) -> tuple[list[Closed], SteadyClient]:
    host, port = address(node.url)
    steady = SteadyClient(host, port)
    stop = asyncio.Event()
    steady_task = asyncio.create_task(steady.run(stop))
    try:
        results = await asyncio.gather(*attacks)  # type: ignore[arg-type]
    finally:
        stop.set()
        await steady_task
    assert not steady.failures, steady.summary()
    assert steady.latencies and max(steady.latencies) < MAX_LATENCY_S, steady.summary()
    return list(results), steady


def assert_clean_log(node: NodeProcess) -> None:
    log = node.log()
    assert " ERROR " not in log and "Traceback" not in log, log
    assert " WARNING uvicorn" not in log, log


def test_slow_loris_headers_are_dropped_at_the_header_timeout(start_node: StartNode) -> None:
    node = start_node(fast_timeouts(header=1))
    host, port = address(node.url)
    head = b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"

    async def attack() -> tuple[list[Closed], SteadyClient]:
        return await beside_a_steady_client(
            node, *(trickle(host, port, head, 0.3, timeout_s=10) for _ in range(5))
        )

    closed, _ = asyncio.run(attack())
    for outcome in closed:
        assert outcome.after_s is not None, "a slow-loris connection was never closed"
        assert 0.9 <= outcome.after_s <= 1 + SLACK_S, outcome
        assert outcome.status == 408, outcome.received
    with node.client() as http:
        metrics = metrics_of(http)
    assert sample(metrics, "vesper_http_timeouts_total", phase="header") == 5
    assert not server_errors(metrics)
    assert node.stop() == 0
    assert_clean_log(node)


def test_blank_lines_and_later_requests_get_the_header_timeout_too(start_node: StartNode) -> None:
    node = start_node(fast_timeouts(header=1, idle=30))
    host, port = address(node.url)

    async def attack() -> list[Closed]:
        return list(
            await asyncio.gather(
                # Blank lines before a request start no request in the parser.
                trickle(host, port, b"\r\n" * 100, 0.3, timeout_s=10, step=2),
                # A first request at once, 2 s of keep-alive, then a second one a
                # byte at a time: timed from that second request's first byte.
                trickle(
                    host,
                    port,
                    b"GET /health HTTP/1.1\r\n" * 3,
                    0.3,
                    timeout_s=10,
                    prefix=b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                    delay_s=2,
                ),
            )
        )

    blank, second = asyncio.run(attack())
    assert blank.after_s is not None and 0.9 <= blank.after_s <= 1 + SLACK_S, blank
    assert blank.status == 408
    assert second.after_s is not None and 2.9 <= second.after_s <= 3 + SLACK_S, second
    assert second.received.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in second.received
    assert node.stop() == 0
    assert_clean_log(node)


def test_idle_connections_are_closed_at_the_header_timeout(start_node: StartNode) -> None:
    node = start_node(fast_timeouts(header=1) + "api_max_connections = 1000\n")
    host, port = address(node.url)

    async def attack() -> tuple[list[Closed], SteadyClient]:
        return await beside_a_steady_client(
            node, *(trickle(host, port, b"", 0.1, timeout_s=10) for _ in range(300))
        )

    closed, _ = asyncio.run(attack())
    still_open = [c for c in closed if c.after_s is None]
    assert not still_open, f"{len(still_open)} of 300 idle connections were never closed"
    assert max(c.after_s for c in closed if c.after_s) <= 1 + 2 * SLACK_S  # type: ignore[type-var]
    assert {c.status for c in closed} == {408}
    with node.client() as http:
        assert sample(metrics_of(http), "vesper_http_timeouts_total", phase="header") == 300
    assert node.stop() == 0
    assert_clean_log(node)


def test_an_idle_keep_alive_connection_closes_at_the_idle_timeout(start_node: StartNode) -> None:
    node = start_node(fast_timeouts(header=5, idle=1))
    host, port = address(node.url)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = time.monotonic()
        data, closed = read_until_closed(sock, 10)
    assert data.startswith(b"HTTP/1.1 200 ") and data.count(b"HTTP/1.1") == 1
    assert closed is not None and 0.9 <= closed - answered <= 1 + SLACK_S
    assert node.stop() == 0


def test_a_slow_body_is_aborted_at_the_body_timeout_and_nothing_is_committed(
    start_node: StartNode,
) -> None:
    node = start_node(fast_timeouts(header=5, body=1))
    host, port = address(node.url)
    body = json.dumps({"id": "slow-body", "pad": "x" * 100}).encode()
    head = (
        b"POST /api/objects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )

    async def attack() -> tuple[list[Closed], SteadyClient]:
        async def slow() -> Closed:
            # The head at once, then the body a byte every 0.3 s.
            return await trickle(host, port, body, 0.3, timeout_s=10, prefix=head)

        async def head_only() -> Closed:
            return await trickle(host, port, b"", 0.3, timeout_s=10, prefix=head)

        return await beside_a_steady_client(node, slow(), slow(), slow(), head_only())

    closed, _ = asyncio.run(attack())
    for outcome in closed:
        # Closed about 1 s after the head, long before the body could be complete.
        assert outcome.after_s is not None and outcome.after_s <= 1 + SLACK_S, outcome
        assert outcome.status == 408, outcome.received
        assert b"api_body_timeout" in outcome.received
    with node.client() as http:
        assert http.get("/api/objects/slow-body").status_code == 404  # nothing committed
        metrics = metrics_of(http)
    assert sample(metrics, "vesper_http_timeouts_total", phase="body") == 4
    labels = {"method": "POST", "endpoint": "/api/objects"}
    assert sample(metrics, "vesper_http_requests_total", status="408", **labels) == 4
    assert sample_or_zero(metrics, "vesper_commits_total", operation="create") == 0
    assert not server_errors(metrics)
    assert node.stop() == 0
    assert_clean_log(node)


def test_connections_past_the_limit_are_closed_at_once(start_node: StartNode) -> None:
    node = start_node(fast_timeouts(header=10, idle=60) + "api_max_connections = 20\n")
    host, port = address(node.url)
    with node.client() as http:
        assert http.get("/health").status_code == 200  # one connection, kept alive
        held: list[socket.socket] = []
        try:
            for _ in range(19):  # 20 with http's
                held.append(socket.create_connection((host, port), timeout=10))
            # Each connection has been accepted once it answers; these answer nothing
            # yet, so wait until the server counts them all before going over.
            # (Only this keep-alive connection can still be served.)
            wait_for(
                lambda: sample(metrics_of(http), "vesper_http_connections") == 20,
                node.log,
                timeout_s=10,
            )
            refused: list[float | None] = []
            for _ in range(10):
                with socket.create_connection((host, port), timeout=10) as extra:
                    started = time.monotonic()
                    data, closed = read_until_closed(extra, 5)
                    assert data == b""
                    refused.append(None if closed is None else closed - started)
            assert all(t is not None and t < 0.5 for t in refused), refused
            # The client already connected is still served, and quickly.
            for _ in range(20):
                started = time.monotonic()
                assert http.get("/health").status_code == 200
                assert time.monotonic() - started < MAX_LATENCY_S
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: sample(metrics_of(http), "vesper_http_connections") == 1, node.log)
        metrics = metrics_of(http)
    assert sample(metrics, "vesper_http_connections_refused_total") >= 10
    assert node.stop() == 0
    log = node.log()
    assert log.count("api_max_connections") == 1, log  # one warning, not one per refusal


def open_file_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as file:
        line = next(line for line in file if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


@pytest.mark.parametrize(("ulimit", "warns"), [("-Sn 256", False), ("-n 300", True)])
def test_the_open_file_limit_is_raised_for_the_connections(
    tmp_path: Path, ulimit: str, warns: bool
) -> None:
    # api_max_connections = 1000 (the default) needs about 1128 descriptors.
    config = write_config(tmp_path, BASIC_CONFIG)
    command = f"ulimit {ulimit} && exec {shlex.join(node_command(config))}"
    node = NodeProcess(["sh", "-c", command], tmp_path, tmp_path / "node.log")
    try:
        node.start()
        assert node.proc is not None
        soft, hard = open_file_limits(node.proc.pid)
        if warns:  # hard limit 300: raised as far as it goes, and said so
            assert soft == hard == 300
            assert "WARNING" in node.log() and "api_max_connections = 1000" in node.log()
        else:
            assert soft >= 1128 and "WARNING" not in node.log()
        with node.client() as http:
            assert http.get("/health").status_code == 200
        assert node.stop() == 0
    finally:
        node.kill()


def test_a_request_head_over_64_kib_is_431(start_node: StartNode) -> None:
    node = start_node(BASIC_CONFIG)
    host, port = address(node.url)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(100):
                sock.sendall(f"X-Filler-{i}: ".encode() + b"f" * 1000 + b"\r\n")
        except OSError:
            pass  # closed by the server meanwhile
        data, closed = read_until_closed(sock, 10)
    assert data.startswith(b"HTTP/1.1 431 ") and closed is not None
    with node.client() as http:
        assert http.get("/health").status_code == 200


def test_garbage_and_upgrades_are_not_logged_as_warnings(start_node: StartNode) -> None:
    node = start_node(BASIC_CONFIG)
    host, port = address(node.url)
    for _ in range(20):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            data, _ = read_until_closed(sock, 10)
            assert data.startswith(b"HTTP/1.1 400 ")
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(
                b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            )
            data, closed = read_until_closed(sock, 10)
            assert data.startswith(b"HTTP/1.1 200 ") and closed is not None
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(
                b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            data, closed = read_until_closed(sock, 10)
            assert data.startswith(b"HTTP/1.1 200 ") and closed is not None
    assert node.stop() == 0
    log = node.log()
    assert "WARNING" not in log and "ERROR" not in log, log


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_clients_vanishing_mid_body_or_mid_stream_are_not_server_errors(
    start_node: StartNode, reset: bool
) -> None:
    node = start_node(BASIC_CONFIG, "--log_level=debug")
    host, port = address(node.url)
    docs = [{"id": f"v{i:05d}", "pad": "z" * 1000} for i in range(3000)]
    with node.client() as http:
        http.post("/api/objects", json=docs).raise_for_status()
    # Mid-body: a head announcing 100 kB, then 10 bytes, then gone. The "100 Continue"
    # comes once the handler waits for the body, so the node has the request by then.
    for path in ["/api/objects", "/api/transaction", "/api/objects/v00001"]:
        method = "PUT" if path.endswith("1") else "POST"
        sock = socket.create_connection((host, port), timeout=10)
        if reset:
            reset_on_close(sock)
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n".encode()
            + b"Expect: 100-continue\r\n\r\n"
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b'{"id": "v')
        sock.close()
    # Mid-stream: a 3 MB listing, read a little through a small buffer, then gone.
    for _ in range(2):
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        if reset:
            reset_on_close(sock)
        sock.sendall(b"GET /api/objects HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in first
        sock.close()
    with node.client() as http:
        get = {"method": "GET", "endpoint": "/api/objects"}

        gone = [
            ({"method": "POST", "endpoint": "/api/objects"}, 1),
            ({"method": "POST", "endpoint": "/api/transaction"}, 1),
            ({"method": "PUT", "endpoint": "/api/objects/{id}"}, 1),
            (get, 2),
        ]

        def gone_counted() -> bool:
            metrics = metrics_of(http)
            return all(
                sample_or_zero(metrics, "vesper_http_requests_total", status="499", **labels)
                == count
                for labels, count in gone
            )

        wait_for(gone_counted, lambda: metrics_of(http) + node.log(), timeout_s=15)
        metrics = metrics_of(http)
        assert not server_errors(metrics), server_errors(metrics)
        assert sample_or_zero(metrics, "vesper_http_requests_total", status="200", **get) == 0
        assert http.get("/api/objects/v00001").json()["pad"] == "z" * 1000  # not replaced
        assert http.get("/health").status_code == 200
    assert node.stop() == 0
    log = node.log()
    assert " ERROR " not in log and "Traceback" not in log and " WARNING " not in log, log
    assert "connection lost during" in log or "client went away" in log  # at debug level
