"""HTTPS with ``api_tls_cert`` and ``api_tls_key``: trusted, untrusted, unusable files."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import BASIC_CONFIG, StartNode
from tests.api.helpers import address, read_until_closed
from tests.tlsutil import make_ca, make_cert, self_signed
from vesper.api.server import tls_context
from vesper.config import Settings
from vesper.errors import ConfigError


def tls_config(cert: Path, key: Path) -> str:
    return BASIC_CONFIG + f"api_tls_cert = {str(cert)!r}\napi_tls_key = {str(key)!r}\n"


def test_https_with_a_trusted_authority(start_node: StartNode, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    cert, key = make_cert(ca, tmp_path / "server")
    node = start_node(tls_config(cert, key) + "api_header_timeout = 1\n")
    assert node.url.startswith("https://127.0.0.1:")
    assert "serving https://" in node.log()
    trusted = ssl.create_default_context(cafile=str(ca.cert_path))
    with httpx.Client(base_url=node.url, verify=trusted, timeout=30) as http:
        assert http.get("/health").json()["status"] == "ok"
        http.post("/api/objects", json={"id": "tls"}).raise_for_status()
        assert http.get("/api/objects/tls").json() == {"id": "tls"}
    # Plain HTTP to the HTTPS port gets nowhere.
    with pytest.raises(httpx.HTTPError), httpx.Client(timeout=10) as plain:
        plain.get(node.url.replace("https://", "http://") + "/health")
    # A connection that never starts its handshake is closed at api_header_timeout.
    host, port = address(node.url)
    with socket.create_connection((host, port), timeout=10) as raw:
        started = time.monotonic()
        _, closed = read_until_closed(raw, 10)
    assert closed is not None and closed - started < 3
    assert node.stop() == 0
    assert "Traceback" not in node.log()


def test_the_context_requires_tls_1_2(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    cert, key = make_cert(ca, tmp_path)
    context = tls_context(Settings(api_tls_cert=str(cert), api_tls_key=str(key)))
    assert context is not None and context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert tls_context(Settings()) is None


def test_clients_refuse_an_untrusted_certificate(start_node: StartNode, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    rogue_cert, rogue_key = self_signed(tmp_path / "rogue")
    node = start_node(tls_config(rogue_cert, rogue_key))
    trusted = ssl.create_default_context(cafile=str(ca.cert_path))
    for verify in [trusted, True]:  # our authority, then the system's
        with (
            httpx.Client(base_url=node.url, verify=verify, timeout=30) as http,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            http.get("/health")
    assert node.stop() == 0


def serve_fails(tmp_path: Path, config: str) -> str:
    (tmp_path / "node.conf").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "vesper", "serve", "node.conf", "--port=0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "data").exists()  # the store was never opened
    return lines[0]


def test_unusable_tls_files_are_one_line_naming_the_variable(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    cert, key = make_cert(ca, tmp_path / "server")
    other_cert, other_key = self_signed(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes(key.read_bytes())
    unreadable.chmod(0)
    cases = [
        (tmp_path / "missing.pem", key, "api_tls_cert: cannot read"),
        (cert, tmp_path / "missing.key", "api_tls_key: cannot read"),
        (garbage, key, "api_tls_cert: "),
        (cert, garbage, "api_tls_key: "),
        (cert, other_key, "api_tls_key: "),  # a key, but not this certificate's
        (other_cert, key, "is not the key of the certificate"),
        (key, cert, "api_tls_cert: "),  # swapped
    ]
    if not _can_read(unreadable):  # root reads anything
        cases.append((cert, unreadable, "api_tls_key: cannot read"))
    for cert_path, key_path, needle in cases:
        line = serve_fails(tmp_path, tls_config(cert_path, key_path))
        assert line.startswith("vesper serve: ") and needle in line, (cert_path, key_path, line)
    with pytest.raises(ConfigError, match="api_tls_key"):
        tls_context(Settings(api_tls_cert=str(cert), api_tls_key=str(other_key)))


def _can_read(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True
