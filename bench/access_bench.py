#!/usr/bin/env python3
"""What tokens and TLS cost, and what idle and slow clients do to a node's latency.

Every part runs real ``vesper serve`` nodes (SQLite file stores, ``save_history``) and,
for replication, the embedded broker (``python -m vesper.broker``), all on loopback:

http   one client, sequential keep-alive ``POST /api/objects`` of one ~190-byte document,
       on three nodes without replication: plain HTTP without a token ("plain"),
       ``api_token`` ("token"), HTTPS plus ``api_token`` ("tls"); median of ``--rounds``
       rounds, the three interleaved in a rotating order (target: "tls" at most 20%
       below "plain")
repl   node A -> embedded broker -> node B: one client writes N documents on A one at a
       time; first write -> B has the last one (and so all: one origin's changesets apply
       in order). "plain": STOMP, anonymous broker, plain HTTP; "login": a broker user
       per node (users file, per-destination rights); "stomp-tls": that plus STOMP over
       TLS (``stomp+ssl://``, ``replication_tls_ca``); "secured": that plus HTTPS and
       tokens on both nodes (target: "stomp-tls" at most 20% below "login", replication
       with TLS beside without; the steps from "plain" to "secured" are shown too)
slow   a paced client alternating ``GET`` and ``PUT`` of ~190-byte objects, p50/p99 over
       ~1,000 requests, on a node with the default timeouts: alone, then while another
       process holds 200 idle connections (connected, sending nothing) and 5 slow ones
       (a request head 1 byte every 0.5 s), each reopened when the node closes it; how
       many the node closed, and after how long (target, set for this bench: p99 under
       that load at most 2x the p99 alone)

Usage::

    .venv/bin/python bench/access_bench.py             # full sizes, about 3 minutes
    .venv/bin/python bench/access_bench.py --quick     # tiny sizes, about 15 s (smoke test)
    .venv/bin/python bench/access_bench.py --only repl --rounds 5
    .venv/bin/python bench/access_bench.py --json --strict

The exit status is 0 unless ``--strict`` is given and a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import select
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
for path in (SRC, ROOT):  # ROOT: tests.tlsutil, the certificate factory of the tests
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import orjson  # noqa: E402

import benchlib  # noqa: E402 - bench/ is on sys.path when a script runs
from _nodes import (  # noqa: E402
    BenchError,
    Client,
    HttpNode,
    cpu_seconds,
    launch_node,
    log,
    stop_node,
    wait_serving,
    wait_until,
)
from benchlib import small_doc  # noqa: E402

NOTE = "access bench " * 7
"""Pads a document to about 190 bytes of JSON."""
POLL_S = 0.002
"""How often B is asked for the last document once A's writes are done."""
REPLICATION_DEADLINE_S = 120.0
DEFAULT_HEADER_TIMEOUT_S = 10.0
"""``api_header_timeout``'s default (docs/configuration.md), for the report."""
SLOW_BYTE_INTERVAL_S = 0.5
SLOW_HEAD = (
    b"GET /health HTTP/1.1\r\nHost: bench\r\nUser-Agent: access-bench-slow-client\r\n"
    b"X-Padding: " + b"x" * 100 + b"\r\n\r\n"
)
"""What a slow client sends, a byte at a time: over 90 s worth at 2 bytes/s, so the
node's header timeout always cuts it first."""
HOLD_READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Sizes:
    http_writes: int
    """Timed writes per node and round (after ``warmup`` untimed ones)."""
    repl_writes: int
    """Documents written on A per configuration and round."""
    rounds: int
    """Interleaved rounds of ``http`` and ``repl`` (the median is kept)."""
    warmup: int
    slow_requests: int
    """Requests of the paced client per phase (alone, under load)."""
    slow_pause_s: float
    """Pause between two of its requests: the phase must span several header timeouts."""
    idle: int
    slow: int
    header_timeout: float | None
    """``api_header_timeout`` of the ``slow`` node; None: the default."""


FULL = Sizes(
    http_writes=5_000,
    repl_writes=5_000,
    rounds=3,
    warmup=200,
    slow_requests=1_000,
    slow_pause_s=0.025,
    idle=200,
    slow=5,
    header_timeout=None,
)
# The smoke test shortens the header timeout so a few seconds still see closures.
QUICK = Sizes(
    http_writes=300,
    repl_writes=300,
    rounds=1,
    warmup=20,
    slow_requests=100,
    slow_pause_s=0.02,
    idle=20,
    slow=2,
    header_timeout=1.0,
)


