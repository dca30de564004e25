#!/usr/bin/env python3
"""Lag in a three-level tree of channels: a write at a leaf until every other node has it.

The tree (as in tests/replication/test_tree.py), seven ``vesper serve`` nodes::

    channel R    leafR  h1 h2
    channel A           h1 h2  leafA  h3 h4      (h1, h2 link R and A; h3, h4 link A and A1)
    channel A1                        h3 h4  leafA1

Workload: 200 writes/s in all (``--rate``), paced, spread round-robin over the three
leaves (write ``i`` is due at ``t0 + i / rate`` on leaf ``i % 3``), one writer process per
leaf with a keep-alive connection, each write one ``POST /api/objects`` of the
benchmarks' small document. Figures, each the median of ``--runs`` runs:

every node  per write, from its leaf's answer (``201`` read) until the last of the six
            other nodes applied it: p50, p99
by hubs     per write and other node, the same lag grouped by how many hubs must relay
            it to reach that node (0: a node on the writer's channel; 2: a leaf two
            levels away): p50, p99

Visibility comes from each node's own clock: every node runs through
``bench/_timed_node.py``, which records ``time.time_ns()`` right after each apply
transaction returns in the store; writers record ``time.time_ns()`` at each answer. One
machine, one wall clock. The bench polls the logs only to learn that the nodes are done.

Brokers: ``embedded`` (one ``vesper broker`` with ``--data-dir``: persistent messages
stored), ``activemq`` (one, ``scripts/brokers/activemq.sh``) and ``activemq-network``
(``--network`` ActiveMQ brokers joined by ``scripts/brokers/activemq-network.sh``; the
nodes are spread round-robin over them, in the order of the tree above, each given its
broker only, so that messages cross the network). There is no target: the figures are
recorded.

Usage::

    .venv/bin/python bench/tree_bench.py                     # embedded + activemq-network
    .venv/bin/python bench/tree_bench.py --quick             # small, embedded only (smoke)
    .venv/bin/python bench/tree_bench.py --brokers embedded,activemq --runs 1
    .venv/bin/python bench/tree_bench.py --json

The exit status is 0 unless a broker or a run fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

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
from _timed_node import APPLY_LOG  # noqa: E402
from peers import LOG_POLL_S, ApplyLog, free_port, percentile  # noqa: E402
from vesper.history.revision import parse_revision  # noqa: E402

TIMED_NODE = Path(__file__).resolve().parent / "_timed_node.py"
SCRIPTS = ROOT / "scripts" / "brokers"
BROKERS = ("embedded", "activemq", "activemq-network")
CHANNELS = ("R", "A", "A1")
"""The levels of the tree, top first: a node's distance to a channel is in levels."""
TREE = {
    "leafR": ("R",),
    "h1": ("R", "A"),
    "h2": ("R", "A"),
    "leafA": ("A",),
    "h3": ("A", "A1"),
    "h4": ("A", "A1"),
    "leafA1": ("A1",),
}
LEAVES = ("leafR", "leafA", "leafA1")
RATE = 200
WARMUP = 10
"""Writes per leaf every node must have before the clock starts: all connected and
subscribed, the network of brokers forwarding (it starts doing so seconds after the
brokers)."""
WARMUP_DEADLINE_S = 120.0
DEADLINE_S = 120.0


@dataclass(frozen=True)
class Sizes:
    writes: int
    runs: int
    rate: float = RATE


FULL = Sizes(writes=6_000, runs=3)
QUICK = Sizes(writes=300, runs=1)


def hubs_between(writer: str, node: str) -> int:
    """How many hubs relay a write of leaf ``writer`` before ``node`` gets it."""
    (level,) = (CHANNELS.index(c) for c in TREE[writer])
    return min(abs(CHANNELS.index(c) - level) for c in TREE[node])


# -- brokers -----------------------------------------------------------------------------


@dataclass
class Brokers:
    name: str
    addresses: list[str]
    """``host:port`` of each broker; nodes are spread over them round-robin."""
    stop: Callable[[], None]
    info: str
    pids: list[int] = field(default_factory=list)
    """The brokers' processes, for their CPU time (empty when not known)."""


