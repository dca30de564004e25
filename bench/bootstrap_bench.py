#!/usr/bin/env python3
"""A new, empty node bootstrapping a peer's whole history: objects/s and peak memory.

For each history shape a store with ``--objects`` objects (~150 bytes each, their
history kept) is filled in this process, then served by ``vesper serve`` as node A on
an embedded broker. A publishes its history once (it was written before replication was
on, so it signs and sends it); once its outbox is empty, node B starts with an empty
store on the same channel and fetches everything through catch-up, verifying
signatures and chains and maintaining its digest as every node does. Measured on B:

objects/s   objects over the time from B's launch until B has A's revision (target
            >= 50,000/s); B applies catch-up batches before its HTTP server is up, so
            timing from its first ``/health`` answer would count those for free
peak RSS    B's ``VmHWM`` at the end plus its digest worker's (target < 200 MB)

and B's digest must equal A's. Shapes: ``bulk``, commits of 20,000 objects (50 for a
million), and ``single``, one object per commit (a million changesets; filling it takes
a few minutes). Also printed: A's store size per object and per changeset.

Usage::

    .venv/bin/python bench/bootstrap_bench.py                    # 1,000,000, both shapes
    .venv/bin/python bench/bootstrap_bench.py --objects 100000 --shapes bulk
    .venv/bin/python bench/bootstrap_bench.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import _nodes  # noqa: E402 - bench/ is on sys.path when a script runs
import benchlib  # noqa: E402
from _nodes import BenchError, Client, log  # noqa: E402
from scale_bench import doc  # noqa: E402
from vesper.broker.process import BrokerProcess  # noqa: E402
from vesper.store import open_store  # noqa: E402

BULK = 20_000
TARGET_OBJECTS_S = 50_000
TARGET_RSS_MB = 200
POLL_S = 0.25
TIMEOUT_S = 1_800


def fill(path: Path, n: int, shape: str) -> float:
    started = time.perf_counter()
    store = open_store(f"sqlite:///{path}", "A", save_history=True, outbox=True)
    try:
        step = BULK if shape == "bulk" else 1
        last = started
        for start in range(0, n, step):
            if step == 1:
                store.create(doc(start))
            else:
                store.create([doc(i) for i in range(start, min(n, start + step))])
            if time.perf_counter() - last >= 10:
                last = time.perf_counter()
                log(f"  filled {start + step:,} of {n:,}")
    finally:
        store.close()
    return time.perf_counter() - started


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {field} for process {pid}")


def tree_rss_mb(pid: int, field: str) -> float:
    """``field`` of process ``pid`` plus its children's: a node and its digest worker.
    (Two peaks taken apart can overstate the joint one, never understate it.)"""
    return rss_mb(pid, field) + sum(rss_mb(c, field) for c in _nodes.child_pids(pid))


def measure(work: Path, n: int, shape: str) -> dict[str, Any]:
    folder = work / shape
    folder.mkdir()
    db = folder / "A.db"
    log(f"{shape}: filling A with {n:,} objects ...")
    fill_s = fill(db, n, shape)
    size = sum(p.stat().st_size for p in folder.glob("A.db*"))
    changesets = n // BULK if shape == "bulk" else n
    broker = BrokerProcess(folder / "broker", allow_anonymous=True).start()
    nodes: list[_nodes.HttpNode] = []
    try:
        replication = {
            "save_history": True,
            "replication_hosts": [(broker.host, broker.port)],
            "replication_channel": "bootstrap",
        }
        log(f"  {fill_s:.0f} s, {size / 1e6:.0f} MB; A publishes its history ...")
        a = _nodes.start_node(folder / "a", "A", {**replication, "storage_url": f"sqlite:///{db}"})
        nodes.append(a)
        client_a = Client(a.host, a.port)
        _nodes.wait_until(
            lambda: client_a.get_json("/api/status")["replication"]["outbox"] == 0,
            TIMEOUT_S,
            "A's outbox to empty",
            interval=0.5,
        )
        target = client_a.get_json("/api/status")
        log("  starting B, empty ...")
        started = time.perf_counter()
        b = _nodes.launch_node(folder / "b", "B", replication)
        nodes.append(b)
        _nodes.wait_serving(b)
        serving_s = time.perf_counter() - started
        client_b = Client(b.host, b.port)
        rss_peak_sampled = 0.0
        last_log = started
        while True:
            status = client_b.get_json("/api/status")
            rss_peak_sampled = max(rss_peak_sampled, tree_rss_mb(b.proc.pid, "VmRSS"))
            if status["revision"] == target["revision"]:
                break
            now = time.perf_counter()
            if now - started > TIMEOUT_S:
                raise BenchError(f"B did not catch up in {TIMEOUT_S} s: {status['objects']:,}")
            if now - last_log >= 10:
                last_log = now
                log(f"  B has {status['objects']:,} objects after {now - started:.0f} s")
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
        peak = tree_rss_mb(b.proc.pid, "VmHWM")
        peak_node = rss_mb(b.proc.pid, "VmHWM")
        if status["digest"] != target["digest"] or status["objects"] != n:
            raise BenchError(f"B ended with {status['objects']} objects, digest differs")
        client_a.close()
        client_b.close()
    finally:
        for node in nodes:
            _nodes.stop_node(node)
        broker.stop()
    return {
        "shape": shape,
        "objects": n,
        "changesets": changesets,
        "seconds": seconds,
        "serving_s": serving_s,
        "objects_s": n / seconds,
        "peak_rss_mb": peak,
        "peak_rss_node_mb": peak_node,
        "peak_rss_digest_worker_mb": peak - peak_node,
        "fill_s": fill_s,
        "bytes_per_object": size / n,
        "bytes_per_changeset": size / changesets,
    }


def report(results: list[dict[str, Any]]) -> bool:
    print(benchlib.machine_line())
    print(
        f"{'history':>22} {'seconds':>8} {'serving':>8} {'objects/s':>10} {'target':>9} "
        f"{'peak RSS MB':>12} {'target':>7} {'B/object':>9} {'B/changeset':>12}"
    )
    ok = True
    for r in results:
        fast = r["objects_s"] >= TARGET_OBJECTS_S
        small = r["peak_rss_mb"] < TARGET_RSS_MB
        ok = ok and fast and small
        print(
            f"{r['objects']:>9,} in {r['changesets']:>9,} {r['seconds']:>8.1f} "
            f"{r['serving_s']:>8.1f} "
            f"{r['objects_s']:>10,.0f} {'PASS' if fast else 'MISS':>9} "
            f"{r['peak_rss_mb']:>12.0f} {'PASS' if small else 'MISS':>7} "
            f"{r['bytes_per_object']:>9.0f} {r['bytes_per_changeset']:>12,.0f}"
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--shapes", default="bulk,single", help="bulk, single or both")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--dir", help="folder for the temporary stores")
    args = parser.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    if not set(shapes) <= {"bulk", "single"} or args.objects < BULK:
        parser.error(f"--shapes takes bulk and single; --objects at least {BULK}")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vesper-bootstrap-") as tmp:
        results = [measure(Path(tmp), args.objects, shape) for shape in shapes]
    ok = report(results)
    if args.json:
        print(json.dumps({"machine": benchlib.machine(), "results": results}))
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.exit(f"bootstrap_bench: {exc}")