@dataclass
class Figure:
    name: str
    """Benchmark name (what ``--only`` selects)."""
    metric: str
    base: float | None
    value: float | None
    unit: str
    max_drop_pct: float | None = None
    """Target for a rate: ``value`` at most this many percent below ``base``."""
    max_ratio: float | None = None
    """Target for a cost: ``value`` at most this many times ``base``."""
    cost: bool = False
    """Lower is better (a time): the change is shown as a ratio."""
    ours: bool = False
    """The target was set for this bench, not taken from the project's targets."""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def change_pct(self) -> float | None:
        if self.base is None or self.value is None or self.base == 0:
            return None
        return 100.0 * (self.value - self.base) / self.base

    @property
    def ratio(self) -> float | None:
        if self.base is None or self.value is None or self.base == 0:
            return None
        return self.value / self.base

    @property
    def target(self) -> str:
        mark = "*" if self.ours else ""
        if self.max_drop_pct is not None:
            return f">= -{self.max_drop_pct:g}%{mark}"
        if self.max_ratio is not None:
            return f"<= x{self.max_ratio:g}{mark}"
        return ""

    @property
    def verdict(self) -> str:
        if self.max_drop_pct is not None and self.change_pct is not None:
            return "PASS" if self.change_pct >= -self.max_drop_pct else "MISS"
        if self.max_ratio is not None and self.ratio is not None:
            return "PASS" if self.ratio <= self.max_ratio else "MISS"
        return ""


@dataclass(frozen=True)
class Access:
    """How a client reaches a node: HTTPS (a context trusting the bench's CA), a token."""

    ssl_context: ssl.SSLContext | None = None
    token: str | None = None

    def connect(self, node: HttpNode) -> Client:
        return Client(node.host, node.port, self.ssl_context, self.token)


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def certificates(work: Path) -> Certificates:
    """A CA and a server certificate for 127.0.0.1 and localhost, from the tests'
    factory (EC P-256, as tests/tlsutil.py makes them)."""
    from tests.tlsutil import make_ca, make_cert

    ca = make_ca(work / "certs")
    cert, key = make_cert(ca, work / "certs")
    return Certificates(ca.cert_path, cert, key)


def document(obj_id: str, i: int) -> bytes:
    return orjson.dumps({"id": obj_id, **small_doc(i), "note": NOTE})


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def start_nodes(specs: dict[str, tuple[Path, str, dict[str, Any]]]) -> dict[str, HttpNode]:
    """Start the nodes side by side; stop them all if one fails to start."""
    nodes: dict[str, HttpNode] = {}
    try:
        for key, (work, label, settings) in specs.items():
            nodes[key] = launch_node(work, label, settings)
        for node in nodes.values():
            wait_serving(node)
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: dict[str, HttpNode]) -> None:
    for node in nodes.values():
        stop_node(node)


# -- http ------------------------------------------------------------------------------

HTTP_VARIANTS = ("plain", "token", "tls")


def write_phase(node: HttpNode, access: Access, n: int, warmup: int, tag: str) -> dict[str, Any]:
    """``warmup`` then ``n`` timed sequential creates on one new keep-alive connection."""
    t_connect = time.perf_counter()
    client = access.connect(node)
    connect_s = time.perf_counter() - t_connect
    clock = time.perf_counter
    try:
        for i in range(warmup):
            status, body = client.request(
                client.build("POST", "/api/objects", document(f"{tag}-w{i}", i))
            )
            if status != 201:
                raise BenchError(f"node {node.label}: POST answered {status}: {body[:200]!r}")
        requests = [
            client.build("POST", "/api/objects", document(f"{tag}-{i}", i)) for i in range(n)
        ]
        latencies: list[float] = []
        cpu0, own0 = cpu_seconds(node.proc.pid), time.process_time()
        start = clock()
        for data in requests:
            t = clock()
            status, body = client.request(data)
            latencies.append(clock() - t)
            if status != 201:
                raise BenchError(f"node {node.label}: POST answered {status}: {body[:200]!r}")
        elapsed = clock() - start
        cpu, own = cpu_seconds(node.proc.pid) - cpu0, time.process_time() - own0
    finally:
        client.close()
    latencies.sort()
    return {
        "per_s": n / elapsed,
        "p50_ms": quantile(latencies, 0.5) * 1e3,
        "p99_ms": quantile(latencies, 0.99) * 1e3,
        "node_cpu_us": cpu / n * 1e6,
        "client_cpu_us": own / n * 1e6,
        "connect_ms": connect_s * 1e3,
        "request_bytes": len(requests[0]),
        "document_bytes": len(document(f"{tag}-0", 0)),
    }


