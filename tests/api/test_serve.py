"""``vesper serve`` as a process: options, configuration errors, signals, durability."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import (
    BASIC_CONFIG,
    NodeProcess,
    StartNode,
    node_command,
    wait_for,
    write_config,
)
from vesper import __version__

RUN_TIMEOUT_S = 60


def vesper(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vesper", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_help_and_version() -> None:
    top = vesper("--help")
    assert top.returncode == 0 and "serve" in top.stdout
    version = vesper("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"vesper {__version__}"
    serve = vesper("serve", "--help")
    assert serve.returncode == 0
    assert "CONFIG" in serve.stdout and "--name=value" in serve.stdout


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("vesper serve: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("config", "overrides", "needles"),
    [
        ("prot = 8001\n", [], ("prot", "port")),
        ("port = 'eighty'\n", [], ("port",)),
        ("branch_id = 'N1'\n", ["--port=99999"], ("port", "99999")),
        ("branch_id = 'not valid!'\n", [], ("branch_id",)),
        ("port = true\n", [], ("True",)),
        ("replication_hosts = 'localhost:61613'\n", [], ("save_history",)),
        ("storage_url = 'postgres://x'\n", [], ("storage_url",)),
    ],
)  # fmt: skip
def test_configuration_errors_are_one_line_and_exit_2(
    tmp_path: Path, config: str, overrides: list[str], needles: tuple[str, ...]
) -> None:
    path = write_config(tmp_path, config)
    assert_one_line_error(vesper("serve", str(path), *overrides, cwd=tmp_path), *needles)
    assert not (tmp_path / "vesper_work").exists()  # nothing was started or created


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(vesper("serve", "nowhere.conf", cwd=tmp_path), "nowhere.conf")


def test_an_override_without_equals_sign_is_explained(tmp_path: Path) -> None:
    assert_one_line_error(vesper("serve", "--port", "8001", cwd=tmp_path), "--port=<value>")


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = vesper("serve", f"--port={port}", "--work_dir=data", cwd=tmp_path)
    assert_one_line_error(result, f"127.0.0.1:{port}")


def test_a_store_in_use_by_another_node_is_one_line(start_node: StartNode, tmp_path: Path) -> None:
    start_node(BASIC_CONFIG)
    result = vesper("serve", "node.conf", "--port=0", cwd=tmp_path)
    assert_one_line_error(result, "in use")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_exits_0_and_closes_the_store(start_node: StartNode, sig: int) -> None:
    node = start_node(BASIC_CONFIG)
    with node.client() as http:
        http.post("/api/objects", json={"id": "a"}).raise_for_status()
    assert node.stop(sig) == 0, node.log()
    assert "vesper node N1 stopped" in node.log()
    assert "Traceback" not in node.log()
    # The store was closed cleanly: a new node opens the same file at once.
    again = start_node(BASIC_CONFIG)
    with again.client() as http:
        assert http.get("/api/objects/a").json() == {"id": "a"}
    assert again.stop() == 0


def test_toml_and_json_configs(start_node: StartNode, tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text('branch_id = "T1"\nwork_dir = "t"\n')
    node = start_node(None, str(tmp_path / "node.toml"))
    with node.client() as http:
        assert http.get("/api/status").json()["branch_id"] == "T1"
    assert node.stop() == 0
    (tmp_path / "node.json").write_text(json.dumps({"branchId": "J1", "work_dir": "j"}))
    node = start_node(None, str(tmp_path / "node.json"))
    with node.client() as http:
        assert http.get("/api/status").json()["branch_id"] == "J1"
    assert node.stop() == 0
    assert (tmp_path / "t" / "T1.db").exists() and (tmp_path / "j" / "J1.db").exists()


def test_sigterm_finishes_a_request_in_flight(start_node: StartNode) -> None:
    node = start_node(BASIC_CONFIG)
    # 6 MB, read through a small receive buffer: the server is still sending when the
    # signal arrives, whatever the kernel buffers.
    docs = [{"id": f"o{i:05d}", "pad": "z" * 1000} for i in range(6000)]
    small_buffer = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)]
    transport = httpx.HTTPTransport(socket_options=small_buffer)
    with node.client(transport=transport) as http:
        http.post("/api/objects", json=docs).raise_for_status()
        with http.stream("GET", "/api/objects") as listing:
            chunks = listing.iter_bytes()
            received = [next(chunks)]
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "Waiting for connections to close" in node.log(), node.log)
            assert node.proc.poll() is None
            received += list(chunks)
    body = json.loads(b"".join(received))
    assert [d["id"] for d in body["results"]] == [d["id"] for d in docs]
    assert node.wait() == 0, node.log()


def test_acknowledged_writes_survive_kill_9(start_node: StartNode) -> None:
    node = start_node(BASIC_CONFIG)
    acknowledged = []
    with node.client() as http:
        for i in range(40):
            r = http.post("/api/objects", json={"id": f"k{i}", "i": i})
            assert r.status_code == 201
            acknowledged.append(f"k{i}")
        r = http.patch("/api/objects/k0", json={"patched": True})
        assert r.status_code == 200
        revision = r.json()["revision"]
        node.stop(signal.SIGKILL)  # right after the last 2xx, no clean shutdown
    restarted = start_node(BASIC_CONFIG)
    with restarted.client() as http:
        assert http.get("/api/status").json()["revision"] == revision
        for i, obj_id in enumerate(acknowledged):
            doc = http.get(f"/api/objects/{obj_id}").json()
            assert doc["i"] == i
        assert http.get("/api/objects/k0").json()["patched"] is True
    assert restarted.stop() == 0


def test_overrides_may_come_before_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASIC_CONFIG)
    command = node_command(config)
    assert command[-1] == "--port=0"  # what the fixtures run: overrides after CONFIG
    reordered = [*command[:-2], "--port=0", "--branch_id=R1", str(config)]
    node = NodeProcess(reordered, tmp_path, tmp_path / "reordered.log")
    try:
        node.start()
        with node.client() as http:
            assert http.get("/api/status").json()["branch_id"] == "R1"
        assert node.stop() == 0
    finally:
        node.kill()


def test_a_second_sigterm_while_stopping_still_exits_0(start_node: StartNode) -> None:
    node = start_node(BASIC_CONFIG)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "Shutting down" in node.log(), node.log)
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGTERM)
    assert node.wait() == 0, node.log()


def test_a_node_logging_json_is_found_by_its_serving_line(start_node: StartNode) -> None:
    """The start-up helpers (this suite's, the benches', ``vesper cluster``'s) read the
    URL from the log in either format."""
    node = start_node(BASIC_CONFIG + "log_format = 'json'\n")
    assert node.url.startswith("http://127.0.0.1:") and '"' not in node.url
    with node.client() as client:
        assert client.get("/health").status_code == 200
    serving = [line for line in node.log().splitlines() if " serving " in line]
    assert serving and all(line.startswith("{") for line in serving)
