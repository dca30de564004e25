#!/usr/bin/env python3
"""What the incremental store digest (an LtHash, vesper.store.digest) costs and saves.

element   the digest's work for one object: canonical JSON, the SHAKE128 squeeze, the
          lane arithmetic (``int.from_bytes`` and a ``LaneSum`` add)
commits   single-object commits (a create, then an update of it) on a SQLite file store,
          with the digest kept and with it switched off, in alternating rounds
bulk      one transaction creating many objects, with and without the digest
status    reading the revision and digest after a write, on a store of many objects,
          against a full scan like the one the status did before the digest was kept
open      computing the digest once when opening a store that did not keep it

Usage::

    .venv/bin/python bench/digest_bench.py            # 100,000 objects, about a minute
    .venv/bin/python bench/digest_bench.py --quick    # 10x smaller, a few seconds
    .venv/bin/python bench/digest_bench.py --json

Figures are printed, never judged. Commits are compared by the CPU time of the thread
that commits (the machine is a shared 2-core VM: other processes inflate wall time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import orjson

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import benchlib  # noqa: E402 - bench/ is on sys.path when a script runs
from benchlib import small_doc  # noqa: E402
from vesper.document import lthash  # noqa: E402
from vesper.store.digest import DigestIndex  # noqa: E402
from vesper.store.store import Store, open_store  # noqa: E402
from vesper.trust.canonical import canonical  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    rounds: int
    """Pairs of rounds of commits, one with the digest and one without."""
    commits: int
    """Objects created then updated per round (two commits each)."""
    bulk: int
    """Objects of the bulk transaction."""
    status: int
    """Objects in the store whose status is read."""


FULL = Sizes(rounds=40, commits=100, bulk=20_000, status=100_000)
QUICK = Sizes(rounds=10, commits=50, bulk=2_000, status=10_000)


@contextmanager
def digest_off() -> Iterator[None]:
    """Commits without the digest's work: no canonical form, nothing collected, no
    bucket row written."""
    saved = DigestIndex.change, DigestIndex.stage
    DigestIndex.change = lambda self, *args: None  # type: ignore[method-assign]
    DigestIndex.stage = lambda self, conn, revision: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        DigestIndex.change, DigestIndex.stage = saved  # type: ignore[method-assign]


def per_call_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def bench_element(n: int) -> dict[str, float]:
    doc = {"id": "0190a1b2c3d4e5f60718293a4b5c6d7e", **small_doc(12345)}
    text = orjson.dumps(doc)
    data = canonical(doc)
    squeezed = hashlib.shake_128(data).digest(lthash.STATE_BYTES)
    value = int.from_bytes(squeezed, "little")
    total = lthash.LaneSum()
    return {
        "parse_stored_us": per_call_us(lambda: orjson.loads(text), n),
        "canonical_us": per_call_us(lambda: canonical(doc), n),
        "shake128_us": per_call_us(lambda: hashlib.shake_128(data).digest(2048), n),
        "from_bytes_us": per_call_us(lambda: int.from_bytes(squeezed, "little"), n),
        "lanesum_add_us": per_call_us(lambda: total.add(value), n),
        "swar_add_us": per_call_us(lambda: lthash.add(value, value), n),
        "bucket_us": per_call_us(lambda: hashlib.sha256(b"0190a1b2c3d4e5f6").digest()[0], n),
    }


def commit_round(store: Store, n: int, start: int) -> tuple[float, float]:
    """Wall and CPU (this thread) µs per commit of ``n`` creates and ``n`` updates."""
    t0, c0 = time.perf_counter(), time.thread_time()
    ids = [store.create(small_doc(start + i)).ids[0] for i in range(n)]
    for i, obj_id in enumerate(ids):
        store.update(obj_id, {"n": i + 1, "active": i % 2 == 0})
    per = 1e6 / (2 * n)
    return (time.perf_counter() - t0) * per, (time.thread_time() - c0) * per


def bench_commits(workdir: Path, sizes: Sizes) -> dict[str, float]:
    on: list[tuple[float, float]] = []
    off: list[tuple[float, float]] = []
    store = open_store(f"sqlite:///{workdir}/commits.db", "BENCH", outbox=True)
    try:
        for r in range(sizes.rounds):
            on.append(commit_round(store, sizes.commits, 2 * r * sizes.commits))
            with digest_off():
                off.append(commit_round(store, sizes.commits, (2 * r + 1) * sizes.commits))
    finally:
        store.close()
    # CPU time, in short alternating rounds, medians: other processes on a shared
    # machine inflate wall time, and come and go.
    cpu_on, cpu_off = median(c for _, c in on), median(c for _, c in off)
    added = median(a[1] - b[1] for a, b in zip(on, off, strict=True))
    return {
        "with_digest_us": median(w for w, _ in on),
        "without_us": median(w for w, _ in off),
        "cpu_with_digest_us": cpu_on,
        "cpu_without_us": cpu_off,
        "added_cpu_us": added,
        "added_pct": added / cpu_off * 100,
    }


def bench_bulk(workdir: Path, sizes: Sizes) -> dict[str, float]:
    out = {}
    for name, mode in (("with_digest", nullcontext), ("without", digest_off)):
        store = open_store(f"sqlite:///{workdir}/bulk-{name}.db", "BENCH", outbox=True)
        docs = [{"id": f"obj-{i:08d}", **small_doc(i)} for i in range(sizes.bulk)]
        try:
            with mode():
                t0 = time.perf_counter()
                store.create(docs)
                out[f"{name}_us_per_object"] = (time.perf_counter() - t0) / sizes.bulk * 1e6
        finally:
            store.close()
    out["added_us_per_object"] = out["with_digest_us_per_object"] - out["without_us_per_object"]
    return out


def scan_digest(store: Store) -> str:
    """The digest as the status computed it before it was kept: every object, sorted
    by id, as sorted-key JSON, hashed in one pass (O(objects) per revision)."""
    h = hashlib.sha256(b"[")
    first = True
    after = ""
    with store.db.snapshot() as reader:
        while True:
            rows = reader.fetch(
                "SELECT id, doc FROM objects WHERE live = 1 AND id > ? ORDER BY id LIMIT 1000",
                (after,),
            )
            for _id, doc in rows:
                if not first:
                    h.update(b",")
                first = False
                text = json.dumps(
                    orjson.loads(doc), sort_keys=True, separators=(",", ":"), ensure_ascii=False
                )
                h.update(text.encode("utf-8"))
            if len(rows) < 1000:
                break
            after = rows[-1][0]
    h.update(b"]")
    return h.hexdigest()


def bench_status_and_open(workdir: Path, sizes: Sizes) -> dict[str, float]:
    path = workdir / "status.db"
    url = f"sqlite:///{path}"
    store = open_store(url, "BENCH", outbox=True)
    chunk = 20_000
    try:
        for start in range(0, sizes.status, chunk):
            stop = min(sizes.status, start + chunk)
            store.create([{"id": f"obj-{i:08d}", **small_doc(i)} for i in range(start, stop)])
        reads = []
        for i in range(20):
            store.update(f"obj-{i:08d}", {"n": -i})
            t0 = time.perf_counter()
            store.revision_and_digest()
            store.digest_buckets()
            reads.append(time.perf_counter() - t0)
        first_read = []
        for i in range(20):
            store.update(f"obj-{i:08d}", {"n": i})
            t0 = time.perf_counter()
            store.revision_and_digest()
            first_read.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scan_digest(store)
        scan_s = time.perf_counter() - t0
        expected = store.digest_buckets()
    finally:
        store.close()
    conn = sqlite3.connect(path)  # as a store written before the digest was kept
    conn.execute("DROP TABLE digest_buckets")
    conn.commit()
    conn.close()
    t0 = time.perf_counter()
    store = open_store(url, "BENCH", outbox=True)
    open_s = time.perf_counter() - t0
    try:
        assert store.digest_buckets() == expected
    finally:
        store.close()
    t0 = time.perf_counter()
    open_store(url, "BENCH", outbox=True).close()
    reopen_s = time.perf_counter() - t0
    return {
        "objects": sizes.status,
        "digest_after_write_us": min(first_read) * 1e6,
        "digest_and_buckets_after_write_us": min(reads) * 1e6,
        "previous_scan_ms": scan_s * 1e3,
        "open_computing_s": open_s,
        "open_reading_s": reopen_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="vesper-digest-bench-") as tmp:
        workdir = Path(tmp)
        results = {
            "machine": benchlib.machine(),
            "element": bench_element(2_000 if args.quick else 20_000),
            "commits": bench_commits(workdir, sizes),
            "bulk": bench_bulk(workdir, sizes),
            "status": bench_status_and_open(workdir, sizes),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    m = results["machine"]
    print(f"machine: nproc={m['nproc']} cpu={m['cpu']} python={m['python']} sqlite={m['sqlite']}")
    e, c, b, s = results["element"], results["commits"], results["bulk"], results["status"]
    print("element   per object (µs): " + ", ".join(f"{k[:-3]} {v:.2f}" for k, v in e.items()))
    print(
        f"commits   {c['cpu_with_digest_us']:.0f} µs CPU per commit with the digest, "
        f"{c['cpu_without_us']:.0f} without: +{c['added_cpu_us']:.1f} µs "
        f"({c['added_pct']:.0f}%); wall {c['with_digest_us']:.0f} and {c['without_us']:.0f} µs"
    )
    print(
        f"bulk      {b['with_digest_us_per_object']:.1f} µs per object with the digest, "
        f"{b['without_us_per_object']:.1f} without: +{b['added_us_per_object']:.1f} µs"
    )
    print(
        f"status    {s['objects']:,} objects: revision and digest after a write "
        f"{s['digest_after_write_us']:.1f} µs, with the 256 buckets "
        f"{s['digest_and_buckets_after_write_us']:.0f} µs; the previous full scan "
        f"{s['previous_scan_ms']:.0f} ms"
    )
    print(
        f"open      {s['objects']:,} objects: {s['open_computing_s']:.2f} s computing the digest "
        f"(once, for a store that did not keep it), {s['open_reading_s']:.2f} s reading it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