def start_brokers(name: str, work: Path, network: int) -> Brokers:
    folder = work / f"{name}-{uuid.uuid4().hex[:8]}"
    if name == "embedded":
        from vesper.broker.process import BrokerProcess

        # --data-dir: persistent messages are stored (SQLite, synchronous=FULL), as
        # ActiveMQ stores them.
        broker = BrokerProcess(
            folder, control=False, allow_anonymous=True, log_path=work / "embedded.log"
        )
        broker.start()
        address = f"{broker.host}:{broker.port}"
        return Brokers(
            name,
            [address],
            broker.stop,
            "vesper embedded, --data-dir",
            [broker.pid] if broker.pid else [],
        )
    script = SCRIPTS / ("activemq.sh" if name == "activemq" else "activemq-network.sh")
    if not script.exists():
        raise BenchError(f"{script.relative_to(ROOT)} is missing")
    folder.mkdir(parents=True)

    def stop() -> None:
        subprocess.run([script, "stop", str(folder)], capture_output=True, timeout=180, check=False)

    # activemq.sh binds PORT and PORT+1 (TLS); the network script three per broker
    # (STOMP, STOMP over TLS, and the OpenWire port the bridges use).
    if name == "activemq":
        args = [str(free_port(2))]
    else:
        args = [str(free_port(3 * network)), str(network)]
    try:
        done = subprocess.run(
            [script, "start", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"{name} did not start:\n{done.stdout}{done.stderr}")
    except BaseException:
        stop()
        raise
    if name == "activemq":
        pid = int((folder / "activemq.pid").read_text())
        return Brokers(name, [f"127.0.0.1:{args[0]}"], stop, "ActiveMQ via activemq.sh", [pid])
    env = dict(
        line.split("=", 1)
        for line in (folder / "network.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    addresses = [a for a in env["MQ_NETWORK"].split(",") if a]
    pids = [int(p) for p in env.get("MQ_NETWORK_PIDS", "").split(",") if p]
    info = f"{len(addresses)} ActiveMQ brokers in a full mesh via activemq-network.sh"
    return Brokers(name, addresses, stop, info, pids)


# -- the tree ----------------------------------------------------------------------------


@dataclass
class TreeRun:
    nodes: dict[str, HttpNode] = field(default_factory=dict)
    logs: dict[str, ApplyLog] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)


def start_tree(brokers: Brokers, work: Path) -> TreeRun:
    run = TreeRun()
    prefix = f"tree{uuid.uuid4().hex[:8]}"
    command = [sys.executable, str(TIMED_NODE), "serve"]
    try:
        for k, (branch, channels) in enumerate(TREE.items()):
            address = brokers.addresses[k % len(brokers.addresses)]
            run.placement[branch] = address
            settings = {
                "save_history": True,
                "replication_hosts": address,
                "replication_channels": [f"{prefix}-{c}" for c in channels],
            }
            apply_log = work / branch / "applied.log"
            os.environ[APPLY_LOG] = str(apply_log)
            try:
                run.nodes[branch] = launch_node(work / branch, branch, settings, command)
            finally:
                del os.environ[APPLY_LOG]
            run.logs[branch] = ApplyLog(apply_log)
        for node in run.nodes.values():
            wait_serving(node)
        for node in run.nodes.values():
            client = Client(node.host, node.port)
            try:
                wait_until(
                    lambda c=client: c.get_json("/api/status")["replication"]["connected"],
                    60,
                    f"{node.label} connected to its broker",
                )
            finally:
                client.close()
    except BaseException:
        stop_tree(run)
        raise
    return run


def stop_tree(run: TreeRun) -> None:
    for node in run.nodes.values():
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in run.nodes.values():
        stop_node(node)


def cpu(run: TreeRun, brokers: Brokers) -> dict[str, float]:
    """CPU seconds each node and each broker process we know of has used so far: they
    share the machine's cores with one another and the writers."""
    used = {b: cpu_seconds(node.proc.pid) for b, node in run.nodes.items()}
    used |= {f"broker{k}": cpu_seconds(pid) for k, pid in enumerate(brokers.pids)}
    return used


def doc_id(tag: str, i: int) -> str:
    return f"{tag}-{i:06d}"


def changeset_of(leaf: str, answer: bytes) -> str:
    """The id of the changeset a ``201`` answered: its revision is the node's version
    vector right after the commit, whose own entry is the new changeset's counter."""
    return f"{leaf}.{parse_revision(orjson.loads(answer)['revision'])[leaf]}"


def post(client: Client, leaf: str, request: bytes) -> str:
    status, body = client.request(request)
    if status != 201:
        raise BenchError(f"{leaf}: POST answered {status}: {body[:200]!r}")
    return changeset_of(leaf, body)


def wait_applied(run: TreeRun, written: dict[str, list[str]], timeout: float) -> None:
    """Until every node has applied every changeset the other nodes wrote, as its apply
    log says. Changesets, not objects: one released from pending is logged without its
    objects."""
    deadline = time.monotonic() + timeout
    for branch, apply_log in run.logs.items():
        missing = {i for w, ids in written.items() if w != branch for i in ids}
        while True:
            apply_log.poll()
            missing.difference_update(apply_log.changesets)
            if not missing:
                break
            if time.monotonic() > deadline:
                node = run.nodes[branch]
                client = Client(node.host, node.port)
                try:
                    status = client.get_json("/api/status")
                finally:
                    client.close()
                raise BenchError(
                    f"{branch} lacks {len(missing)} changesets after {timeout:g} s, e.g. "
                    f"{sorted(missing)[:5]}; its revision {status['revision']}, pending "
                    f"{status['pending']}, quarantined {status['replication'].get('quarantined')}"
                )
            time.sleep(LOG_POLL_S)


def warm_up(run: TreeRun, tag: str) -> None:
    written: dict[str, list[str]] = {}
    for leaf in LEAVES:
        node = run.nodes[leaf]
        client = Client(node.host, node.port)
        try:
            written[leaf] = [
                post(client, leaf, client.build("POST", "/api/objects", document(tag + leaf, i)))
                for i in range(WARMUP)
            ]
        finally:
            client.close()
    wait_applied(run, written, WARMUP_DEADLINE_S)


def document(tag: str, i: int) -> bytes:
    return orjson.dumps({"id": doc_id(tag, i), **benchlib.small_doc(i)})


def writer_main(
    pipe: Any, host: str, port: int, leaf: str, tag: str, mine: list[int], rate: float
) -> None:
    """One leaf's writer process: write ``i`` of ``mine`` is due at ``t0 + i / rate``;
    sends back each write's changeset id and answer time, and the worst lateness."""
    try:
        client = Client(host, port)
        requests = [client.build("POST", "/api/objects", document(tag, i)) for i in mine]
        pipe.send("ready")
        t0_ns = pipe.recv()
        base = time.monotonic() + (t0_ns - time.time_ns()) / 1e9
        answered: list[tuple[str, int]] = []
        took: list[float] = []
        slip = 0.0
        for k, i in enumerate(mine):
            delay = base + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                slip = max(slip, -delay)
            sent = time.time_ns()
            cs_id = post(client, leaf, requests[k])
            answered.append((cs_id, time.time_ns()))
            took.append((answered[-1][1] - sent) / 1e6)
        pipe.send(("ok", answered, slip, took))
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))


