"""``vesper cluster [--nodes N]``: the demo. An embedded broker and N replicating nodes
on consecutive ports, each a real ``vesper serve`` process; Ctrl-C stops them all.

It is set up as a deployment should be: the broker admits only the users of its users
file, each node logs in as its own user with rights on its channel only, and the HTTP
API wants a bearer token. Secrets live in files of mode 0600 in the work folder, never
on a command line, where any local user could read them with ``ps``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from vesper.broker.adduser import add_user
from vesper.broker.process import BrokerProcess
from vesper.broker.users import read_users_file
from vesper.errors import ConfigError

START_TIMEOUT_S = 30.0
URL_RE = re.compile(rb"serving (https?://\S+)")


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
    token = _secret_file(work / "api-token", secrets.token_urlsafe(32))
    users_file = work / "broker-users.toml"
    broker = BrokerProcess(
        work / "broker",
        port=args.broker_port,
        control=False,
        users=users_file,
        log_path=work / "broker.log",
    )
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        branches = [f"N{i + 1}" for i in range(args.nodes)]
        passcodes = {b: _broker_user(users_file, b, args.channel) for b in branches}
        broker.start()
        print(f"broker   stomp://{broker.host}:{broker.port}  (log {work / 'broker.log'})")
        urls = []
        for i, branch in enumerate(branches):
            settings = {
                "branch_id": branch,
                "save_history": True,
                "port": args.port + i,
                "work_dir": str(work / "data"),
                "replication_hosts": f"{broker.host}:{broker.port}",
                "replication_channel": args.channel,
                "replication_login": branch,
                "replication_passcode": passcodes[branch],
                "api_token": token,
            }
            config = work / f"{branch}.conf"
            config.unlink(missing_ok=True)  # the broker's port may differ from last time
            _secret_file(config, "".join(f"{k} = {v!r}\n" for k, v in settings.items()))
            log_path = work / f"{branch}.log"
            with open(log_path, "ab") as log:
                nodes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "vesper", "serve", str(config)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
            urls.append(_wait_url(nodes[-1], log_path))
            print(f"node {branch:3} {urls[-1]}  (log {log_path})")
        auth = '-H "Authorization: Bearer $VESPER_TOKEN"'
        print(
            f"\nThe HTTP API wants this token (also in {work / 'api-token'}):\n"
            f"  export VESPER_TOKEN={token}\n"
            f"Try:\n  curl {auth} -XPOST {urls[0]}/api/objects"
            f' -d \'{{"id": "hello", "text": "world"}}\'\n'
            f"  curl {auth} {urls[-1]}/api/objects/hello\n"
            f"  curl {auth} {urls[-1]}/api/status\nCtrl-C stops the cluster.",
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


def _secret_file(path: Path, text: str) -> str:
    """Write ``text`` to ``path``, readable by this user only, unless the file exists;
    return what it holds. A second run over the same work folder keeps the secrets of
    the first, so its nodes still log in and its clients keep their token."""
    if path.exists():
        return path.read_text(encoding="utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def _broker_user(users_file: Path, branch: str, channel: str) -> str:
    """Add the node's broker user (once) and return its passcode. It may read its
    channel, the announcements and its own catch-up queue, and write to the channel,
    the announcements and the other nodes' catch-up queues: nothing else."""
    secret = users_file.with_name(f"{branch}.broker-passcode")
    passcode = _secret_file(secret, secrets.token_urlsafe(24))
    if not users_file.exists() or branch not in read_users_file(users_file):
        topics = [f"/topic/{channel}", f"/topic/{channel}.sync"]
        add_user(
            users_file,
            branch,
            passcode,
            read=[*topics, f"/queue/{channel}.{branch}"],
            write=[*topics, f"/queue/{channel}.*"],
        )
    return passcode


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
