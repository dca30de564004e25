"""``vesper cluster``: the demo starts, replicates, keeps going when a node goes away,
stops and starts one node on request, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import stomp
import stomp.exception

from tests.replication.harness import wait_for
from vesper.cli.cluster import _target
from vesper.cli.main import main
from vesper.errors import ConfigError

URL_RE = re.compile(r"node N\d+\s+(http://\S+)")
TOKEN_RE = re.compile(r"export VESPER_TOKEN=(\S+)")
BROKER_RE = re.compile(r"broker\s+stomp://127\.0\.0\.1:(\d+)")


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    out: Path
    work: Path
    urls: list[str]
    token: str

    @property
    def text(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def state(self) -> dict[str, Any]:
        return json.loads((self.work / "cluster.json").read_text())

    def command(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``vesper cluster ACTION ... --work-dir`` from another process, as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "vesper", "cluster", *argv, "--work-dir", str(self.work)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def objects(self, url: str) -> set[str] | None:
        """Ids stored on the node at ``url``, None while it does not answer."""
        try:
            r = httpx.get(f"{url}/api/objects", headers=self.auth, timeout=5)
        except httpx.TransportError:
            return None
        return {doc["id"] for doc in r.json()["results"]} if r.status_code == 200 else None

    def write(self, url: str, obj_id: str) -> None:
        r = httpx.post(f"{url}/api/objects", json={"id": obj_id}, headers=self.auth, timeout=10)
        assert r.status_code == 201, r.text


@contextmanager
def demo(tmp_path: Path, nodes: int = 2, stdin: int = subprocess.DEVNULL) -> Iterator[Demo]:
    """A running ``vesper cluster``, killed with its nodes if the test fails midway."""
    port = _free_ports(nodes)
    out = tmp_path / "cluster.out"
    work = tmp_path / "work"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vesper",
                "cluster",
                "--nodes",
                str(nodes),
                "--port",
                str(port),
                "--work-dir",
                str(work),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=stdin,
        )
    try:

        def started() -> list[str] | None:
            text = out.read_text()
            assert proc.poll() is None, f"the cluster exited:\n{text}"
            urls = URL_RE.findall(text)
            return urls if len(urls) == nodes and "Ctrl-C stops" in text else None

        urls = wait_for(started, 60, what=lambda: out.read_text())
        assert urls == [f"http://127.0.0.1:{port + i}" for i in range(nodes)]
        token = TOKEN_RE.search(out.read_text()).group(1)  # type: ignore[union-attr]
        yield Demo(proc, out, work, urls, token)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.poll() is None:
            pids = _node_pids(work)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                for pid in pids:  # the nodes of a killed cluster would live on
                    _kill(pid)


def test_cluster_demo_replicates_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with demo(tmp_path) as d:
        urls, text = d.urls, d.text
        assert (tmp_path / "work" / "api-token").read_text() == d.token
        for url in urls:
            assert f"dashboard {url}/ui" in text
        # The demo is set up securely: no token, no access; no broker user, no login.
        assert httpx.get(f"{urls[0]}/api/objects").status_code == 401
        broker_port = int(BROKER_RE.search(text).group(1))  # type: ignore[union-attr]
        anonymous = stomp.Connection12([("127.0.0.1", broker_port)], reconnect_attempts_max=1)
        with pytest.raises(stomp.exception.ConnectFailedException):
            anonymous.connect(wait=True)
        for name in ("api-token", "N1.conf", "N1.broker-passcode", "broker-users.toml"):
            assert (tmp_path / "work" / name).stat().st_mode & 0o077 == 0, name
        assert d.token not in " ".join(_command_lines())
        r = httpx.post(
            f"{urls[0]}/api/objects", json={"id": "hello", "text": "world"}, headers=d.auth
        )
        assert r.status_code == 201
        wait_for(
            lambda: httpx.get(f"{urls[1]}/api/objects/hello", headers=d.auth).status_code == 200,
            what="the object on the second node",
        )
        pids = _node_pids(d.work)
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(60) == 0, d.text
        assert "stopping" in d.text
        assert not [pid for pid in pids if _alive(pid)], "nodes left running"
        assert not (d.work / "cluster.json").exists()


def test_a_node_stopped_on_request_catches_up_when_started_again(tmp_path: Path) -> None:
    with demo(tmp_path) as d:
        n1, n2 = d.urls
        d.write(n1, "before")
        wait_for(lambda: d.objects(n2) == {"before"}, what="the first object on N2")
        old_pid = d.state()["nodes"]["N2"]["pid"]

        stopped = d.command("stop", "N2")
        assert stopped.returncode == 0, stopped.stderr
        assert "node N2 stopped (status 0)" in stopped.stdout
        assert not _alive(old_pid)
        node = d.state()["nodes"]["N2"]
        assert (node["state"], node["pid"], node["exit_status"]) == ("stopped", None, 0)
        assert d.objects(n2) is None  # N2 really is offline
        status = d.command("status")
        assert re.search(r"^N2\s+stopped\s", status.stdout, re.M), status.stdout
        assert re.search(r"^N1\s+running\s", status.stdout, re.M), status.stdout

        # N1 takes writes while N2 is away; nothing is reported as a failure.
        away = {f"away-{i}" for i in range(20)}
        for obj_id in sorted(away):
            d.write(n1, obj_id)
        assert "exited with" not in d.text
        assert d.proc.poll() is None

        started = d.command("start", "n2")
        assert started.returncode == 0, started.stderr
        assert f"node N2 is running again at {n2}" in started.stdout
        assert d.state()["nodes"]["N2"]["state"] == "running"
        assert d.state()["nodes"]["N2"]["pid"] not in (None, old_pid)
        wait_for(
            lambda: d.objects(n2) == {"before", *away},
            what=lambda: f"N2 catching up; it has {d.objects(n2)}",
        )
        revisions = [
            httpx.get(f"{url}/api/status", headers=d.auth).json()["revision"] for url in (n1, n2)
        ]
        assert revisions[0] == revisions[1]

        again = d.command("start", "N2")
        assert again.returncode == 0 and "already running" in again.stdout
        unknown = d.command("stop", "N9")
        assert unknown.returncode == 2 and "N1, N2, broker" in unknown.stderr
        # One cluster per work folder: a second one would fight over the stores.
        second = subprocess.run(
            [sys.executable, "-m", "vesper", "cluster", "--work-dir", str(d.work)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2 and "already running" in second.stderr

        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(60) == 0, d.text
    gone = subprocess.run(
        [sys.executable, "-m", "vesper", "cluster", "status", "--work-dir", str(d.work)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 2 and "no cluster is running" in gone.stderr


def test_a_killed_node_is_named_the_others_keep_serving_and_r_restarts_it(
    tmp_path: Path,
) -> None:
    with demo(tmp_path, stdin=subprocess.PIPE) as d:
        n1, n2 = d.urls
        assert d.proc.stdin is not None
        pid = d.state()["nodes"]["N2"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: "node N2 exited with status -9 (killed by SIGKILL)" in d.text,
            what=lambda: d.text,
        )
        text = d.text
        assert str(d.work / "N2.log") in text
        assert "vesper node N2 serving" in text  # the end of its log is shown
        assert "r2 and Enter starts it again" in text
        assert d.state()["nodes"]["N2"]["state"] == "exited"
        assert d.state()["nodes"]["N2"]["exit_status"] == -9

        # The cluster and the other node go on.
        assert d.proc.poll() is None
        d.write(n1, "while-n2-was-dead")
        assert d.objects(n1) == {"while-n2-was-dead"}

        d.proc.stdin.write(b"r2\n")
        d.proc.stdin.flush()
        wait_for(lambda: f"node N2 is running again at {n2}" in d.text, what=lambda: d.text)
        wait_for(
            lambda: d.objects(n2) == {"while-n2-was-dead"},
            what=lambda: f"N2 catching up; it has {d.objects(n2)}",
        )
        pids = _node_pids(d.work)
        d.proc.stdin.write(b"q\n")
        d.proc.stdin.flush()
        assert d.proc.wait(60) == 0, d.text
        assert not [p for p in pids if _alive(p)], "nodes left running"


def test_process_names_and_commands_without_a_running_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert [_target(t) for t in ("N2", "n2", "2", "broker", "B")] == [
        "N2",
        "N2",
        "N2",
        "broker",
        "broker",
    ]
    with pytest.raises(ConfigError):
        _target("node-two")
    assert main(["cluster", "stop", "N2", "--work-dir", str(tmp_path)]) == 2
    assert "no cluster is running" in capsys.readouterr().err
    assert main(["cluster", "stop", "N2"]) == 2
    assert "--work-dir" in capsys.readouterr().err


def _node_pids(work: Path) -> list[int]:
    try:
        state = json.loads((work / "cluster.json").read_text())
    except (OSError, ValueError):
        return []
    pids = [n["pid"] for n in state["nodes"].values()] + [state["broker"]["pid"]]
    return [pid for pid in pids if pid is not None]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits for its parent to collect it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _command_lines() -> list[str]:
    """Every process's command line, as any local user can read them."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, UnicodeDecodeError):
            continue
    return out


def _free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports, below the ephemeral range so that no
    outgoing connection takes one between this check and the cluster binding it."""
    for _ in range(100):
        port = random.randint(10000, 32000 - n)
        socks = [socket.socket() for _ in range(n)]
        try:
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", port + i))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return port
    raise AssertionError(f"no {n} consecutive free ports")
