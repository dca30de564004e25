"""``vesper cluster``: the demo starts, replicates, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import stomp
import stomp.exception

from tests.replication.harness import wait_for

URL_RE = re.compile(r"node N\d+\s+(http://\S+)")
TOKEN_RE = re.compile(r"export VESPER_TOKEN=(\S+)")
BROKER_RE = re.compile(r"broker\s+stomp://127\.0\.0\.1:(\d+)")


def test_cluster_demo_replicates_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port_pair()
    log = tmp_path / "cluster.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vesper",
                "cluster",
                "--nodes",
                "2",
                "--port",
                str(port),
                "--work-dir",
                str(tmp_path / "work"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        urls = wait_for(
            lambda: (
                len(URL_RE.findall(log.read_text())) == 2
                and "Ctrl-C stops" in log.read_text()
                and URL_RE.findall(log.read_text())
            ),
            60,
            what=lambda: log.read_text(),
        )
        assert urls == [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
        text = log.read_text()
        token = TOKEN_RE.search(text).group(1)  # type: ignore[union-attr]
        assert (tmp_path / "work" / "api-token").read_text() == token
        auth = {"Authorization": f"Bearer {token}"}
        # The demo is set up securely: no token, no access; no broker user, no login.
        assert httpx.get(f"{urls[0]}/api/objects").status_code == 401
        broker_port = int(BROKER_RE.search(text).group(1))  # type: ignore[union-attr]
        anonymous = stomp.Connection12([("127.0.0.1", broker_port)], reconnect_attempts_max=1)
        with pytest.raises(stomp.exception.ConnectFailedException):
            anonymous.connect(wait=True)
        for name in ("api-token", "N1.conf", "N1.broker-passcode", "broker-users.toml"):
            assert (tmp_path / "work" / name).stat().st_mode & 0o077 == 0, name
        assert token not in " ".join(_command_lines())
        r = httpx.post(
            f"{urls[0]}/api/objects", json={"id": "hello", "text": "world"}, headers=auth
        )
        assert r.status_code == 201
        wait_for(
            lambda: httpx.get(f"{urls[1]}/api/objects/hello", headers=auth).status_code == 200,
            what="the object on the second node",
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopping" in log.read_text()


def _command_lines() -> list[str]:
    """Every process's command line, as any local user can read them."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, UnicodeDecodeError):
            continue
    return out


def _free_port_pair() -> int:
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", 0))
                port = a.getsockname()[1]
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")