def bench_http(work: Path, sizes: Sizes) -> list[Figure]:
    tls = certificates(work)
    token = secrets.token_urlsafe(32)
    base: dict[str, Any] = {"save_history": True}
    settings = {
        "plain": base,
        "token": {**base, "api_token": token},
        "tls": {
            **base,
            "api_token": token,
            "api_tls_cert": str(tls.cert),
            "api_tls_key": str(tls.key),
        },
    }
    access = {
        "plain": Access(),
        "token": Access(token=token),
        "tls": Access(tls.client_context(), token),
    }
    nodes = start_nodes({v: (work / v, f"H{v.upper()}", settings[v]) for v in HTTP_VARIANTS})
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in HTTP_VARIANTS}
    try:
        if nodes["tls"].scheme != "https":
            raise BenchError("the TLS node does not serve HTTPS")
        for r in range(sizes.rounds):
            k = r % len(HTTP_VARIANTS)  # rotate, so each goes first, second and last
            for v in HTTP_VARIANTS[k:] + HTTP_VARIANTS[:k]:
                runs[v].append(
                    write_phase(nodes[v], access[v], sizes.http_writes, sizes.warmup, f"r{r}")
                )
    finally:
        stop_nodes(nodes)

    def med(v: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[v])

    detail = {
        v: {
            "rounds_per_s": [round(x["per_s"]) for x in rs],
            "p99_ms": round(med(v, "p99_ms"), 3),
            "connect_ms": round(med(v, "connect_ms"), 2),
        }
        for v, rs in runs.items()
    }
    return [
        Figure(
            "http",
            "1 client POST writes: plain vs HTTPS+token",
            med("plain", "per_s"),
            med("tls", "per_s"),
            "writes/s",
            max_drop_pct=20,
            detail={
                "writes_per_round": sizes.http_writes,
                "document_bytes": runs["plain"][0]["document_bytes"],
                "request_bytes": runs["plain"][0]["request_bytes"],
                "load1": load1(),
                **detail,
            },
        ),
        Figure(
            "http",
            "  plain vs token only",
            med("plain", "per_s"),
            med("token", "per_s"),
            "writes/s",
        ),
        Figure(
            "http",
            "  token only vs HTTPS+token",
            med("token", "per_s"),
            med("tls", "per_s"),
            "writes/s",
        ),
        Figure(
            "http",
            "  p50 latency: plain vs HTTPS+token",
            med("plain", "p50_ms"),
            med("tls", "p50_ms"),
            "ms",
            cost=True,
        ),
        Figure(
            "http",
            "  node CPU per write: plain vs HTTPS+token",
            med("plain", "node_cpu_us"),
            med("tls", "node_cpu_us"),
            "us",
            cost=True,
            detail={"token_only_us": round(med("token", "node_cpu_us"), 1)},
        ),
        Figure(
            "http",
            "  client CPU per write: plain vs HTTPS+token",
            med("plain", "client_cpu_us"),
            med("tls", "client_cpu_us"),
            "us",
            cost=True,
            detail={"token_only_us": round(med("token", "client_cpu_us"), 1)},
        ),
    ]


# -- repl ------------------------------------------------------------------------------


def node_users(users: Path, channel: str, branches: list[str]) -> dict[str, str]:
    """A broker user per node, allowed what docs/access.md lists and nothing else;
    returns the passcodes."""
    from vesper.broker.adduser import add_user

    passcodes = {}
    topics = [f"/topic/{channel}", f"/topic/{channel}.sync"]
    for branch in branches:
        passcodes[branch] = secrets.token_urlsafe(24)
        add_user(
            users,
            branch,
            passcodes[branch],
            read=[*topics, f"/queue/{channel}.{branch}"],
            write=[*topics, f"/queue/{channel}.*"],
        )
    return passcodes