def paced_writes(
    run: TreeRun, tag: str, n: int, rate: float
) -> tuple[dict[str, tuple[str, int]], float, list[float]]:
    """``n`` writes at ``rate``/s over the leaves; returns each write's changeset id
    with its leaf and answer time, the worst schedule slip in seconds and how long each
    POST took (ms)."""
    ctx = multiprocessing.get_context("spawn")
    share = {leaf: list(range(k, n, len(LEAVES))) for k, leaf in enumerate(LEAVES)}
    procs, pipes = [], {}
    try:
        for leaf, mine in share.items():
            parent, child = ctx.Pipe()
            node = run.nodes[leaf]
            proc = ctx.Process(
                target=writer_main,
                args=(child, node.host, node.port, leaf, tag, mine, rate),
                daemon=True,
            )
            proc.start()
            procs.append(proc)
            pipes[leaf] = parent
        for leaf, pipe in pipes.items():
            if not pipe.poll(60):
                raise BenchError(f"the writer of {leaf} did not start")
            message = pipe.recv()
            if message != "ready":
                raise BenchError(f"writer of {leaf}: {message[1]}")
        t0 = time.time_ns() + 200_000_000
        for pipe in pipes.values():
            pipe.send(t0)
        answered: dict[str, tuple[str, int]] = {}
        took: list[float] = []
        slip = 0.0
        for leaf, pipe in pipes.items():
            if not pipe.poll(n / rate + 120):
                raise BenchError(f"the writer of {leaf} did not finish")
            message = pipe.recv()
            if message[0] != "ok":
                raise BenchError(f"writer of {leaf}: {message[1]}")
            for cs_id, t in message[1]:
                answered[cs_id] = (leaf, t)
            slip = max(slip, message[2])
            took.extend(message[3])
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return answered, slip, took


