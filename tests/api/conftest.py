"""Fixtures that run ``vesper serve`` as a real subprocess on a free port.

Each node logs to a file; its URL is read from the ``serving http(s)://...`` line with a
deadline, and any failure to start shows the log. Nodes are stopped in ``finally``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import httpx
import pytest

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
URL_RE = re.compile(r'serving (https?://[^\s"]+)')  # text or JSON log line
FAULTY_NODE = Path(__file__).with_name("faulty_node.py")


class NodeProcess:
    """One ``vesper serve`` subprocess, its log file and its URL."""

    def __init__(
        self, args: list[str], cwd: Path, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self.cwd = cwd
        self.log_path = log_path
        self.env = {**os.environ, **env} if env else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Self:
        return self.launch().ready()

    def launch(self) -> Self:
        """Start the process without waiting for it to serve (see ``ready``)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    def ready(self) -> Self:
        """Wait until the launched process logs its URL; fail with its log if not."""
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            match = URL_RE.search(self.log())
            if match:
                self.url = match.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"vesper serve did not start; its log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit status; fails the test if it hangs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        """The exit status of a node that was told to stop."""
        assert self.proc is not None
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"vesper serve did not exit; its log:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


StartNode = Callable[..., NodeProcess]


def wait_for(
    condition: Callable[[], bool], describe: Callable[[], str], timeout_s: float = 30.0
) -> None:
    """Poll ``condition`` until true; fail with ``describe()`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s:\n{describe()}")
        time.sleep(0.02)


def write_config(directory: Path, text: str, name: str = "node.conf") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def node_command(config: Path | None, *overrides: str, faulty: bool = False) -> list[str]:
    entry = [str(FAULTY_NODE)] if faulty else ["-m", "vesper"]
    args = [sys.executable, *entry, "serve"]
    if config is not None:
        args.append(str(config))
    return [*args, "--port=0", *overrides]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    """``start_node(config_text, *overrides, faulty=False, env=None)``: a started node
    in tmp_path; ``env`` adds environment variables (faulty_node.py reads some).

    Every node started is stopped (SIGKILL if still running) when the test ends.
    """
    nodes: list[NodeProcess] = []

    def start(
        config_text: str | None = None,
        *overrides: str,
        faulty: bool = False,
        env: dict[str, str] | None = None,
    ) -> NodeProcess:
        config = write_config(tmp_path, config_text) if config_text is not None else None
        log = tmp_path / f"node-{len(nodes)}.log"
        node = NodeProcess(node_command(config, *overrides, faulty=faulty), tmp_path, log, env)
        nodes.append(node)
        return node.start()

    try:
        yield start
    finally:
        for node in nodes:
            node.kill()


BASIC_CONFIG = "branch_id = 'N1'\nsave_history = True\nwork_dir = 'data'\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node shared by a module's endpoint tests (starting one costs ~0.5 s).

    Tests on it use ids unique to the test, so they do not depend on each other.
    """
    directory = tmp_path_factory.mktemp("node")
    config = write_config(directory, BASIC_CONFIG + "api_max_body_bytes = 65536\n")
    proc = NodeProcess(node_command(config), directory, directory / "node.log")
    try:
        yield proc.start()
        assert proc.stop() == 0, proc.log()
    finally:
        proc.kill()


@pytest.fixture
def http(node: NodeProcess) -> Iterator[httpx.Client]:
    with node.client() as client:
        yield client