def repl_phase(
    a: HttpNode, b: HttpNode, access: Access, broker_pid: int, n: int, tag: str
) -> dict[str, Any]:
    """``n`` sequential creates on A; the clock stops when B serves the last one."""
    writer = access.connect(a)
    clock = time.perf_counter
    pids = {"a": a.proc.pid, "b": b.proc.pid, "broker": broker_pid}
    try:
        requests = [
            writer.build("POST", "/api/objects", document(f"{tag}-{i}", i)) for i in range(n)
        ]
        sent0 = writer.get_json("/api/status")["replication"]["messages_sent"]
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        start = clock()
        for data in requests:
            status, body = writer.request(data)
            if status != 201:
                raise BenchError(f"node {a.label}: POST answered {status}: {body[:200]!r}")
        written = clock()
        # Connected only now: A's writes may outlast B's idle timeout (api_idle_timeout).
        reader = access.connect(b)
        try:
            last = writer.build("GET", f"/api/objects/{tag}-{n - 1}")
            deadline = written + REPLICATION_DEADLINE_S
            while reader.request(last)[0] != 200:
                if clock() > deadline:
                    raise BenchError(f"B did not get {tag}-{n - 1} within the deadline")
                time.sleep(POLL_S)
            done = clock()
            cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
            a_status = writer.get_json("/api/status")
            b_status = reader.get_json("/api/status")
        finally:
            reader.close()
        if a_status["objects"] != b_status["objects"]:
            raise BenchError(f"A has {a_status['objects']} objects, B {b_status['objects']}")
        # The next phase starts with nothing of this one left to send.
        wait_until(lambda: writer.get_json("/api/status")["outbox"] == 0, 60, "A's outbox")
    finally:
        writer.close()
    return {
        "per_s": n / (done - start),
        "write_per_s": n / (written - start),
        "tail_ms": (done - written) * 1e3,
        "docs_per_message": n / max(1, a_status["replication"]["messages_sent"] - sent0),
        **{f"{k}_cpu_us": v / n * 1e6 for k, v in cpu.items()},
    }


@dataclass(frozen=True)
class ReplVariant:
    broker: str
    """Which broker: "anonymous", "users" (users file) or "tls" (users file and TLS)."""
    login: bool
    stomp_tls: bool
    https: bool
    """HTTPS and a token on both nodes."""


REPL_VARIANTS = {
    "plain": ReplVariant("anonymous", login=False, stomp_tls=False, https=False),
    "login": ReplVariant("users", login=True, stomp_tls=False, https=False),
    "stomp-tls": ReplVariant("tls", login=True, stomp_tls=True, https=False),
    "secured": ReplVariant("tls", login=True, stomp_tls=True, https=True),
}
""""login" and "stomp-tls" differ only in TLS on the replication path, the two the target
compares; "plain" to "secured" adds every protection, step by step, to show which
costs what (the HTTPS step is the writer's own connection to node A, which the http
part measures against its own target)."""