def received(run: TreeRun) -> tuple[int, int]:
    """Changesets the nodes have received so far, duplicates included, and of them
    those that came by catch-up."""
    total = by_catchup = 0
    for node in run.nodes.values():
        client = Client(node.host, node.port)
        try:
            replication = client.get_json("/api/status")["replication"]
        finally:
            client.close()
        total += replication["changesets_received"]
        by_catchup += replication["catchup_changesets_received"]
    return total, by_catchup


def one_run(brokers: Brokers, work: Path, run_no: int, sizes: Sizes) -> dict[str, Any]:
    tree = start_tree(brokers, work / f"run{run_no}")
    try:
        warm_up(tree, f"w{run_no}")
        cpu0, t0, received0 = cpu(tree, brokers), time.monotonic(), received(tree)
        answered, slip, took = paced_writes(tree, f"t{run_no}", sizes.writes, sizes.rate)
        written: dict[str, list[str]] = {leaf: [] for leaf in LEAVES}
        for cs_id, (leaf, _) in answered.items():
            written[leaf].append(cs_id)
        wait_applied(tree, written, DEADLINE_S)
        elapsed = time.monotonic() - t0
        cores = {k: (v - cpu0[k]) / elapsed for k, v in cpu(tree, brokers).items()}
        received1 = received(tree)
        wanted = len(answered) * (len(TREE) - 1)
        copies, catchup = ((n - n0) / wanted for n, n0 in zip(received1, received0, strict=True))
    finally:
        stop_tree(tree)
    by_hubs: dict[int, list[float]] = {}
    everywhere: list[float] = []
    for cs_id, (leaf, t) in answered.items():
        last = 0.0
        for branch, apply_log in tree.logs.items():
            if branch == leaf:
                continue
            lag = (apply_log.changesets[cs_id] - t) / 1e6
            by_hubs.setdefault(hubs_between(leaf, branch), []).append(lag)
            last = max(last, lag)
        everywhere.append(last)
    figures = {"every_p50": everywhere, "every_p99": everywhere}
    for hubs, lags in by_hubs.items():
        figures[f"hubs{hubs}_p50"] = figures[f"hubs{hubs}_p99"] = lags
    out: dict[str, Any] = {
        key: percentile(sorted(lags), 99 if key.endswith("p99") else 50)
        for key, lags in figures.items()
    }
    out["max_ms"] = max(everywhere)
    out["max_schedule_slip_ms"] = slip * 1e3
    took.sort()
    out["post_p50_ms"], out["post_p99_ms"] = percentile(took, 50), percentile(took, 99)
    out["copies_per_node"] = copies
    out["share_by_catchup"] = catchup
    out["nodes_cpu_cores"] = sum(v for k, v in cores.items() if k in TREE)
    out["brokers_cpu_cores"] = sum(v for k, v in cores.items() if k not in TREE)
    out["cpu_cores"] = {k: round(v, 2) for k, v in cores.items()}
    out["placement"] = tree.placement
    return out


# -- report ------------------------------------------------------------------------------

METRICS = (
    ("every_p50", "write at a leaf -> at every other node, p50"),
    ("every_p99", "write at a leaf -> at every other node, p99"),
    ("hubs0_p50", "  -> a node on its channel (0 hubs), p50"),
    ("hubs0_p99", "  -> a node on its channel (0 hubs), p99"),
    ("hubs1_p50", "  -> a node 1 hub away, p50"),
    ("hubs1_p99", "  -> a node 1 hub away, p99"),
    ("hubs2_p50", "  -> a leaf 2 hubs away, p50"),
    ("hubs2_p99", "  -> a leaf 2 hubs away, p99"),
)


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key, _ in METRICS}


