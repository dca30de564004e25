#!/usr/bin/env python3
"""Replication benchmarks of Vesper: two nodes through a STOMP broker.

For each broker (the embedded one, ActiveMQ, RabbitMQ):

raw         the broker's ceiling: one stomp.py publisher, one stomp.py durable subscriber
            (client-individual, ACK per message), persistent ~500-byte messages to a
            topic; messages/s from the first SEND to the last MESSAGE received
rawlag      the broker's latency floor: the same pair at a fixed 500 messages/s with
            TCP_NODELAY on both sockets; SEND returned -> MESSAGE arrived, p99
throughput  node A commits single-object creates as fast as it can; changesets/s from
            its first commit until node B has them all, and as % of ``raw``
lag         A commits at a fixed 500 changes/s; per change, the time from A's commit
            returning until B's ``version_vector["A"]`` covers it: p50 and p99
catchup     B offline (service stopped, store closed) while A commits; then B starts
            again: changesets/s from B's start until it has them all

Layout: the broker runs in its own process, node A (SQLite store + ReplicationService)
in this process, node B in a child process (multiprocessing, spawn), and the raw
subscriber in a child process too, so no two measured parties share a GIL. Times are
``time.monotonic()`` (CLOCK_MONOTONIC), comparable across processes.

Usage::

    .venv/bin/python bench/replication_bench.py                    # all brokers found
    .venv/bin/python bench/replication_bench.py --quick            # 10x smaller
    .venv/bin/python bench/replication_bench.py --brokers embedded --only lag
    .venv/bin/python bench/replication_bench.py --mq 127.0.0.1:61613   # a running broker
    .venv/bin/python bench/replication_bench.py --json

ActiveMQ and RabbitMQ are started with ``scripts/brokers/{activemq,rabbitmq}.sh`` on free
ports in a temporary folder and stopped at the end, also on error or Ctrl-C. The exit
status is 0 unless ``--strict`` is given and a target is missed or a benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import stomp  # noqa: E402

import benchlib  # noqa: E402 - bench/ is on sys.path when a script runs
from _nodes import BenchError, log  # noqa: E402
from vesper.broker.process import BrokerProcess  # noqa: E402
from vesper.replication.brokers import BrokerProfile, detect  # noqa: E402
from vesper.replication.service import ReplicationConfig, ReplicationService  # noqa: E402
from vesper.store import Store, open_store  # noqa: E402
from vesper.trust.keys import NodeKey  # noqa: E402

now = time.monotonic
"""CLOCK_MONOTONIC on Linux: one clock for this process and its children."""

BROKERS = ("embedded", "activemq", "rabbitmq")
SCRIPTS = ROOT / "scripts" / "brokers"
ORIGIN = "A"
WARMUP = 20
"""Changes A commits (and B must have) before a timed part starts: both nodes are
connected and subscribed, and the path through the broker is warm."""
CATCHUP_PRESYNC = 100
"""Changes B has before it goes offline in ``catchup`` (a node that was in sync, not
an empty one, which would ask a peer for everything at once)."""
LAG_RATE = 500
POLL_FAST_S = 0.001
POLL_SLOW_S = 0.005
NOTE = ("replicated " * 19)[:200]


@dataclass(frozen=True)
class Sizes:
    raw: int
    """Messages the raw publisher sends."""
    throughput: int
    """Single-object commits on A in ``throughput``."""
    lag_seconds: float
    """Duration of the steady ``LAG_RATE`` changes/s in ``lag``."""
    catchup: int
    """Single-object commits on A while B is offline."""


FULL = Sizes(raw=20_000, throughput=20_000, lag_seconds=20.0, catchup=100_000)
QUICK = Sizes(raw=2_000, throughput=2_000, lag_seconds=5.0, catchup=10_000)


@dataclass
class Figure:
    broker: str
    name: str
    """Benchmark name (what ``--only`` selects)."""
    metric: str
    value: float
    unit: str
    target: float | None = None
    """The figure must be >= target (or <= target when ``lower_is_better``)."""
    lower_is_better: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        if self.target is None:
            return ""
        ok = self.value <= self.target if self.lower_is_better else self.value >= self.target
        return "PASS" if ok else "MISS"


def doc(i: int) -> dict[str, Any]:
    """A document whose create changeset is about 490 bytes of JSON."""
    return {**benchlib.small_doc(i), "note": NOTE}


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.01) -> Any:
    deadline = now() + timeout
    while True:
        value = condition()
        if value:
            return value
        if now() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# -- brokers ---------------------------------------------------------------------------


@dataclass
class BrokerInfo:
    name: str
    """embedded, activemq, rabbitmq, or ``mq`` for one given with ``--mq``."""
    host: str
    port: int
    kind: str = ""
    """The broker profile detected from CONNECTED (activemq, rabbitmq, vesper, ...)."""
    server: str = ""
    stop: Callable[[], None] = lambda: None
    external: bool = False

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def profile(self) -> BrokerProfile:
        return BrokerProfile(self.kind or "unknown", self.server)


def free_port(span: int = 1) -> int:
    """A port p such that p .. p+span-1 are free on 127.0.0.1 right now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + span > 65535:
            continue
        ok = True
        for p in range(base + 1, base + span):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise BenchError("no free port range found")


