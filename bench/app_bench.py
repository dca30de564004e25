#!/usr/bin/env python3
"""What applications see: indexed queries on a million objects, the changes feed's
delivery latency, and one SSE client's throughput.

query    a store of ``--objects`` objects (~150 bytes, filled in this process) and the
         same queries with and without an index on ``n``, through ``Store.run_query``:
         an equality (one object) and a range (100 objects); p50 and p99. The index is
         added after the fill and built in the background: its build rate is printed.
latency  a ``vesper serve`` node; one writer at 500 writes/s, each object carrying its
         send time; one client on ``feed=continuous&include_objects=true`` takes each
         entry's delay from write to arrival: p50 and p99.
sse      the same node with 20,000 changesets: one client reads them all through
         ``feed=sse``: changes/s.

Usage::

    .venv/bin/python bench/app_bench.py                 # ~5 minutes at 1,000,000 objects
    .venv/bin/python bench/app_bench.py --objects 100000
    .venv/bin/python bench/app_bench.py --json
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import orjson  # noqa: E402

import _nodes  # noqa: E402 - bench/ is on sys.path when a script runs
import benchlib  # noqa: E402
from _nodes import BenchError, Client, log  # noqa: E402
from scale_bench import doc  # noqa: E402
from vesper.query.expression import parse  # noqa: E402
from vesper.store import open_store  # noqa: E402
from vesper.store.query import Query  # noqa: E402

BULK = 50_000
INDEXED_RUNS = 300
SCAN_RUNS = 5
RATE = 500
LATENCY_WRITES = 2_500
SSE_CHANGES = 20_000
TARGET_INDEXED_SPEEDUP = 100.0
"""An indexed query at a million objects should be at least this much faster."""


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed_queries(store: Any, make: Any, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        query = make(i)
        started = time.perf_counter()
        answer = store.run_query(query)
        out.append((time.perf_counter() - started) * 1000)
        if not answer["results"]:
            raise BenchError("a benchmark query found nothing")
    return out


def measure_queries(work: Path, n: int) -> dict[str, Any]:
    path = work / "q.db"
    store = open_store(f"sqlite:///{path}", "Q", save_history=True)
    try:
        log(f"query: filling {n:,} objects ...")
        for start in range(0, n, BULK):
            store.create([doc(i) for i in range(start, min(n, start + BULK))])
        rng = random.Random(1)

        def equality(_: int) -> Query:
            return Query(where=parse({"n": rng.randrange(n)}), limit=10)

        def range_(_: int) -> Query:
            low = rng.randrange(n - 100)
            return Query(where=parse({"n": {"$gte": low, "$lt": low + 100}}), limit=1000)

        log("query: without an index ...")
        scan_eq = timed_queries(store, equality, SCAN_RUNS)
        scan_range = timed_queries(store, range_, SCAN_RUNS)
        log("query: building the index on n ...")
        started = time.perf_counter()
        store.indexes.add("n")
        while not store.indexes.ready("n"):
            time.sleep(0.05)
        build_s = time.perf_counter() - started
        explain = store.run_query(Query(where=parse({"n": 5}), explain=True))["explain"]
        if explain["index"] != "n (equality)":
            raise BenchError(f"the index was not used: {explain}")
        eq = timed_queries(store, equality, INDEXED_RUNS)
        rng_ = timed_queries(store, range_, INDEXED_RUNS)
    finally:
        store.close()
    return {
        "objects": n,
        "index_build_s": build_s,
        "index_build_objects_s": n / build_s,
        "equality_ms": (statistics.median(eq), p99(eq)),
        "equality_scan_ms": (statistics.median(scan_eq), p99(scan_eq)),
        "range_ms": (statistics.median(rng_), p99(rng_)),
        "range_scan_ms": (statistics.median(scan_range), p99(scan_range)),
    }


def measure_feed(work: Path) -> dict[str, Any]:
    node = _nodes.start_node(work / "feed", "F", {"save_history": True})
    try:
        delays: list[float] = []
        ready = threading.Event()

        def follow() -> None:
            sock = socket.create_connection((node.host, node.port))
            sock.sendall(
                b"GET /api/changes?feed=continuous&since=now&include_objects=true"
                b"&heartbeat=1000 HTTP/1.1\r\nHost: bench\r\n\r\n"
            )
            stream = sock.makefile("rb")
            while stream.readline() not in (b"\r\n", b""):
                pass  # the head
            ready.set()
            while len(delays) < LATENCY_WRITES:
                size = stream.readline().strip()
                if not size:
                    continue
                chunk = stream.read(int(size, 16))
                stream.readline()
                for line in chunk.splitlines():
                    if line.startswith(b'{"seq"'):
                        entry = orjson.loads(line)
                        sent = entry["objects"][0]["object"]["t"]
                        delays.append((time.time() - sent) * 1000)
            sock.close()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        ready.wait(10)
        client = Client(node.host, node.port)
        log(f"latency: {LATENCY_WRITES:,} writes at {RATE}/s with a feed client ...")
        started = time.perf_counter()
        for i in range(LATENCY_WRITES):
            due = started + i / RATE
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            body = orjson.dumps({"id": f"l{i}", "t": time.time()})
            status, _ = client.request(client.build("POST", "/api/objects", body))
            if status != 201:
                raise BenchError(f"a write answered {status}")
        reader.join(30)
        if len(delays) < LATENCY_WRITES:
            raise BenchError(f"the feed delivered {len(delays)} of {LATENCY_WRITES}")

        log(f"sse: {SSE_CHANGES:,} changesets ...")
        for i in range(SSE_CHANGES - LATENCY_WRITES):
            body = orjson.dumps({"id": f"s{i}"})
            client.request(client.build("POST", "/api/objects", body))
        client.close()
        sock = socket.create_connection((node.host, node.port))
        started = time.perf_counter()
        sock.sendall(
            b"GET /api/changes?feed=sse&since=0&limit=%d HTTP/1.1\r\nHost: bench\r\n\r\n"
            % SSE_CHANGES
        )
        data = b""
        while b"event: end" not in data[-300:]:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        seconds = time.perf_counter() - started
        sock.close()
        events = data.count(b'data: {"seq"')
        if events != SSE_CHANGES:
            raise BenchError(f"SSE delivered {events} of {SSE_CHANGES} changes")
    finally:
        _nodes.stop_node(node)
    return {
        "feed_latency_ms": (statistics.median(delays), p99(delays)),
        "sse_changes_s": SSE_CHANGES / seconds,
    }


def report(q: dict[str, Any], f: dict[str, Any]) -> bool:
    print(benchlib.machine_line())
    print(f"queries on {q['objects']:,} objects (Store.run_query, in process), p50 / p99 ms:")
    ok = True
    for name, key in (("equality (1 object)", "equality"), ("range (100 objects)", "range")):
        fast, slow = q[f"{key}_ms"], q[f"{key}_scan_ms"]
        speedup = slow[0] / fast[0]
        good = speedup >= TARGET_INDEXED_SPEEDUP
        ok = ok and good
        print(
            f"  {name:<22} indexed {fast[0]:8.2f} / {fast[1]:8.2f}   scan {slow[0]:9.1f} / "
            f"{slow[1]:9.1f}   {speedup:8.0f}x (target >= {TARGET_INDEXED_SPEEDUP:.0f}x) "
            f"{'PASS' if good else 'MISS'}"
        )
    print(
        f"  index build: {q['index_build_s']:.1f} s ({q['index_build_objects_s']:,.0f} objects/s,"
        " in the background)"
    )
    latency = f["feed_latency_ms"]
    print(
        f"changes feed at {RATE} writes/s, write to arrival: p50 {latency[0]:.2f} ms, "
        f"p99 {latency[1]:.2f} ms"
    )
    print(f"one SSE client reading {SSE_CHANGES:,} changes: {f['sse_changes_s']:,.0f} changes/s")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--dir", help="folder for the temporary stores")
    args = parser.parse_args()
    if args.objects < 1_000:
        parser.error("--objects: at least 1000")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vesper-app-") as tmp:
        queries = measure_queries(Path(tmp), args.objects)
        feed = measure_feed(Path(tmp))
    ok = report(queries, feed)
    if args.json:
        print(json.dumps({"machine": benchlib.machine(), "queries": queries, "feed": feed}))
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.exit(f"app_bench: {exc}")