def bench_repl(work: Path, sizes: Sizes) -> list[Figure]:
    from vesper.broker.process import BrokerProcess

    tls = certificates(work)
    token = secrets.token_urlsafe(32)
    users = work / "broker-users.toml"
    channels: dict[str, str] = {}
    passcodes: dict[str, str] = {}
    for i, (name, variant) in enumerate(REPL_VARIANTS.items()):
        channels[name] = f"access{i}{uuid.uuid4().hex[:8]}"
        if variant.login:
            branches = [f"{'PLTS'[i]}A", f"{'PLTS'[i]}B"]
            passcodes.update(node_users(users, channels[name], branches))
    brokers = {
        "anonymous": BrokerProcess(
            work / "broker-anonymous",
            control=False,
            allow_anonymous=True,
            log_path=work / "broker-anonymous.log",
        ),
        "users": BrokerProcess(
            work / "broker-users", control=False, users=users, log_path=work / "broker-users.log"
        ),
        "tls": BrokerProcess(
            work / "broker-tls",
            control=False,
            users=users,
            tls_cert=tls.cert,
            tls_key=tls.key,
            log_path=work / "broker-tls.log",
        ),
    }
    access = {
        name: Access(tls.client_context(), token) if v.https else Access()
        for name, v in REPL_VARIANTS.items()
    }
    names = list(REPL_VARIANTS)
    nodes: dict[str, HttpNode] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for broker in brokers.values():
            broker.start()
        if brokers["tls"].scheme != "stomp+ssl":
            raise BenchError("the TLS broker does not listen with TLS")
        specs: dict[str, tuple[Path, str, dict[str, Any]]] = {}
        for i, (name, variant) in enumerate(REPL_VARIANTS.items()):
            broker = brokers[variant.broker]
            for side in ("A", "B"):
                branch = f"{'PLTS'[i]}{side}"
                settings: dict[str, Any] = {
                    "save_history": True,
                    # 'stomp+ssl://host:port' for TLS; a plain entry is 'host:port'.
                    "replication_hosts": broker.url
                    if variant.stomp_tls
                    else f"{broker.host}:{broker.port}",
                    "replication_channel": channels[name],
                }
                if variant.stomp_tls:
                    settings["replication_tls_ca"] = str(tls.ca)
                if variant.login:
                    settings["replication_login"] = branch
                    settings["replication_passcode"] = passcodes[branch]
                if variant.https:
                    settings["api_token"] = token
                    settings["api_tls_cert"] = str(tls.cert)
                    settings["api_tls_key"] = str(tls.key)
                specs[f"{name}/{side}"] = (work / f"{name}-{side}", branch, settings)
        nodes = start_nodes(specs)
        for key, node in nodes.items():
            client = access[key.split("/")[0]].connect(node)
            try:
                wait_until(
                    lambda c=client: c.get_json("/api/status")["replication"]["connected"],
                    30,
                    f"node {node.label} to connect to its broker",
                )
            finally:
                client.close()

        def phase(name: str, n: int, tag: str) -> dict[str, Any]:
            pid = brokers[REPL_VARIANTS[name].broker].pid
            assert pid is not None
            return repl_phase(nodes[f"{name}/A"], nodes[f"{name}/B"], access[name], pid, n, tag)

        for name in names:  # both subscribed and the path warm before any clock
            phase(name, 20, "warm")
        for r in range(sizes.rounds):
            k = r % len(names)  # rotate, so each goes first, in the middle and last
            for name in names[k:] + names[:k]:
                runs[name].append(phase(name, sizes.repl_writes, f"r{r}"))
    finally:
        stop_nodes(nodes)
        for broker in brokers.values():
            broker.stop()

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[name])

    def cpu_figure(metric: str, key: str) -> Figure:
        return Figure(
            "repl",
            metric,
            med("plain", key),
            med("secured", key),
            "us",
            cost=True,
            detail={key: {name: round(med(name, key)) for name in names}},
        )

    def step(metric: str, before: str, after: str) -> Figure:
        return Figure("repl", metric, med(before, "per_s"), med(after, "per_s"), "docs/s")

    return [
        Figure(
            "repl",
            "A -> broker -> B docs/s: STOMP vs STOMP over TLS",
            med("login", "per_s"),
            med("stomp-tls", "per_s"),
            "docs/s",
            max_drop_pct=20,
        ),
        Figure(
            "repl",
            "  plain vs all secured (+ login, TLS, HTTPS, tokens)",
            med("plain", "per_s"),
            med("secured", "per_s"),
            "docs/s",
            detail={
                "writes_per_round": sizes.repl_writes,
                "load1": load1(),
                **{
                    name: {
                        "rounds_per_s": [round(x["per_s"]) for x in rs],
                        "tail_ms": [round(x["tail_ms"], 1) for x in rs],
                        "docs_per_message": [round(x["docs_per_message"], 2) for x in rs],
                    }
                    for name, rs in runs.items()
                },
            },
        ),
        step("  step 1: + broker login (users file)", "plain", "login"),
        step("  step 2: + STOMP over TLS", "login", "stomp-tls"),
        step("  step 3: + HTTPS and tokens on the nodes", "stomp-tls", "secured"),
        Figure(
            "repl",
            "  last write on A -> B has it",
            med("plain", "tail_ms"),
            med("secured", "tail_ms"),
            "ms",
            cost=True,
        ),
        cpu_figure("  node A CPU per doc", "a_cpu_us"),
        cpu_figure("  broker CPU per doc", "broker_cpu_us"),
        cpu_figure("  node B CPU per doc", "b_cpu_us"),
    ]


# -- slow ------------------------------------------------------------------------------


BURST_WINDOW_S = 0.5
"""A request this close to a moment the idle connections close together counts as hit
by that burst."""


