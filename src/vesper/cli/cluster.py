"""``vesper cluster [--nodes N]``: the demo. An embedded broker and N replicating nodes
on consecutive ports, each a real ``vesper serve`` process; Ctrl-C stops them all."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from vesper.broker.process import BrokerProcess
from vesper.errors import ConfigError

START_TIMEOUT_S = 30.0
URL_RE = re.compile(rb"serving (http://\S+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument(
        "--port",
        type=int,
        default=8001,
        help="HTTP port of the first node; the others follow (default 8001)",
    )
    parser.add_argument(
        "--broker-port",
        type=int,
        default=0,
        help="STOMP port of the embedded broker (default: a free one)",
    )
    parser.add_argument("--channel", default="demo", help="replication channel")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="folder for the stores, broker data and logs (default: a new temporary folder)",
    )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 26:
        raise ConfigError(f"--nodes: expected 1 to 26, got {args.nodes}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vesper-cluster-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    # The demo's broker listens on loopback only, so its nodes connect anonymously.
    broker = BrokerProcess(
        work / "broker",
        port=args.broker_port,
        control=False,
        allow_anonymous=True,
        log_path=work / "broker.log",
    )
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        broker.start()
        print(f"broker   stomp://{broker.host}:{broker.port}  (log {work / 'broker.log'})")
        urls = []
        for i in range(args.nodes):
            branch = f"N{i + 1}"
            log_path = work / f"{branch}.log"
            with open(log_path, "ab") as log:
                nodes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "vesper",
                            "serve",
                            f"--branch_id={branch}",
                            "--save_history=True",
                            f"--port={args.port + i}",
                            f"--replication_hosts={broker.host}:{broker.port}",
                            f"--replication_channel={args.channel}",
                            f"--work_dir={work / 'data'}",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
            urls.append(_wait_url(nodes[-1], log_path))
            print(f"node {branch:3} {urls[-1]}  (log {log_path})")
        print(
            f'\nTry:\n  curl -XPOST {urls[0]}/api/objects -d \'{{"id": "hello", '
            f'"text": "world"}}\'\n  curl {urls[-1]}/api/objects/hello\n'
            f"  curl {urls[-1]}/api/status\nCtrl-C stops the cluster.",
            flush=True,
        )
        while all(n.poll() is None for n in nodes) and broker.running:
            time.sleep(0.5)
        print("a process of the cluster exited; stopping the others", file=sys.stderr)
        return 1
    except _Stop:
        print("\nstopping", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for node in nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
        broker.stop()


def _wait_url(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = URL_RE.search(log_path.read_bytes())
        if match:
            return match.group(1).decode()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise ConfigError(
        f"a node did not start; its log ({log_path}):\n"
        f"{log_path.read_text(errors='replace')[-2000:]}"
    )