def probe(host: str, port: int, timeout: float = 30.0) -> str:
    """Connect once and return the CONNECTED frame's ``server`` header."""
    server: list[str] = []

    class Listener(stomp.ConnectionListener):
        def on_connected(self, frame: Any) -> None:
            server.append(frame.headers.get("server", ""))

    deadline = now() + timeout
    while True:
        conn = stomp.Connection12([(host, port)], vhost="/", heartbeats=(0, 0))
        conn.set_listener("probe", Listener())
        try:
            conn.connect(wait=True)
            wait_until(lambda: server, 5.0, "CONNECTED")
            conn.disconnect()
            return server[0]
        except Exception as exc:
            if now() > deadline:
                raise BenchError(f"cannot connect to {host}:{port}: {exc}") from None
            time.sleep(0.5)


def start_broker(name: str, workdir: Path) -> BrokerInfo:
    # A unique folder name: rabbitmq.sh names the Erlang node after it.
    folder = workdir / f"{name}-{uuid.uuid4().hex[:8]}"
    if name == "embedded":
        # --data-dir: persistent messages are stored (SQLite), as the others store them.
        broker = BrokerProcess(
            folder, control=False, allow_anonymous=True, log_path=workdir / "embedded.log"
        )
        broker.start()
        info = BrokerInfo(name, broker.host, broker.port, stop=broker.stop)
    elif name in ("activemq", "rabbitmq"):
        # RabbitMQ also binds port+1 (AMQP) and port+2 (Erlang distribution).
        port = free_port(4 if name == "rabbitmq" else 2)  # as scripts/brokers/*.sh bind
        script = str(SCRIPTS / f"{name}.sh")
        folder.mkdir(parents=True)

        def stop() -> None:
            subprocess.run(
                [script, "stop", str(folder)], capture_output=True, timeout=120, check=False
            )

        info = BrokerInfo(name, "127.0.0.1", port, stop=stop)
        try:
            proc = subprocess.run(
                [script, "start", str(folder), str(port)],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            if proc.returncode != 0:
                raise BenchError(f"{name} did not start:\n{proc.stdout}{proc.stderr}")
        except BaseException:
            stop()
            raise
    else:
        raise BenchError(f"unknown broker {name!r}")
    try:
        info.server = probe(info.host, info.port)
    except BaseException:
        info.stop()
        raise
    info.kind = detect(info.server).name
    return info


def external_broker(mq: str) -> BrokerInfo:
    host, _, port = mq.rpartition(":")
    info = BrokerInfo("mq", host or "127.0.0.1", int(port), external=True)
    info.server = probe(info.host, info.port, timeout=10.0)
    info.kind = detect(info.server).name
    info.name = info.kind if info.kind != "unknown" else "mq"
    return info


def forget_durable(broker: BrokerInfo, client_id: str, topic: str, sub_id: str, name: str) -> None:
    """Best effort: delete a durable subscription left on a broker we did not start."""
    conn = stomp.Connection12([broker.address], vhost="/", heartbeats=(0, 0))
    try:
        conn.connect(wait=True, headers={"client-id": client_id})
        if broker.kind == "activemq":
            conn.unsubscribe(sub_id)
            conn.unsubscribe(sub_id, headers={"activemq.subscriptionName": name})
        else:
            conn.subscribe(topic, sub_id, headers={"durable": "true", "auto-delete": "false"})
            conn.unsubscribe(sub_id, headers={"durable": "true"})
        conn.disconnect(receipt=uuid.uuid4().hex)
    except Exception as exc:
        log(f"could not delete durable subscription {name} on {broker.name}: {exc}")


# -- nodes -----------------------------------------------------------------------------


class Node:
    """A SQLite store plus a ReplicationService, as ``vesper serve`` runs them minus HTTP."""

    def __init__(self, branch: str, url: str, host: tuple[str, int], channel: str) -> None:
        self.branch = branch
        self.url = url
        self.host = host
        self.channel = channel
        self.store: Store | None = None
        self.service: ReplicationService | None = None

    def start(self) -> None:
        self.store = open_store(self.url, self.branch, save_history=True, outbox=True)
        config = ReplicationConfig(
            self.branch, (self.host,), (self.channel,), key=NodeKey.generate()
        )
        self.service = ReplicationService(self.store, config)
        self.service.start()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        if self.store is not None:
            self.store.close()
        self.service = self.store = None

    @property
    def s(self) -> Store:
        assert self.store is not None, f"node {self.branch} is stopped"
        return self.store

    def connected(self) -> bool:
        if self.service is None:
            return False
        link = self.service.current_link()
        return link is not None and link.connected

    def status(self) -> dict[str, Any]:
        assert self.service is not None
        out = self.service.status()
        out["count"] = self.s.count
        out["revision"] = self.s.revision
        return out


class Watcher:
    """Polls ``store.version_vector[origin]`` from a thread and timestamps each counter
    the first time it is covered (after the apply transaction committed: the property
    takes the store's lock, which an apply holds until its COMMIT)."""

    def __init__(self, store: Store, origin: str, poll_s: float) -> None:
        self._store = store
        self._origin = origin
        self._poll_s = poll_s
        start = store.version_vector.get(origin, 0)
        self.times: list[float | None] = [None] * start
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            counter = self._store.version_vector.get(self._origin, 0)
            if counter > len(self.times):
                t = now()
                with self._cond:
                    self.times.extend([t] * (counter - len(self.times)))
                    self._cond.notify_all()
            time.sleep(self._poll_s)

    def wait(self, counter: int, timeout: float) -> float | None:
        with self._cond:
            self._cond.wait_for(lambda: len(self.times) >= counter, timeout)
            return self.times[counter - 1] if len(self.times) >= counter else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def node_child(conn: Any, branch: str, url: str, host: tuple[str, int], channel: str) -> None:
    """Node B's process: runs commands from the parent until ``exit``."""
    logging.basicConfig(level=logging.WARNING, format="B(%(name)s) %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    node = Node(branch, url, host, channel)
    watcher: Watcher | None = None
    while True:
        cmd, *args = conn.recv()
        try:
            result: Any = None
            if cmd == "start":
                t0 = now()
                node.start()
                watcher = Watcher(node.s, ORIGIN, args[0])
                result = t0
            elif cmd == "connected":
                wait_until(node.connected, args[0], "B to connect")
            elif cmd == "wait":
                assert watcher is not None
                counter, timeout = args
                result = (watcher.wait(counter, timeout), node.status())
            elif cmd == "times":
                assert watcher is not None
                lo, hi = args
                result = watcher.times[lo - 1 : hi]
            elif cmd == "status":
                result = node.status()
            elif cmd == "stop":
                if watcher is not None:
                    watcher.stop()
                    watcher = None
                node.stop()
            elif cmd == "exit":
                if watcher is not None:
                    watcher.stop()
                node.stop()
                conn.send(("ok", None))
                return
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class ChildNode:
    """The parent's handle on node B's process."""

    def __init__(self, branch: str, url: str, host: tuple[str, int], channel: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(
            target=node_child, args=(child_conn, branch, url, host, channel), daemon=True
        )
        self.proc.start()
        child_conn.close()

    def call(self, *cmd: Any, timeout: float = 60.0) -> Any:
        self.conn.send(cmd)
        if not self.conn.poll(timeout):
            raise BenchError(f"node B did not answer {cmd[0]!r} within {timeout:g} s")
        status, value = self.conn.recv()
        if status == "error":
            raise BenchError(f"node B failed on {cmd[0]!r}:\n{value}")
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            with suppress(BenchError, OSError, EOFError):
                self.call("exit", timeout=30)
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)


@contextmanager
def two_nodes(broker: BrokerInfo, workdir: Path, poll_s: float) -> Iterator[tuple[Node, ChildNode]]:
    """A (here) and B (child process) on a new channel, both connected and in step."""
    channel = f"bench{uuid.uuid4().hex[:10]}"
    a = Node(ORIGIN, f"sqlite:///{(workdir / 'A.db').resolve()}", broker.address, channel)
    b = ChildNode("B", f"sqlite:///{(workdir / 'B.db').resolve()}", broker.address, channel)
    try:
        a.start()
        b.call("start", poll_s)
        wait_until(a.connected, 30, "A to connect")
        b.call("connected", 30)
        for i in range(WARMUP):
            a.s.create(doc(-1 - i))
        t, _ = b.call("wait", WARMUP, 60.0, timeout=70)
        if t is None:
            raise BenchError("B did not receive the warm-up changes within 60 s")
        yield a, b
    finally:
        b.close()
        a.stop()
        if broker.external:
            for branch in (ORIGIN, "B"):
                forget_durable(
                    broker,
                    f"vesper-{branch}",
                    f"/topic/{channel}",
                    f"vesper-{channel}-{branch}",
                    f"vesper-{channel}-{branch}",
                )


def wait_outbox_empty(a: Node, timeout: float) -> float:
    wait_until(lambda: a.s.outbox_count == 0, timeout, "A's outbox to drain", poll=0.05)
    return now()


def changeset_bytes(a: Node) -> float:
    rows = a.s.db.fetch("SELECT avg(length(body)) FROM changesets")
    return round(rows[0][0] or 0.0, 1)


def b_counters(status: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "messages_received",
        "changesets_received",
        "catchup_requests_sent",
        "catchup_changesets_received",
        "receive_errors",
        "pending",
    )
    return {k: status.get(k) for k in keys}


# -- raw ceiling -----------------------------------------------------------------------


def nodelay(client: stomp.Connection12) -> None:
    """TCP_NODELAY on a connected stomp.py socket (stomp.py leaves Nagle on)."""
    client.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_subscriber(
    conn: Any,
    host: str,
    port: int,
    kind: str,
    topic: str,
    count: int,
    timeout: float,
    no_delay: bool,
) -> None:
    """Child process: a durable subscriber that ACKs each message. Reports the arrival
    time of each message (by its ``seq`` header) and of the last one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    done = threading.Event()
    subscribed = threading.Event()
    arrived: list[float] = [math.nan] * count
    state = {"seen": 0, "last": 0.0}
    client = stomp.Connection12([(host, port)], vhost="/", heartbeats=(0, 0), auto_decode=False)

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame: Any) -> None:
            t = now()
            client.ack(frame.headers["ack"])
            arrived[int(frame.headers["seq"])] = t
            state["seen"] += 1
            if state["seen"] >= count:
                state["last"] = t
                done.set()

        def on_receipt(self, frame: Any) -> None:
            subscribed.set()

    client.set_listener("raw", Listener())
    channel = topic.rsplit("/", 1)[-1]
    headers = BrokerProfile(kind, "").durable_topic_headers("RAWSUB", channel)
    client.connect(wait=True, headers={"client-id": f"raw-{channel}"})
    if no_delay:
        nodelay(client)
    client.subscribe(
        topic, f"raw-{channel}", ack="client-individual", headers={**headers, "receipt": "sub"}
    )
    if not subscribed.wait(30):
        conn.send(("error", "no RECEIPT for SUBSCRIBE"))
        return
    conn.send(("ready", None))
    done.wait(timeout)
    conn.send(("done", (state["last"] if done.is_set() else None, state["seen"], arrived)))
    client.disconnect()


@dataclass
class RawRun:
    t0: float
    """Just before the first SEND."""
    sends: list[float]
    """When each SEND returned."""
    t_final_receipt: float
    t_last: float
    """When the subscriber got the last message."""
    arrived: list[float]
    body_bytes: int


def raw_run(
    broker: BrokerInfo, n: int, rate: float | None, no_delay: bool, timeout: float
) -> RawRun:
    """stomp.py publisher (here) -> stomp.py durable subscriber (child process):
    ``n`` persistent messages as fast as possible (``rate`` None) or on a schedule."""
    channel = f"raw{uuid.uuid4().hex[:10]}"
    topic = f"/topic/{channel}"
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    proc = mp.Process(
        target=raw_subscriber,
        args=(child, broker.host, broker.port, broker.kind, topic, n, timeout, no_delay),
        daemon=True,
    )
    proc.start()
    child.close()
    try:
        if not parent.poll(60):
            raise BenchError("raw subscriber did not subscribe within 60 s")
        what, value = parent.recv()
        if what != "ready":
            raise BenchError(f"raw subscriber: {value}")
        receipt = threading.Event()

        class Listener(stomp.ConnectionListener):
            def on_receipt(self, frame: Any) -> None:
                receipt.set()

        pub = stomp.Connection12([broker.address], vhost="/", heartbeats=(0, 0))
        pub.set_listener("pub", Listener())
        pub.connect(wait=True)
        if no_delay:
            nodelay(pub)
        body = json.dumps({"n": 0, "note": "x" * 480}).encode()
        sends: list[float] = []
        t0 = now() + (0.05 if rate else 0.0)
        for i in range(n):
            if rate:
                delay = t0 + i / rate - now()
                if delay > 0:
                    time.sleep(delay)
            headers = {"persistent": "true", "seq": str(i)}
            if i == n - 1:
                headers["receipt"] = "last"
            pub.send(topic, body, headers=headers)
            sends.append(now())
        receipt.wait(timeout)
        t_receipt = now()
        pub.disconnect()
        if not parent.poll(timeout + 10):
            raise BenchError("raw subscriber did not finish")
        _, (t_last, seen, arrived) = parent.recv()
        if t_last is None:
            raise BenchError(f"raw subscriber got {seen} of {n} messages within {timeout:g} s")
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
    if broker.external:
        sub_id = f"raw-{channel}"
        forget_durable(broker, sub_id, topic, sub_id, f"vesper-{channel}-RAWSUB")
    return RawRun(t0, sends, t_receipt, t_last, arrived, len(body))


def bench_raw(broker: BrokerInfo, workdir: Path, sizes: Sizes, ctx: dict[str, Any]) -> list[Figure]:
    n = sizes.raw
    run = raw_run(broker, n, None, False, max(120.0, n / 100))
    elapsed = run.t_last - run.t0
    rate = n / elapsed
    ctx["raw"] = rate
    return [
        Figure(
            broker.name,
            "raw",
            f"stomp.py pub -> durable sub, {n:,} x {run.body_bytes} B",
            rate,
            "msgs/s",
            detail={
                "messages": n,
                "body_bytes": run.body_bytes,
                "seconds": round(elapsed, 3),
                "sends_seconds": round(run.sends[-1] - run.t0, 3),
                "final_receipt_seconds": round(run.t_final_receipt - run.t0, 3),
            },
        )
    ]


def bench_rawlag(
    broker: BrokerInfo, workdir: Path, sizes: Sizes, ctx: dict[str, Any]
) -> list[Figure]:
    n = int(sizes.lag_seconds * LAG_RATE)
    run = raw_run(broker, n, LAG_RATE, True, 60.0)
    lags = sorted((a - s) * 1000 for a, s in zip(run.arrived, run.sends, strict=True))
    return [
        Figure(
            broker.name,
            "rawlag",
            f"stomp.py SEND -> durable sub, p99 ({LAG_RATE}/s)",
            percentile(lags, 99),
            "ms",
            detail={
                "messages": n,
                "tcp_nodelay": True,
                "p50_ms": round(percentile(lags, 50), 2),
                "p90_ms": round(percentile(lags, 90), 2),
                "max_ms": round(lags[-1], 2),
            },
        )
    ]


# -- replication -----------------------------------------------------------------------


def bench_throughput(
    broker: BrokerInfo, workdir: Path, sizes: Sizes, ctx: dict[str, Any]
) -> list[Figure]:
    n = sizes.throughput
    # The bound replication cannot beat: the same commits on a store with no service.
    solo = open_store(f"sqlite:///{(workdir / 'solo.db').resolve()}", ORIGIN, True, True)
    try:
        t0 = now()
        for i in range(n):
            solo.create(doc(i))
        solo_rate = n / (now() - t0)
    finally:
        solo.close()
    with two_nodes(broker, workdir, POLL_SLOW_S) as (a, b):
        t0 = now()
        for i in range(n):
            a.s.create(doc(i))
        t_committed = now()
        t_done, status = b.call("wait", WARMUP + n, max(120.0, n / 100), timeout=max(130, n / 90))
        t_drained = wait_outbox_empty(a, 60)
        if t_done is None:
            got = status["revision"]
            raise BenchError(f"B did not get all {n:,} changesets (B at {got})")
        size = changeset_bytes(a)
        if status["count"] != a.s.count:
            raise BenchError(f"B has {status['count']} objects, A {a.s.count}")
    elapsed = t_done - t0
    rate = n / elapsed
    figures = [
        Figure(
            broker.name,
            "throughput",
            f"A commits {n:,} creates -> B has all",
            rate,
            "changesets/s",
            detail={
                "changesets": n,
                "changeset_bytes": size,
                "seconds": round(elapsed, 3),
                "a_commit_per_s": round(n / (t_committed - t0)),
                "a_outbox_drained_s": round(t_drained - t0, 3),
                "b_behind_a_commits_s": round(t_done - t_committed, 3),
                **b_counters(status),
            },
        )
    ]
    raw = ctx.get("raw")
    if raw:
        figures.append(
            Figure(
                broker.name, "throughput", "  as % of the raw ceiling", 100 * rate / raw, "%", 50
            )
        )
    figures.append(
        Figure(
            broker.name,
            "throughput",
            "  bound: same commits, no replication",
            solo_rate,
            "commits/s",
        )
    )
    return figures


def bench_lag(broker: BrokerInfo, workdir: Path, sizes: Sizes, ctx: dict[str, Any]) -> list[Figure]:
    n = int(sizes.lag_seconds * LAG_RATE)
    interval = 1.0 / LAG_RATE
    commits: list[float] = []
    with two_nodes(broker, workdir, POLL_FAST_S) as (a, b):
        slip = 0.0
        t0 = now() + 0.05
        for i in range(n):
            due = t0 + i * interval
            delay = due - now()
            if delay > 0:
                time.sleep(delay)
            else:
                slip = max(slip, -delay)
            a.s.create(doc(i))
            commits.append(now())
        t_done, status = b.call("wait", WARMUP + n, 60.0, timeout=70)
        if t_done is None:
            raise BenchError(f"B did not get all {n:,} changesets (B at {status['revision']})")
        seen = b.call("times", WARMUP + 1, WARMUP + n)
    lags = sorted((s - c) * 1000 for s, c in zip(seen, commits, strict=True))
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    detail = {
        "changes": n,
        "rate_per_s": LAG_RATE,
        "seconds": sizes.lag_seconds,
        "p90_ms": round(percentile(lags, 90), 2),
        "p999_ms": round(percentile(lags, 99.9), 2),
        "max_ms": round(lags[-1], 2),
        "min_ms": round(lags[0], 2),
        "a_max_schedule_slip_ms": round(slip * 1000, 2),
        "b_poll_ms": POLL_FAST_S * 1000,
        **b_counters(status),
    }
    return [
        Figure(broker.name, "lag", f"commit on A -> visible on B, p50 ({LAG_RATE}/s)", p50, "ms"),
        Figure(
            broker.name,
            "lag",
            f"commit on A -> visible on B, p99 ({LAG_RATE}/s)",
            p99,
            "ms",
            50,
            lower_is_better=True,
            detail=detail,
        ),
    ]


def bench_catchup(
    broker: BrokerInfo, workdir: Path, sizes: Sizes, ctx: dict[str, Any]
) -> list[Figure]:
    n = sizes.catchup
    with two_nodes(broker, workdir, POLL_SLOW_S) as (a, b):
        for i in range(CATCHUP_PRESYNC):
            a.s.create(doc(i))
        total = WARMUP + CATCHUP_PRESYNC
        if b.call("wait", total, 60.0, timeout=70)[0] is None:
            raise BenchError("B did not get the pre-sync changes")
        b.call("stop")
        t0 = now()
        for i in range(n):
            a.s.create(doc(CATCHUP_PRESYNC + i))
        t_committed = now()
        t_drained = wait_outbox_empty(a, 300)
        total += n
        t_start = b.call("start", POLL_SLOW_S)
        t_done, status = b.call("wait", total, max(300.0, n / 200), timeout=max(310, n / 190))
        if t_done is None:
            raise BenchError(f"B did not catch up within the deadline (B at {status['revision']})")
        # Let in-flight duplicates (durable backlog vs. catch-up answer) settle for the
        # counters; they do not count in the time.
        time.sleep(1.0)
        status = b.call("status")
        size = changeset_bytes(a)
        if status["count"] != a.s.count:
            raise BenchError(f"B has {status['count']} objects, A {a.s.count}")
    elapsed = t_done - t_start
    rate = n / elapsed
    counters = b_counters(status)
    detail = {
        "changesets": n,
        "commits": "single-object (one change per changeset)",
        "changeset_bytes": size,
        "seconds": round(elapsed, 3),
        "a_commit_per_s": round(n / (t_committed - t0)),
        "a_outbox_drained_after_s": round(t_drained - t_committed, 3),
        **counters,
    }
    return [
        Figure(
            broker.name,
            "catchup",
            f"B restarts {n:,} behind -> has all",
            rate,
            "changesets/s",
            10_000,
            detail=detail,
        ),
        Figure(
            broker.name,
            "catchup",
            "  changesets_received (subscription)",
            counters["changesets_received"] or 0,
            "changesets",
        ),
        Figure(
            broker.name,
            "catchup",
            "  catchup_changesets_received",
            counters["catchup_changesets_received"] or 0,
            "changesets",
        ),
    ]


BENCHES: dict[str, Callable[[BrokerInfo, Path, Sizes, dict[str, Any]], list[Figure]]] = {
    "raw": bench_raw,
    "rawlag": bench_rawlag,
    "throughput": bench_throughput,
    "lag": bench_lag,
    "catchup": bench_catchup,
}


# -- report ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return benchlib.machine(
        **{"stomp.py": str(stomp.__version__), "loadavg_at_start": os.getloadavg()[0]}
    )


def format_value(value: float, unit: str) -> str:
    if unit in ("ms", "%"):
        return f"{value:,.1f}"
    return f"{value:,.0f}"


LAYOUT = (
    "broker: own process; node A: this process; node B: child process (spawn); "
    "raw publisher: this process, raw subscriber: child process (spawn)"
)


def print_table(info: dict[str, Any], brokers: list[BrokerInfo], figures: list[Figure]) -> None:
    print(
        f"machine: nproc={info['nproc']} cpu={info['cpu'] or '?'} python={info['python']} "
        f"sqlite={info['sqlite']} stomp.py={info['stomp.py']} "
        f"load={info['loadavg_at_start']:.2f} ({info['platform']})"
    )
    print(f"layout: {LAYOUT}")
    for broker in brokers:
        print(f"broker {broker.name}: {broker.server or '?'} at {broker.host}:{broker.port}")
    header = (
        f"{'broker':<9} {'bench':<10}  {'figure':<44} {'value':>10} {'unit':<12} "
        f"{'target':>10}  result"
    )
    print(header)
    print("-" * len(header))
    for fig in figures:
        target = ""
        if fig.target is not None:
            target = ("<= " if fig.lower_is_better else ">= ") + format_value(fig.target, fig.unit)
        value = "-" if fig.error else format_value(fig.value, fig.unit)
        line = (
            f"{fig.broker:<9} {fig.name:<10}  {fig.metric:<44} {value:>10} {fig.unit:<12} "
            f"{target:>10}  {fig.verdict}"
        )
        print(line.rstrip())
    for fig in figures:
        if fig.detail:
            print(f"  {fig.broker} {fig.name}: {json.dumps(fig.detail)}")
        if fig.error:
            print(f"  {fig.broker} {fig.name} ERROR: {fig.error}")


def run_broker(broker: BrokerInfo, names: list[str], sizes: Sizes, workdir: Path) -> list[Figure]:
    figures: list[Figure] = []
    ctx: dict[str, Any] = {}
    for name in names:
        log(f"{broker.name}: {name} ...")
        folder = workdir / f"{broker.name}-{name}"
        folder.mkdir()
        started = now()
        try:
            out = BENCHES[name](broker, folder, sizes, ctx)
        except (BenchError, OSError, EOFError, stomp.exception.StompException) as exc:
            log(f"{broker.name}: {name} failed: {exc}")
            figures.append(Figure(broker.name, name, "(failed)", math.nan, "", error=str(exc)))
            continue
        figures.extend(out)
        head = next((f for f in out if f.detail), out[0])
        head.detail["seconds_total"] = round(now() - started, 1)
        head.detail["load_1m_after"] = round(os.getloadavg()[0], 2)
        log(
            f"{broker.name}: {name}: {format_value(head.value, head.unit)} {head.unit} "
            f"{head.verdict} ({now() - started:.1f} s)"
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller sizes (smoke test)")
    parser.add_argument(
        "--brokers",
        help=f"comma-separated, of {', '.join(BROKERS)} (default: all that are installed)",
    )
    parser.add_argument("--mq", metavar="HOST:PORT", help="use this running broker instead")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHES),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHES)}",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--dir", help="directory for the temporary files (default: system temp)")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    names = [n for n in BENCHES if n in (args.only or BENCHES)]
    if args.brokers:
        wanted = [b.strip() for b in args.brokers.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in BROKERS]
        if unknown:
            parser.error(f"unknown broker(s): {', '.join(unknown)}")
    else:
        wanted = benchlib.installed_brokers()
    logging.basicConfig(level=logging.WARNING, format="A(%(name)s) %(levelname)s %(message)s")
    # SIGTERM unwinds like Ctrl-C, so the brokers we started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    info = machine()
    started = now()
    figures: list[Figure] = []
    used: list[BrokerInfo] = []
    with tempfile.TemporaryDirectory(prefix="vesper-repl-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # RabbitMQ runs as its own user and must reach its folder
        if args.mq:
            targets: list[Callable[[], BrokerInfo]] = [lambda: external_broker(args.mq)]
        else:
            targets = [lambda name=name: start_broker(name, workdir) for name in wanted]
        for make in targets:
            try:
                broker = make()
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                log(f"broker failed to start: {exc}")
                figures.append(
                    Figure("?", "broker", "(start failed)", math.nan, "", error=str(exc))
                )
                continue
            used.append(broker)
            log(f"broker {broker.name}: {broker.server} at {broker.host}:{broker.port}")
            try:
                figures.extend(run_broker(broker, names, sizes, workdir))
            finally:
                if not broker.external:
                    log(f"stopping {broker.name}")
                broker.stop()
    info["total_seconds"] = round(now() - started, 1)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "layout": LAYOUT,
                    "quick": args.quick,
                    "sizes": asdict(sizes),
                    "brokers": [{"name": b.name, "server": b.server, "kind": b.kind} for b in used],
                    "figures": [
                        {**asdict(f), "verdict": f.verdict, "value": None}
                        if f.error
                        else {**asdict(f), "verdict": f.verdict}
                        for f in figures
                    ],
                },
                indent=2,
            )
        )
    else:
        print_table(info, used, figures)
        print(f"sizes: {'quick (10x smaller)' if args.quick else 'full'} {asdict(sizes)}")
        print(f"total: {info['total_seconds']} s")
    bad = [f for f in figures if f.verdict in ("MISS", "ERROR")]
    return 1 if args.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())