def latency_phase(
    node: HttpNode,
    sizes: Sizes,
    n_objects: int,
    bursts: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Paced requests on one keep-alive connection: even ones GET, odd ones PUT.

    ``bursts`` = (first, period) on the ``time.perf_counter`` clock: when the idle
    connections close together (they were opened together). The slowest 1% of
    requests is then also reported by when it ran relative to those bursts."""
    client = Client(node.host, node.port)
    clock = time.perf_counter
    lat: dict[str, list[float]] = {"GET": [], "PUT": []}
    timed: list[tuple[float, float]] = []  # (latency, when)
    try:
        start = clock()
        for i in range(sizes.slow_requests):
            obj_id = f"lat-{i % n_objects}"
            if i % 2 == 0:
                method, data, expect = "GET", client.build("GET", f"/api/objects/{obj_id}"), 200
            else:
                body = document(obj_id, i)
                data, method, expect = (
                    client.build("PUT", f"/api/objects/{obj_id}", body),
                    "PUT",
                    200,
                )
            t = clock()
            status, answer = client.request(data)
            latency = clock() - t
            lat[method].append(latency)
            timed.append((latency, t))
            if status != expect:
                raise BenchError(f"{method} {obj_id} answered {status}: {answer[:200]!r}")
            time.sleep(sizes.slow_pause_s)
        elapsed = clock() - start
    finally:
        client.close()
    every = sorted(lat["GET"] + lat["PUT"])
    out = {
        "requests": len(every),
        "seconds": round(elapsed, 1),
        "p50_ms": round(quantile(every, 0.5) * 1e3, 3),
        "p99_ms": round(quantile(every, 0.99) * 1e3, 3),
        "max_ms": round(every[-1] * 1e3, 3),
    }
    for method, values in lat.items():
        values.sort()
        out[f"{method.lower()}_p99_ms"] = round(quantile(values, 0.99) * 1e3, 2)
    slowest = sorted(timed, reverse=True)[: max(1, len(timed) // 100)]
    out["slowest_ms_at_s"] = [[round(x * 1e3, 1), round(t - start, 2)] for x, t in slowest]
    if bursts is not None:
        first, period = bursts

        def near_burst(t: float) -> bool:
            phase = (t - first) % period
            return min(phase, period - phase) <= BURST_WINDOW_S

        out["slowest_near_burst"] = sum(near_burst(t) for _, t in slowest)
        out["bursts_at_s"] = [
            round(first + k * period - start, 2)
            for k in range(int((clock() - first) // period) + 1)
            if first + k * period >= start - BURST_WINDOW_S
        ]
    return out


def node_metrics(node: HttpNode) -> dict[str, float]:
    """The node's ``vesper_http_*`` samples from /metrics (no token on this node)."""
    client = Client(node.host, node.port)
    try:
        status, text = client.get("/metrics")
    finally:
        client.close()
    if status != 200:
        raise BenchError(f"/metrics answered {status}")
    samples = {}
    for line in text.decode().splitlines():
        if line.startswith("vesper_http_timeouts_total") or line.startswith(
            "vesper_http_connections "
        ):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


class Holder:
    """The idle and slow clients, in a child process (``--hold``) of their own, so they
    share no GIL with the client being timed."""

    def __init__(self, node: HttpNode, sizes: Sizes) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--hold",
                f"{node.host}:{node.port}",
                "--idle",
                str(sizes.idle),
                "--slow",
                str(sizes.slow),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], HOLD_READY_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else b""
        if not line.startswith(b'{"ready"'):
            self.proc.kill()
            self.proc.wait()
            raise BenchError(f"the idle and slow clients did not connect: {line[:200]!r}")
        self.ready = orjson.loads(line)

    def stop(self) -> dict[str, Any]:
        """Ask the clients to stop (stdin closed); their counts."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        if self.proc.wait(30) != 0:
            raise BenchError(f"the holder process failed with status {self.proc.returncode}")
        return orjson.loads(out.splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def bench_slow(work: Path, sizes: Sizes) -> list[Figure]:
    settings: dict[str, Any] = {"save_history": True}
    if sizes.header_timeout is not None:
        settings["api_header_timeout"] = sizes.header_timeout
    header_timeout = sizes.header_timeout or DEFAULT_HEADER_TIMEOUT_S
    n_objects = 100
    nodes = start_nodes({"node": (work / "node", "SLOW", settings)})
    node = nodes["node"]
    holder: Holder | None = None
    try:
        client = Client(node.host, node.port)
        try:
            for k in range(n_objects):
                status, _ = client.request(
                    client.build("PUT", f"/api/objects/lat-{k}", document(f"lat-{k}", k))
                )
                if status != 200:
                    raise BenchError(f"PUT lat-{k} answered {status}")
        finally:
            client.close()
        alone = latency_phase(node, sizes, n_objects)
        before = node_metrics(node)
        holder = Holder(node, sizes)
        opened = time.perf_counter() - holder.ready["seconds"]
        loaded = latency_phase(node, sizes, n_objects, (opened, header_timeout))
        during = node_metrics(node)  # connections open while the clients are still held
        held = holder.stop()
        holder = None
        after = node_metrics(node)
    finally:
        if holder is not None:
            holder.kill()
        stop_nodes(nodes)
    key = 'vesper_http_timeouts_total{phase="header"}'
    header_timeouts = after.get(key, 0.0) - before.get(key, 0.0)
    idle, slow = held["idle"], held["slow"]
    common = {"api_header_timeout_s": header_timeout, "load1": load1()}
    return [
        Figure(
            "slow",
            "GET/PUT latency p50: alone vs loaded",
            alone["p50_ms"],
            loaded["p50_ms"],
            "ms",
            cost=True,
            detail={"alone": alone, "loaded": loaded, **common},
        ),
        Figure(
            "slow",
            f"GET/PUT latency p99: alone vs {sizes.idle} idle + {sizes.slow} slow",
            alone["p99_ms"],
            loaded["p99_ms"],
            "ms",
            max_ratio=2,
            cost=True,
            ours=True,
        ),
        Figure(
            "slow",
            "  max latency: alone vs loaded",
            alone["max_ms"],
            loaded["max_ms"],
            "ms",
            cost=True,
        ),
        Figure(
            "slow",
            f"  slowest 1% within {BURST_WINDOW_S:g} s of a close burst",
            None,
            loaded["slowest_near_burst"],
            "reqs",
            detail={"of": len(loaded["slowest_ms_at_s"]), "bursts_at_s": loaded["bursts_at_s"]},
        ),
        Figure(
            "slow",
            "  idle connections the node closed",
            None,
            idle["closed"],
            "conns",
            detail={"idle": idle, "held_min": held["held_min"], "held_max": held["held_max"]},
        ),
        Figure(
            "slow",
            "  slow connections the node closed",
            None,
            slow["closed"],
            "conns",
            detail={"slow": slow},
        ),
        Figure(
            "slow",
            "    of which answered 408 first",
            None,
            idle["answered_408"] + slow["answered_408"],
            "conns",
        ),
        Figure("slow", "  header timeouts counted by the node", None, header_timeouts, "conns"),
        Figure(
            "slow", "  idle connection lifetime, median", None, idle["lifetime_s"]["median"], "s"
        ),
        Figure(
            "slow", "  slow connection lifetime, median", None, slow["lifetime_s"]["median"], "s"
        ),
        Figure(
            "slow",
            "  connections open on the node, under load",
            None,
            during.get("vesper_http_connections", 0.0),
            "conns",
            detail={"connect_errors": held["connect_errors"]},
        ),
    ]


# -- the idle and slow clients (child process) -----------------------------------------


@dataclass
class Kind:
    opened: int = 0
    closed: int = 0
    """Closed by the node (EOF or reset), not by us."""
    answered_408: int = 0
    heads_completed: int = 0
    lifetimes: list[float] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        life = sorted(self.lifetimes)
        return {
            "opened": self.opened,
            "closed": self.closed,
            "answered_408": self.answered_408,
            "heads_completed": self.heads_completed,
            "lifetime_s": {
                "min": round(life[0], 2) if life else None,
                "median": round(statistics.median(life), 2) if life else None,
                "max": round(life[-1], 2) if life else None,
            },
        }


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    data = bytearray()
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionError:
        pass
    return bytes(data)


async def hold(host: str, port: int, n_idle: int, n_slow: int) -> dict[str, Any]:
    """Hold ``n_idle`` silent connections and ``n_slow`` trickling ones, each reopened
    as soon as the node closes it, until stdin closes; then report what happened."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    kinds = {"idle": Kind(), "slow": Kind()}
    state = {"held": 0, "connect_errors": 0}

    async def connection(kind: str) -> None:
        stats = kinds[kind]
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    state["connect_errors"] += 1
                    await asyncio.sleep(0.05)
                    continue
                stats.opened += 1
                state["held"] += 1
                opened = loop.time()
                reading = asyncio.ensure_future(read_to_eof(reader))
                try:
                    sent = 0
                    while not reading.done() and not stop.is_set():
                        if kind == "slow" and sent < len(SLOW_HEAD):
                            writer.write(SLOW_HEAD[sent : sent + 1])
                            sent += 1
                            stats.heads_completed += sent == len(SLOW_HEAD)
                        timeout = SLOW_BYTE_INTERVAL_S if kind == "slow" else None
                        await asyncio.wait(
                            {reading, stopping}, timeout=timeout, return_when="FIRST_COMPLETED"
                        )
                finally:
                    state["held"] -= 1
                    writer.transport.abort()
                if reading.done():
                    stats.closed += 1
                    stats.lifetimes.append(loop.time() - opened)
                    stats.answered_408 += reading.result().startswith(b"HTTP/1.1 408 ")
                else:
                    reading.cancel()
        finally:
            stopping.cancel()

    started = time.monotonic()
    tasks = [asyncio.ensure_future(connection("idle")) for _ in range(n_idle)]
    tasks += [asyncio.ensure_future(connection("slow")) for _ in range(n_slow)]
    while kinds["idle"].opened < n_idle or kinds["slow"].opened < n_slow:
        await asyncio.sleep(0.01)
    print(json.dumps({"ready": True, "seconds": round(time.monotonic() - started, 3)}), flush=True)
    held_min = held_max = state["held"]
    stdin_closed = loop.run_in_executor(None, sys.stdin.buffer.read)
    while not stdin_closed.done():
        await asyncio.wait({stdin_closed}, timeout=0.05)
        held_min, held_max = min(held_min, state["held"]), max(held_max, state["held"])
    stop.set()
    await asyncio.gather(*tasks)
    return {
        "idle": kinds["idle"].report(),
        "slow": kinds["slow"].report(),
        "held_min": held_min,
        "held_max": held_max,
        "connect_errors": state["connect_errors"],
    }


