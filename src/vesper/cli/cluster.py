"""``vesper cluster [--nodes N]``: the demo. An embedded broker and N replicating nodes
on consecutive ports, each a real ``vesper serve`` process; Ctrl-C stops them all.

It is set up as a deployment should be: the broker admits only the users of its users
file, each node logs in as its own user with rights on its channel only, and the HTTP
API wants a bearer token. Secrets live in files of mode 0600 in the work folder, never
on a command line, where any local user could read them with ``ps``.

A process that exits is reported by name, with its exit status and the end of its log,
and the others keep running: a node that went away and comes back catching up is what
the demo is for. Any node, or the broker, can be stopped and started again while the
cluster runs, by a line typed in its terminal (``s2`` stops N2, ``r2`` starts it again)
or from another shell::

    vesper cluster stop N2 --work-dir W      # also: start, restart, status

How the commands reach the running cluster: it holds an ``flock`` on ``cluster.lock``
in the work folder, keeps ``cluster.json`` there (every process with its pid, state,
URLs, log and command) and polls ``control/`` for request files. ``stop`` and ``start``
write a request and wait for the reply file. The running cluster alone starts and
signals its children: a pid read from a file may belong to an unrelated process by
then, and the cluster must know that a stop was asked for, or it would report it as a
failure. The lock tells a running cluster from a stale ``cluster.json`` (the kernel
drops it when the cluster dies, even by SIGKILL); plain files rather than a Unix socket
because a socket's path is limited to about 100 bytes and a work folder may be deeper.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from vesper.broker.adduser import add_user
from vesper.broker.process import BrokerProcess
from vesper.broker.users import read_users_file
from vesper.errors import ConfigError, VesperError

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = STOP_TIMEOUT_S + START_TIMEOUT_S + 30.0
"""How long ``vesper cluster restart`` waits for the running cluster's reply."""
POLL_S = 0.2
LOG_LINES = 10
"""Lines of a log shown when its process exits."""
URL_RE = re.compile(rb'serving (https?://[^\s"]+)')  # text or JSON log line
STATE_FILE = "cluster.json"
LOCK_FILE = "cluster.lock"
CONTROL_DIR = "control"
BROKER = "broker"
ACTIONS = ("stop", "start", "restart", "status")
KEY_RE = re.compile(r"(stop|start|restart|s|r)\s*(\S+)", re.IGNORECASE)
KEY_ACTIONS = {"s": "stop", "stop": "stop", "r": "restart", "restart": "restart", "start": "start"}
KEYS_HELP = (
    "Type s2 and Enter to stop N2, r2 to start it again (rb, sb: the broker); "
    "Enter alone lists the processes, q quits."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = (
        "%(prog)s [-h] [--nodes N] [--port PORT] [--broker-port PORT] [--channel NAME] "
        "[--work-dir DIR]\n       %(prog)s {stop,start,restart} NAME --work-dir DIR\n"
        "       %(prog)s status --work-dir DIR"
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=ACTIONS,
        metavar="ACTION",
        help="stop, start or restart one process of the cluster running in --work-dir, "
        "or show its status; leave out to run a cluster",
    )
    parser.add_argument("target", nargs="?", metavar="NAME", help="N1, N2, ... or broker")
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
        help="folder for the stores, broker data and logs (default: a new temporary "
        "folder); with ACTION, the folder of the running cluster",
    )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run(args: argparse.Namespace) -> int:
    if args.action is not None:
        return _command(args)
    if args.target is not None:
        raise ConfigError(f"unexpected {args.target!r}: an ACTION (stop, start ...) comes first")
    if not 1 <= args.nodes <= 26:
        raise ConfigError(f"--nodes: expected 1 to 26, got {args.nodes}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vesper-cluster-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cluster = _Cluster(work, args)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    try:
        cluster.start()
        cluster.watch()
    except _Stop:
        print("\nstopping", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.close()
    return 0


@dataclass
class _Node:
    name: str
    config: Path
    log_path: Path
    url: str
    proc: subprocess.Popen[bytes] | None = None
    state: str = "starting"
    """starting, running, stopped (asked for) or exited (not asked for)."""
    exit_status: int | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "vesper", "serve", str(self.config)]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _Cluster:
    """The broker and the nodes, watched by the main thread (the only one here)."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.lock = _take_lock(work)
        self.users_file = work / "broker-users.toml"
        self.broker = BrokerProcess(
            work / "broker",
            port=args.broker_port,
            control=False,
            users=self.users_file,
            log_path=work / "broker.log",
        )
        self.broker_state = "starting"
        self.broker_status: int | None = None
        self.nodes: dict[str, _Node] = {}
        self.control = work / CONTROL_DIR
        # Whoever may write here may stop the nodes: this user only.
        self.control.mkdir(mode=0o700, exist_ok=True)
        for stale in self.control.iterdir():  # left by a cluster that was killed
            stale.unlink(missing_ok=True)
        self.keys = _Keys(sys.stdin)

    # -- starting and stopping ------------------------------------------------------

    def start(self) -> None:
        args, work = self.args, self.work
        token = _secret_file(work / "api-token", secrets.token_urlsafe(32))
        branches = [f"N{i + 1}" for i in range(args.nodes)]
        passcodes = {b: _broker_user(self.users_file, b, args.channel) for b in branches}
        self._write_state()
        self.broker.start()
        self.broker_state = "running"
        print(f"broker   {self.broker.url}  (log {self.broker.log_path})")
        for i, branch in enumerate(branches):
            settings = {
                "branch_id": branch,
                "save_history": True,
                "port": args.port + i,
                "work_dir": str(work / "data"),
                "replication_hosts": f"{self.broker.host}:{self.broker.port}",
                "replication_channel": args.channel,
                "replication_login": branch,
                "replication_passcode": passcodes[branch],
                "api_token": token,
            }
            config = work / f"{branch}.conf"
            config.unlink(missing_ok=True)  # the broker's port may differ from last time
            _secret_file(config, "".join(f"{k} = {v!r}\n" for k, v in settings.items()))
            node = _Node(
                branch, config, work / f"{branch}.log", f"http://127.0.0.1:{args.port + i}"
            )
            self.nodes[branch] = node
            self._start_node(node)
            print(f"node {branch:3} {node.url}  dashboard {node.url}/ui  (log {node.log_path})")
        first, last = self.nodes[branches[0]].url, self.nodes[branches[-1]].url
        auth = '-H "Authorization: Bearer $VESPER_TOKEN"'
        other = branches[1] if len(branches) > 1 else branches[0]
        control = f"{_vesper_command()} cluster stop {other} --work-dir {shlex.quote(str(work))}"
        print(
            f"\nThe HTTP API wants this token (also in {work / 'api-token'}):\n"
            f"  export VESPER_TOKEN={token}\n"
            f"Try:\n  curl {auth} -XPOST {first}/api/objects"
            f' -d \'{{"id": "hello", "text": "world"}}\'\n'
            f"  curl {auth} {last}/api/objects/hello\n"
            f"  curl {auth} {last}/api/status\n"
            f"Stop a node, write to another, start it again and watch it catch up: type\n"
            f"s{other[1:]} and Enter to stop {other}, r{other[1:]} to start it again "
            f"(sb, rb: the broker; Enter alone lists the processes), or from another shell:\n"
            f"  {control}    (also start, restart, status)\n"
            f"Ctrl-C stops the cluster.",
            flush=True,
        )

    def watch(self) -> None:
        """Report exits, serve requests and typed lines until a stop signal or q."""
        while True:
            self._check_exits()
            self._serve_requests()
            for line in self.keys.read(POLL_S):
                self._typed(line)

    def close(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
        try:
            self.broker.stop()
        finally:
            (self.work / STATE_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                for leftover in self.control.iterdir():
                    leftover.unlink(missing_ok=True)
            os.close(self.lock)

    # -- watching -------------------------------------------------------------------

    def _check_exits(self) -> None:
        exited = []
        for node in self.nodes.values():
            if node.state == "running" and not node.alive:
                assert node.proc is not None
                node.state, node.exit_status = "exited", node.proc.returncode
                exited.append((f"node {node.name}", node.exit_status, node.log_path, node.name))
        if self.broker_state == "running" and not self.broker.running:
            self.broker_state, self.broker_status = "exited", self.broker.stop()
            exited.append(("the broker", self.broker_status, self.broker.log_path, BROKER))
        if exited:
            self._write_state()  # first: whoever reads the report finds it there too
        for what, status, log_path, name in exited:
            _report(what, status, log_path, name, self.work)

    def _serve_requests(self) -> None:
        try:
            requests = sorted(self.control.glob("*.request"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return  # one vanished between listing and stat: taken next round
        for path in requests:
            try:
                request = json.loads(path.read_text(encoding="utf-8"))
                path.unlink()
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
                continue
            ok, message = self.do(str(request.get("action")), str(request.get("target")))
            print(message, file=sys.stdout if ok else sys.stderr, flush=True)
            _write_atomic(path.with_suffix(".reply"), json.dumps({"ok": ok, "message": message}))

    def _typed(self, line: str) -> None:
        if not line or line.lower() == "status":
            print(_status_text(self.state()), flush=True)
            return
        if line.lower() in ("q", "quit", "exit"):
            raise _Stop
        match = KEY_RE.fullmatch(line)
        if match is None:
            print(f"{line!r}? {KEYS_HELP}", flush=True)
            return
        action = KEY_ACTIONS[match.group(1).lower()]
        try:
            target = _target(match.group(2))
        except ConfigError as exc:
            print(exc, flush=True)
            return
        ok, message = self.do(action, target)
        print(message, file=sys.stdout if ok else sys.stderr, flush=True)

    # -- stopping and starting one process ------------------------------------------

    def do(self, action: str, target: str) -> tuple[bool, str]:
        """Carry out ``action`` on ``target``; whether it worked and what to say."""
        self._check_exits()  # an exit not yet seen is reported first, as an exit
        if target != BROKER and target not in self.nodes:
            known = ", ".join([*self.nodes, BROKER])
            return False, f"no process {target!r} in this cluster (it has {known})"
        if action not in ("stop", "start", "restart"):
            return False, f"unknown action {action!r} (stop, start or restart)"
        try:
            if target == BROKER:
                message = self._broker_action(action)
            else:
                message = self._node_action(action, self.nodes[target])
        except (VesperError, TimeoutError) as exc:
            # TimeoutError: the broker ignored SIGTERM and was killed. Either way the
            # cluster goes on; only this request failed.
            return False, str(exc)
        finally:
            self._write_state()
        return True, message

    def _node_action(self, action: str, node: _Node) -> str:
        said = []
        if action in ("stop", "restart"):
            if node.alive:
                said.append(self._stop_node(node))
            elif action == "stop":
                return f"node {node.name} is not running"
        if action in ("start", "restart"):
            if node.alive:
                return f"node {node.name} is already running at {node.url}"
            print(f"starting node {node.name} ...", flush=True)
            self._start_node(node)
            said.append(f"node {node.name} is running again at {node.url}")
        return "; ".join(said)

    def _stop_node(self, node: _Node) -> str:
        assert node.proc is not None
        print(f"stopping node {node.name} ...", flush=True)
        node.state = "stopped"  # before the signal: this exit is no failure
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.exit_status = node.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.exit_status = node.proc.wait()
            return f"node {node.name} ignored SIGTERM for {STOP_TIMEOUT_S:g} s: killed"
        return f"node {node.name} stopped ({_describe(node.exit_status)})"

    def _start_node(self, node: _Node) -> None:
        offset = node.log_path.stat().st_size if node.log_path.exists() else 0
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(
                node.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        node.state, node.exit_status = "starting", None
        self._write_state()
        try:
            node.url = _wait_url(node.proc, node.log_path, offset)
        except ConfigError:
            if node.proc.poll() is None:
                node.proc.kill()
            node.state, node.exit_status = "exited", node.proc.wait()
            raise
        node.state = "running"
        self._write_state()

    def _broker_action(self, action: str) -> str:
        said = []
        if action in ("stop", "restart"):
            if self.broker.running:
                print("stopping the broker ...", flush=True)
                self.broker_state = "stopped"
                try:
                    self.broker_status = self.broker.stop()
                except TimeoutError:
                    self.broker_state = "exited"
                    raise
                said.append(
                    f"the broker stopped ({_describe(self.broker_status)}); the nodes keep "
                    "serving and keep their changes in their outboxes until it is back"
                )
            elif action == "stop":
                return "the broker is not running"
        if action in ("start", "restart"):
            if self.broker.running:
                return f"the broker is already running at {self.broker.url}"
            self.broker_state = "starting"
            try:
                self.broker.start()  # same port and data folder: durable subscriptions
            except VesperError:
                self.broker_state = "exited"
                raise
            self.broker_state, self.broker_status = "running", None
            said.append(
                f"the broker is running again at {self.broker.url}; the nodes reconnect "
                "within seconds"
            )
        return "; ".join(said)

    # -- the state file ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "work_dir": str(self.work),
            "token_file": str(self.work / "api-token"),
            "broker": {
                "url": self.broker.url if self.broker.port else None,
                "pid": self.broker.pid if self.broker.running else None,
                "state": self.broker_state,
                "exit_status": self.broker_status,
                "log": str(self.broker.log_path),
                "command": self.broker.command(),
            },
            "nodes": {
                name: {
                    "url": node.url,
                    "dashboard": f"{node.url}/ui",
                    "pid": node.proc.pid if node.alive and node.proc is not None else None,
                    "state": node.state,
                    "exit_status": node.exit_status,
                    "log": str(node.log_path),
                    "config": str(node.config),
                    "command": node.command,
                }
                for name, node in self.nodes.items()
            },
        }

    def _write_state(self) -> None:
        _write_atomic(self.work / STATE_FILE, json.dumps(self.state(), indent=2) + "\n")


class _Keys:
    """Lines typed in the cluster's terminal (or piped to it), read between rounds of
    the watch loop. A cluster in the background does not read its terminal: that would
    stop it (SIGTTIN); ``fg`` brings the keys back."""

    def __init__(self, stream: Any) -> None:
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None
        self._buffer = b""

    def read(self, timeout: float) -> list[str]:
        fd = self.fd
        if fd is None or not self._foreground(fd):
            time.sleep(timeout)
            return []
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            data = os.read(fd, 4096) if ready else None
        except (OSError, ValueError):
            data = b""
        if data is None:
            return []
        if not data:  # end of input (/dev/null, a closed pipe): stop reading
            self.fd = None
            rest, self._buffer = self._buffer, b""
            return [rest.decode(errors="replace").strip()] if rest.strip() else []
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        return [line.decode(errors="replace").strip() for line in lines]

    @staticmethod
    def _foreground(fd: int) -> bool:
        if not os.isatty(fd):
            return True
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            return True


# -- the commands talking to a running cluster ------------------------------------------


def _command(args: argparse.Namespace) -> int:
    if args.work_dir is None:
        raise ConfigError(
            f"{args.action} needs --work-dir: the folder of the running cluster "
            "(the cluster prints it)"
        )
    work = Path(args.work_dir).resolve()
    if not cluster_running(work):
        raise ConfigError(f"no cluster is running in {work}")
    state = json.loads((work / STATE_FILE).read_text(encoding="utf-8"))
    if args.action == "status":
        if args.target is not None:
            raise ConfigError("status takes no NAME")
        print(_status_text(state))
        return 0
    if args.target is None:
        raise ConfigError(f"{args.action} needs a NAME: {', '.join([*state['nodes'], BROKER])}")
    target = _target(args.target)
    if target != BROKER and target not in state["nodes"]:
        known = ", ".join([*state["nodes"], BROKER])
        raise ConfigError(f"no process {args.target!r} in the cluster in {work} (it has {known})")
    request_id = uuid.uuid4().hex
    request = work / CONTROL_DIR / f"{request_id}.request"
    reply_path = request.with_suffix(".reply")
    _write_atomic(request, json.dumps({"action": args.action, "target": target}))
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        if reply_path.exists():
            reply = json.loads(reply_path.read_text(encoding="utf-8"))
            reply_path.unlink(missing_ok=True)
            print(reply["message"], file=sys.stdout if reply["ok"] else sys.stderr)
            return 0 if reply["ok"] else 1
        if not cluster_running(work):
            raise ConfigError(f"the cluster in {work} stopped before it answered")
        time.sleep(0.05)
    request.unlink(missing_ok=True)
    raise ConfigError(f"the cluster in {work} did not answer within {REPLY_TIMEOUT_S:g} s")


def cluster_running(work: Path) -> bool:
    """Whether a cluster holds the lock of ``work`` (a killed one holds nothing)."""
    try:
        fd = os.open(work / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _take_lock(work: Path) -> int:
    fd = os.open(work / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"a cluster is already running in {work} ('vesper cluster status --work-dir "
            f"{shlex.quote(str(work))}' shows it); choose another --work-dir"
        ) from None
    return fd


def _target(text: str) -> str:
    """``N2``, ``n2`` or ``2`` -> ``N2``; ``broker`` or ``b`` -> ``broker``."""
    lowered = text.strip().lower()
    if lowered in (BROKER, "b"):
        return BROKER
    match = re.fullmatch(r"n?(\d{1,2})", lowered)
    if match is None:
        raise ConfigError(f"{text!r} is no process name: N1, N2, ... or broker")
    return f"N{int(match.group(1))}"


def _status_text(state: dict[str, Any]) -> str:
    broker = state["broker"]
    rows = [(BROKER, broker["state"], broker["url"] or "", broker, "")]
    for name, node in state["nodes"].items():
        rows.append((name, node["state"], node["url"], node, f"  dashboard {node['dashboard']}"))
    lines = []
    for name, process_state, url, info, extra in rows:
        if info["pid"] is not None:
            detail = f"pid {info['pid']}"
        elif info["exit_status"] is not None:
            detail = _describe(info["exit_status"])
        else:
            detail = ""
        lines.append(f"{name:7} {process_state:8} {url}  {detail}{extra}  (log {info['log']})")
    return "\n".join(lines)


def _report(what: str, status: int | None, log_path: Path, name: str, work: Path) -> None:
    """A process exited unasked: say which, how, and the end of its log."""
    key = "rb" if name == BROKER else f"r{name[1:]}"
    tail = "\n".join(f"    {line}" for line in _last_lines(log_path, LOG_LINES))
    print(
        f"\n{what} exited with {_describe(status)}; the other processes keep running.\n"
        f"  Its log, {log_path}, ends with:\n{tail}\n"
        f"  {key} and Enter starts it again (or: {_vesper_command()} cluster start {name} "
        f"--work-dir {shlex.quote(str(work))})",
        file=sys.stderr,
        flush=True,
    )


def _describe(status: int | None) -> str:
    if status is None:
        return "no status"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"status {status} (killed by {name})"
    return f"status {status}"


def _last_lines(path: Path, n: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return [f"(cannot read it: {exc})"]
    return text.splitlines()[-n:] or ["(empty)"]


def _vesper_command() -> str:
    """How to run ``vesper`` from another shell: the script beside this Python (a
    virtual environment's bin is often not on PATH), else ``python -m vesper``."""
    script = Path(sys.executable).parent / "vesper"
    if shutil.which("vesper") == str(script):
        return "vesper"
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m vesper"


def _write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


def _wait_url(proc: subprocess.Popen[bytes], log_path: Path, offset: int = 0) -> str:
    """The URL the node logs once it serves, looked for past ``offset`` (a restarted
    node appends to the log of its earlier runs)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with open(log_path, "rb") as log:
            log.seek(offset)
            match = URL_RE.search(log.read())
        if match:
            return match.group(1).decode()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    raise ConfigError(f"a node did not start; its log ({log_path}):\n{text[-2000:]}")
