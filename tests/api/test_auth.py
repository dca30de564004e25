"""Bearer tokens against a real ``vesper serve``, probed as a hostile client would."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import BASIC_CONFIG, NodeProcess, StartNode, node_command, write_config
from tests.api.helpers import (
    address,
    error_of,
    metrics_of,
    read_until_closed,
    sample,
    sample_or_zero,
)

WRITE = "write-token-0123456789abcdef"
OLD_WRITE = "old-write-token-0123456789ab"  # still accepted while clients move over
READ = "read-token-0123456789abcdefg"
WRONG = "wrong-token-0123456789abcdef"
TOKEN_CONFIG = BASIC_CONFIG + f"api_token = [{WRITE!r}, {OLD_WRITE!r}]\napi_read_token = {READ!r}\n"
CHALLENGE = 'Bearer realm="vesper"'


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node with read-write and read-only tokens, shared by this module."""
    directory = tmp_path_factory.mktemp("secured")
    config = write_config(directory, TOKEN_CONFIG)
    proc = NodeProcess(node_command(config), directory, directory / "node.log")
    try:
        yield proc.start()
        assert proc.stop() == 0, proc.log()
    finally:
        proc.kill()


@pytest.fixture
def anonymous(secured: NodeProcess) -> Iterator[httpx.Client]:
    with secured.client() as client:
        yield client


@pytest.fixture
def writer(secured: NodeProcess) -> Iterator[httpx.Client]:
    with secured.client(headers=bearer(WRITE)) as client:
        yield client


@pytest.fixture
def reader(secured: NodeProcess) -> Iterator[httpx.Client]:
    with secured.client(headers=bearer(READ)) as client:
        yield client


def test_no_token_is_401_with_a_bearer_challenge(anonymous: httpx.Client) -> None:
    for method, path in [
        ("GET", "/api/objects"),
        ("GET", "/api/objects/x"),
        ("POST", "/api/objects"),
        ("GET", "/api/status"),
        ("GET", "/api/changesets"),
        ("GET", "/no/such/path"),  # unknown paths too: no probing which routes exist
    ]:
        r = anonymous.request(method, path)
        assert "bearer token" in error_of(r, 401)
        assert r.headers["www-authenticate"] == CHALLENGE  # no error: none was given


def test_a_wrong_token_is_401_invalid_token(anonymous: httpx.Client) -> None:
    for token in [WRONG, WRITE[:-1], WRITE + "x", WRITE.upper(), READ[1:], "x" * 200]:
        r = anonymous.get("/api/objects", headers=bearer(token))
        error_of(r, 401)
        assert r.headers["www-authenticate"] == CHALLENGE + ', error="invalid_token"'


def test_both_write_tokens_read_and_write(secured: NodeProcess) -> None:
    for i, token in enumerate([WRITE, OLD_WRITE]):
        with secured.client(headers=bearer(token)) as client:
            assert client.post("/api/objects", json={"id": f"w{i}"}).status_code == 201
            assert client.put(f"/api/objects/w{i}", json={"v": 1}).status_code == 200
            assert client.patch(f"/api/objects/w{i}", json={"v": 2}).status_code == 200
            assert client.get(f"/api/objects/w{i}").json() == {"id": f"w{i}", "v": 2}
            body = {"ops": [{"op": "delete", "id": f"w{i}"}]}
            assert client.post("/api/transaction", json=body).status_code == 200


def test_the_read_token_reads_but_cannot_write(writer: httpx.Client, reader: httpx.Client) -> None:
    writer.post("/api/objects", json={"id": "r1", "v": 1}).raise_for_status()
    assert reader.get("/api/objects/r1").json() == {"id": "r1", "v": 1}
    assert reader.head("/api/objects/r1").status_code == 200
    assert reader.get("/api/status").status_code == 200
    assert reader.get("/api/objects", params={"limit": 1}).status_code == 200
    for method, path, body in [
        ("POST", "/api/objects", {"id": "r2"}),
        ("PUT", "/api/objects/r1", {"v": 9}),
        ("PATCH", "/api/objects/r1", {"v": 9}),
        ("DELETE", "/api/objects/r1", None),
        ("POST", "/api/transaction", {"ops": [{"op": "delete", "id": "r1"}]}),
        ("OPTIONS", "/api/objects", None),
    ]:
        r = reader.request(method, path, json=body)
        assert "only read" in error_of(r, 403), (method, path)
        assert r.headers["www-authenticate"] == CHALLENGE + ', error="insufficient_scope"'
    assert writer.get("/api/objects/r1").json() == {"id": "r1", "v": 1}
    assert writer.get("/api/objects/r2").status_code == 404