def print_report(
    sizes: Sizes,
    results: dict[str, list[dict[str, Any]]],
    infos: dict[str, Brokers],
    errors: list[str],
    load: tuple[float, float],
) -> None:
    print(benchlib.machine_line())
    print(f"load average (1 min): {load[0]:.2f} at the start, {load[1]:.2f} at the end")
    print(
        "tree: channels R - A - A1; hubs h1, h2 link R and A, h3, h4 link A and A1; "
        f"leaves leafR, leafA, leafA1; {sizes.writes:,} writes at {sizes.rate:g}/s spread over the "
        f"leaves; median of {sizes.runs} run(s)"
    )
    for name, brokers in infos.items():
        placement = results[name][0]["placement"] if results.get(name) else {}
        where = ", ".join(f"{b}@{a}" for b, a in placement.items())
        print(
            f"{name}: {brokers.info}" + (f"; nodes: {where}" if len(brokers.addresses) > 1 else "")
        )
    names = [n for n in results if results[n]]
    head = f"{'metric':<46}" + "".join(f"{n:>18}" for n in names) + f"{'target':>18}"
    print()
    print(head)
    print("-" * len(head))
    table = {n: medians(results[n]) for n in names}
    for key, label in METRICS:
        cells = "".join(f"{table[n][key]:>15,.2f} ms" for n in names)
        print(f"{label:<46}{cells}{'none (recorded)':>18}")
    print()
    for name in names:
        for i, r in enumerate(results[name], 1):
            detail = {k: round(v, 2) for k, v in r.items() if isinstance(v, float)}
            detail["cpu_cores"] = r["cpu_cores"]
            print(f"  {name} run {i}: {json.dumps(detail)}")
    for error in errors:
        print(f"  ERROR: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 writes, 1 run (smoke test)")
    parser.add_argument("--runs", type=int, help="runs per broker (median reported)")
    parser.add_argument(
        "--brokers",
        help=f"comma-separated, of {', '.join(BROKERS)} (default: embedded, and "
        "activemq-network when ActiveMQ and its network script are there; --quick: embedded)",
    )
    parser.add_argument("--rate", type=float, default=RATE, help="writes/s over all leaves")
    parser.add_argument("--writes", type=int, help="writes per run (default 6,000; --quick 300)")
    parser.add_argument("--network", type=int, default=3, help="brokers of activemq-network")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--dir", help="directory for the temporary files (default: system temp)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.rate <= 0:
        parser.error("--rate must be above 0")
    if args.writes is not None and args.writes < len(LEAVES):
        parser.error(f"--writes must be at least {len(LEAVES)}")
    sizes = Sizes(args.writes or sizes.writes, args.runs or sizes.runs, args.rate)
    if args.brokers:
        wanted = [b.strip() for b in args.brokers.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in BROKERS]
        if unknown:
            parser.error(f"unknown broker(s): {', '.join(unknown)}")
    elif args.quick:
        wanted = ["embedded"]
    else:
        wanted = ["embedded"]
        if (
            "activemq" in benchlib.installed_brokers()
            and (SCRIPTS / "activemq-network.sh").exists()
        ):
            wanted.append("activemq-network")
    # SIGTERM unwinds like Ctrl-C, so the brokers and nodes we started stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results: dict[str, list[dict[str, Any]]] = {}
    infos: dict[str, Brokers] = {}
    errors: list[str] = []
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vesper-tree-", dir=args.dir) as tmp:
        work = Path(tmp)
        for name in wanted:
            try:
                brokers = start_brokers(name, work, args.network)
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                log(f"{name}: failed to start: {exc}")
                errors.append(f"{name}: start failed: {exc}")
                continue
            infos[name] = brokers
            results[name] = []
            log(f"{name}: {', '.join(brokers.addresses)}")
            try:
                for run_no in range(1, sizes.runs + 1):
                    t = time.monotonic()
                    try:
                        result = one_run(brokers, work / name, run_no, sizes)
                    except (BenchError, OSError, subprocess.SubprocessError) as exc:
                        log(f"{name}: run {run_no} failed: {exc}")
                        errors.append(f"{name} run {run_no}: {exc}")
                        continue
                    results[name].append(result)
                    figures = {k: round(v, 2) for k, v in result.items() if isinstance(v, float)}
                    log(f"{name}: run {run_no}: {figures} ({time.monotonic() - t:.0f} s)")
            finally:
                brokers.stop()
    if args.json:
        print(
            json.dumps(
                {
                    "machine": benchlib.machine(
                        loadavg_at_start=load_start, loadavg_at_end=os.getloadavg()[0]
                    ),
                    "writes": sizes.writes,
                    "rate": sizes.rate,
                    "runs": results,
                    "medians": {n: medians(r) for n, r in results.items() if r},
                    "brokers": {n: b.info for n, b in infos.items()},
                    "errors": errors,
                    "total_seconds": round(time.monotonic() - started, 1),
                },
                indent=2,
            )
        )
    else:
        print_report(sizes, results, infos, errors, (load_start, os.getloadavg()[0]))
        print(f"total: {time.monotonic() - started:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
