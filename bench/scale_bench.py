#!/usr/bin/env python3
"""Status, digest and reads on large stores: what they cost at 10,000, 100,000 and
1,000,000 objects.

For each size a fresh SQLite file store (``save_history``, ``outbox``) is filled in this
process with bulk commits of 50,000 objects (~150 bytes each), closed, and served by
``vesper serve`` (no replication), then over one keep-alive connection:

status   ``GET /api/status``: median and p99 of 50 calls (target: at 1,000,000 objects
         within 2x of the figure at 10,000, i.e. O(1))
digest   ``GET /api/digest`` likewise (256 bucket digests)
read     ``GET /api/objects/{id}`` of random objects: median and p99 of 1,000 calls
write    ``POST /api/objects`` of one new object, 500 times: the commit maintains the
         digest and its bucket in the same transaction, whatever the store's size

Also printed: the store's size on disk, bytes per object and per changeset, and the
node's start-up time on the filled store (it verifies the hash chain on open).

Usage::

    .venv/bin/python bench/scale_bench.py                  # 10k, 100k, 1M: ~4 minutes
    .venv/bin/python bench/scale_bench.py --sizes 10000,100000
    .venv/bin/python bench/scale_bench.py --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
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
from vesper.store import open_store  # noqa: E402

BULK = 50_000
STATUS_CALLS = 50
READS = 1_000
WRITES = 500
O1_FACTOR = 2.0
"""Status at the largest size may take at most this many times its time at the
smallest: O(1) with room for the noise of a shared machine."""


def doc(i: int) -> dict[str, Any]:
    """~150 bytes of JSON."""
    return {
        "id": f"obj-{i:08d}",
        "name": f"object number {i}",
        "kind": ("alpha", "beta", "gamma")[i % 3],
        "n": i,
        "score": (i * 7919 % 10_000) / 100 + 0.5,
        "tags": ["t" + str(i % 17), "u" + str(i % 5)],
    }


def fill(path: Path, n: int) -> dict[str, float]:
    started = time.perf_counter()
    store = open_store(f"sqlite:///{path}", "S", save_history=True, outbox=True)
    try:
        for start in range(0, n, BULK):
            store.create([doc(i) for i in range(start, min(n, start + BULK))])
        changesets = store.db.fetch("SELECT count(*) FROM changesets")[0][0]
    finally:
        store.close()
    seconds = time.perf_counter() - started
    return {"fill_s": seconds, "changesets": changesets}


def timed(client: Client, path: str, n: int, body: bytes | None = None) -> list[float]:
    out = []
    for _ in range(n):
        request = client.build("POST" if body else "GET", path, body)
        t = time.perf_counter()
        status, _ = client.request(request)
        out.append((time.perf_counter() - t) * 1000)
        if status >= 300:
            raise BenchError(f"{path}: HTTP {status}")
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def measure(work: Path, n: int) -> dict[str, Any]:
    folder = work / f"n{n}"
    folder.mkdir()
    db = folder / "S.db"
    log(f"filling a store with {n:,} objects ...")
    built = fill(db, n)
    size = sum(p.stat().st_size for p in folder.glob("S.db*"))
    log(f"  {built['fill_s']:.1f} s, {size / 1e6:.1f} MB; starting a node on it")
    t = time.perf_counter()
    node = _nodes.start_node(folder / "node", "S", {"storage_url": f"sqlite:///{db}"})
    startup = time.perf_counter() - t
    try:
        client = Client(node.host, node.port)
        timed(client, "/api/status", 5)  # warm
        status = timed(client, "/api/status", STATUS_CALLS)
        digest = timed(client, "/api/digest", STATUS_CALLS)
        rng = random.Random(n)
        reads = []
        for _ in range(READS):
            reads += timed(client, f"/api/objects/obj-{rng.randrange(n):08d}", 1)
        writes = []
        for i in range(WRITES):
            body = orjson.dumps(doc(n + i))
            writes += timed(client, "/api/objects", 1, body)
        objects = client.get_json("/api/status")["objects"]
        client.close()
    finally:
        _nodes.stop_node(node)
    if objects != n + WRITES:
        raise BenchError(f"the node reports {objects} objects, expected {n + WRITES}")
    return {
        "objects": n,
        "status_ms": statistics.median(status),
        "status_p99_ms": p99(status),
        "digest_ms": statistics.median(digest),
        "digest_p99_ms": p99(digest),
        "read_ms": statistics.median(reads),
        "read_p99_ms": p99(reads),
        "write_ms": statistics.median(writes),
        "write_p99_ms": p99(writes),
        "startup_s": startup,
        "bytes": size,
        "bytes_per_object": size / n,
        "bytes_per_changeset": size / built["changesets"],
        **built,
    }


def report(results: list[dict[str, Any]]) -> bool:
    print(benchlib.machine_line())
    print(
        f"{'objects':>10} {'status p50/p99 ms':>18} {'digest p50/p99 ms':>18} "
        f"{'read p50/p99 ms':>16} {'write p50/p99 ms':>17} {'start s':>8} "
        f"{'B/object':>9} {'B/bulk commit':>14}"
    )
    for r in results:
        print(
            f"{r['objects']:>10,} {r['status_ms']:>8.2f} / {r['status_p99_ms']:<7.2f} "
            f"{r['digest_ms']:>8.2f} / {r['digest_p99_ms']:<7.2f} "
            f"{r['read_ms']:>7.2f} / {r['read_p99_ms']:<6.2f} "
            f"{r['write_ms']:>7.2f} / {r['write_p99_ms']:<7.2f} {r['startup_s']:>8.2f} "
            f"{r['bytes_per_object']:>9.0f} {r['bytes_per_changeset']:>14,.0f}"
        )
    small, large = results[0], results[-1]
    ratio = large["status_ms"] / small["status_ms"]
    ok = ratio <= O1_FACTOR
    print(
        f"status at {large['objects']:,} objects: {ratio:.2f}x its time at "
        f"{small['objects']:,} (target <= {O1_FACTOR:g}x: O(1)) "
        f"{'PASS' if ok else 'MISS'}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--dir", help="folder for the temporary stores")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vesper-scale-") as tmp:
        results = [measure(Path(tmp), n) for n in sizes]
    ok = report(results)
    if args.json:
        print(json.dumps({"machine": benchlib.machine(), "results": results}))
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.exit(f"scale_bench: {exc}")