def test_no_trick_lets_the_read_token_write(
    secured: NodeProcess, writer: httpx.Client, anonymous: httpx.Client
) -> None:
    writer.post("/api/objects", json={"id": "t1", "v": 1}).raise_for_status()
    overrides = ["X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method"]
    for header in overrides:
        # A write disguised as a read is still the write the server routes.
        r = anonymous.post(
            "/api/objects", json={"id": "t2"}, headers={**bearer(READ), header: "GET"}
        )
        error_of(r, 403)
        # A read carrying a write override is served as the read it is.
        r = anonymous.get("/api/objects/t1", headers={**bearer(READ), header: "DELETE"})
        assert r.status_code == 200
    # The scheme is case-insensitive (RFC 7235) and spaces around the token are
    # forgiven (sent raw: httpx refuses to send them), but none of that turns a read
    # token into a write token.
    host, port = address(secured.url)
    for value in [f"bearer {READ}", f"BEARER {READ}", f"Bearer    {READ}   "]:
        assert status_of_raw(host, port, "GET", "/api/objects/t1", value) == 200
        assert status_of_raw(host, port, "DELETE", "/api/objects/t1", value) == 403
    # Two Authorization headers: refused whatever their order, never "the best one".
    for first, second in [(READ, WRITE), (WRITE, READ), (WRITE, WRITE)]:
        request = (
            f"DELETE /api/objects/t1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {first}\r\n"
            f"Authorization: Bearer {second}\r\nConnection: close\r\n\r\n"
        ).encode()
        assert raw_request(host, port, request).startswith(b"HTTP/1.1 400 ")
    # A token in the query string is not a token.
    for name in ["access_token", "token", "api_token"]:
        r = anonymous.delete("/api/objects/t1", params={name: WRITE})
        error_of(r, 401)
    # Nor in another scheme, nor in a cookie.
    basic = base64.b64encode(f"x:{WRITE}".encode()).decode()
    error_of(anonymous.delete("/api/objects/t1", headers={"Authorization": f"Basic {basic}"}), 401)
    error_of(anonymous.delete("/api/objects/t1", headers={"Authorization": f"Token {WRITE}"}), 401)
    cookie = {"Cookie": f"token={WRITE}; api_token={WRITE}"}
    error_of(anonymous.delete("/api/objects/t1", headers=cookie), 401)
    # Malformed: no token, or two words.
    for value in ["Bearer", "Bearer   ", f"Bearer {WRITE} {WRITE}", f"Bearer {READ} x"]:
        assert status_of_raw(host, port, "DELETE", "/api/objects/t1", value) == 400, value
    assert writer.get("/api/objects/t1").json() == {"id": "t1", "v": 1}
    assert writer.get("/api/objects/t2").status_code == 404


def status_of_raw(host: str, port: int, method: str, path: str, authorization: str) -> int:
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return int(raw_request(host, port, request).split(b" ", 2)[1])


def raw_request(host: str, port: int, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        data, closed = read_until_closed(sock, 10)
    assert closed is not None, data
    return data


def test_probes_are_open_and_everything_else_needs_a_token(
    anonymous: httpx.Client, reader: httpx.Client
) -> None:
    assert anonymous.get("/health").json()["status"] == "ok"
    assert anonymous.get("/ready").json()["ready"] is True
    error_of(anonymous.post("/ready"), 405)  # open, so routed like any request
    error_of(anonymous.get("/ready/"), 401)
    for path in ["/metrics", "/api/status", "/openapi.json", "/docs", "/ui/settings"]:
        error_of(anonymous.get(path), 401)
    assert reader.get("/metrics").status_code == 200
    assert reader.get("/openapi.json").json()["openapi"].startswith("3.")
    assert reader.get("/docs").status_code == 200


def test_metrics_public_opens_metrics_and_nothing_else(start_node: StartNode) -> None:
    node = start_node(TOKEN_CONFIG + "api_metrics_public = True\n")
    with node.client() as anonymous:
        assert anonymous.get("/metrics").status_code == 200
        error_of(anonymous.get("/api/status"), 401)
        error_of(anonymous.get("/metrics/"), 401)
        error_of(anonymous.post("/metrics"), 405)  # open, so routed like any request


def test_an_unauthenticated_16_mib_body_is_never_read(secured: NodeProcess) -> None:
    host, port = address(secured.url)
    size = 16 * 1024 * 1024
    with socket.create_connection((host, port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /api/objects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
        )
        # Answered and closed from the head alone, without waiting for the body...
        data, closed = read_until_closed(sock, 10)
        assert closed is not None and closed - started < 2, data
        assert data.startswith(b"HTTP/1.1 401 ")
        assert b"connection: close" in data.lower()
        # ...and the body has nowhere to go.
        with pytest.raises(OSError):
            for _ in range(size // 65536):
                sock.sendall(b"x" * 65536)
    # The same with the body sent along: still refused quickly.
    with secured.client() as client:
        started = time.monotonic()
        try:
            r = client.post("/api/objects", content=b"x" * size)
            assert r.status_code == 401
        except httpx.TransportError:
            pass  # the server closed the connection while the client was still sending
        assert time.monotonic() - started < 10


def test_refusals_are_counted_and_logged_at_most_once_a_minute(start_node: StartNode) -> None:
    node = start_node(TOKEN_CONFIG)
    with node.client() as client:
        for _ in range(30):
            client.get("/api/objects")
            client.get("/api/objects", headers=bearer(WRONG))
            client.post("/api/objects", json={}, headers=bearer(READ))
            client.get("/api/objects", headers={"Authorization": "Bearer"})
        metrics = client.get("/metrics", headers=bearer(READ)).text
    for reason in ["missing", "invalid_token", "read_only", "malformed"]:
        assert sample(metrics, "vesper_http_auth_failures_total", reason=reason) == 30
    assert sample(metrics, "vesper_http_requests_total", endpoint="refused", status="401") == 60
    assert sample(metrics, "vesper_http_requests_total", endpoint="refused", status="403") == 30
    assert sample_or_zero(metrics, "vesper_http_requests_total", status="500") == 0
    assert node.stop() == 0
    log = node.log()
    refused = [line for line in log.splitlines() if "refused" in line and "vesper.api" in line]
    assert len(refused) == 1, log
    assert " INFO " in refused[0] and "127.0.0.1" in refused[0]
    for token in [WRITE, OLD_WRITE, READ, WRONG]:
        assert token not in log


def test_without_tokens_everything_is_open(http: httpx.Client) -> None:
    # The shared node of conftest has no token (it listens on loopback).
    assert http.post("/api/objects", json={"id": "open1"}).status_code == 201
    assert http.get("/api/objects/open1", headers=bearer(WRONG)).status_code == 200
    assert metrics_of(http)