def run_holder(address: str, n_idle: int, n_slow: int) -> int:
    host, port = address.rsplit(":", 1)
    print(json.dumps(asyncio.run(hold(host, int(port), n_idle, n_slow))), flush=True)
    return 0


BENCHES: dict[str, Callable[[Path, Sizes], list[Figure]]] = {
    "http": bench_http,
    "repl": bench_repl,
    "slow": bench_slow,
}


# -- report ----------------------------------------------------------------------------


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("us", "ms", "s"):
        return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"
    return f"{value:,.0f}"


def print_table(info: dict[str, Any], figures: list[Figure], sizes: Sizes, quick: bool) -> None:
    print(
        f"machine: nproc={info['nproc']} cpu={info['cpu'] or '?'} python={info['python']} "
        f"sqlite={info['sqlite']} ({info['platform']})"
    )
    print(
        f"load average (1 min): {info['load1_start']} at the start, {info['load1_end']} at the end"
    )
    print(
        f"sizes: {'quick' if quick else 'full'}, median of {sizes.rounds} interleaved "
        f"round(s) of {sizes.http_writes:,} (http) and {sizes.repl_writes:,} (repl) writes; "
        f"slow: {sizes.slow_requests:,} requests per phase, {sizes.idle} idle + "
        f"{sizes.slow} slow connections"
    )
    header = (
        f"{'bench':<6} {'metric':<48} {'base':>9} {'value':>9} {'unit':<9} "
        f"{'change':>8} {'target':>8}  result"
    )
    print(header)
    print("-" * len(header))
    for fig in figures:
        if fig.cost:
            change = "" if fig.ratio is None else f"x{fig.ratio:.2f}"
        else:
            change = "" if fig.change_pct is None else f"{fig.change_pct:+.1f}%"
        print(
            f"{fig.name:<6} {fig.metric:<48} {format_value(fig.base, fig.unit):>9} "
            f"{format_value(fig.value, fig.unit):>9} {fig.unit:<9} {change:>8} "
            f"{fig.target:>8}  {fig.verdict}".rstrip()
        )
    if any(fig.ours for fig in figures):
        print("* a target set for this bench, not one of the project's stated targets")
    for fig in figures:
        if fig.detail:
            print(f"  {fig.name}: {json.dumps(fig.detail)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHES),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHES)}",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (the median is kept)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument("--dir", help="directory for the temporary stores (default: system temp)")
    parser.add_argument("--hold", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--idle", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--slow", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold:
        return run_holder(args.hold, args.idle, args.slow)

    # SIGTERM unwinds like Ctrl-C, so the brokers and nodes we started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**asdict(sizes), "rounds": args.rounds})
    names = args.only or list(BENCHES)
    figures: list[Figure] = []
    load_start = load1()
    started = time.perf_counter()
    for name in names:
        log(f"{name} ...")
        with tempfile.TemporaryDirectory(prefix=f"vesper-access-{name}-", dir=args.dir) as tmp:
            figures.extend(BENCHES[name](Path(tmp), sizes))
    info = benchlib.machine(
        total_seconds=round(time.perf_counter() - started, 2),
        load1_start=load_start,
        load1_end=load1(),
    )
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "quick": args.quick,
                    "sizes": asdict(sizes),
                    "figures": [
                        {
                            **asdict(f),
                            "change_pct": f.change_pct,
                            "ratio": f.ratio,
                            "target": f.target,
                            "verdict": f.verdict,
                        }
                        for f in figures
                    ],
                },
                indent=2,
            )
        )
    else:
        print_table(info, figures, sizes, args.quick)
        print(f"total: {info['total_seconds']} s")
    missed = [f for f in figures if f.verdict == "MISS"]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
