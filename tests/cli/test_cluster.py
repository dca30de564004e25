"""``vesper cluster``: the demo starts, replicates, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.replication.harness import wait_for

URL_RE = re.compile(r"node N\d+\s+(http://\S+)")


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
        r = httpx.post(f"{urls[0]}/api/objects", json={"id": "hello", "text": "world"})
        assert r.status_code == 201
        wait_for(
            lambda: httpx.get(f"{urls[1]}/api/objects/hello").status_code == 200,
            what="the object on the second node",
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopping" in log.read_text()


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
