#!/usr/bin/env python3
"""Core throughput and memory benchmarks of the Vesper store.

Every figure is measured on a fresh SQLite file store (``sqlite:////abs/path``) in a
temporary directory, opened with ``save_history=True`` and ``outbox=True``:

commits   single-object commits with history: ``create`` then ``update`` in a loop
bulk      one transaction (``store.create(list_of_docs)``) creating many objects
apply     remote single-object changesets applied with ``apply_many`` in batches of 500
scan      peak RSS and time of a full ``query_json()`` scan of a large store, measured in
          a fresh child process so that building the store does not count

Usage::

    .venv/bin/python bench/core_bench.py            # full sizes (about 2 minutes)
    .venv/bin/python bench/core_bench.py --quick    # 10x smaller, well under 30 s
    .venv/bin/python bench/core_bench.py --only apply --profile
    .venv/bin/python bench/core_bench.py --json

The exit status is 0 unless ``--strict`` is given and a target is missed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import benchlib  # noqa: E402 - bench/ is on sys.path when a script runs
from benchlib import small_doc  # noqa: E402
from vesper.store.store import Store, open_store  # noqa: E402

APPLY_BATCH = 500


@dataclass(frozen=True)
class Sizes:
    commits: int
    """Single-object commits (half creates, half updates)."""
    bulk: int
    """Objects created by the one bulk transaction."""
    apply: int
    """Remote changesets applied."""
    scan: int
    """Objects in the scanned store."""
    scan_txn: int
    """Objects per transaction while building the scanned store."""


FULL = Sizes(commits=20_000, bulk=100_000, apply=100_000, scan=1_000_000, scan_txn=50_000)
QUICK = Sizes(commits=2_000, bulk=10_000, apply=10_000, scan=100_000, scan_txn=5_000)


@dataclass
class Figure:
    name: str
    """Benchmark name (what ``--only`` selects)."""
    metric: str
    value: float
    unit: str
    target: float | None = None
    """The figure must be >= target (or <= target when ``lower_is_better``)."""
    lower_is_better: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        ok = self.value <= self.target if self.lower_is_better else self.value >= self.target
        return "PASS" if ok else "MISS"


# -- helpers ---------------------------------------------------------------------------


def file_store(workdir: Path, name: str, branch: str = "BENCH") -> tuple[Store, str]:
    path = workdir / f"{name}.db"
    url = f"sqlite:///{path.resolve()}"
    return open_store(url, branch, save_history=True, outbox=True), url


@contextmanager
def maybe_profile(enabled: bool, label: str, top: int = 25) -> Iterator[None]:
    if not enabled:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(f"\n--- profile: {label} (sorted by tottime) ---", file=sys.stderr)
        print(out.getvalue(), file=sys.stderr)


def rss_kib() -> int:
    """Current resident set size of this process (VmRSS), KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- benchmarks ------------------------------------------------------------------------


def bench_commits(workdir: Path, sizes: Sizes, profile: bool) -> list[Figure]:
    store, _url = file_store(workdir, "commits")
    n = sizes.commits // 2
    try:
        with maybe_profile(profile, "commits"):
            ids: list[str] = []
            t0 = time.perf_counter()
            for i in range(n):
                ids.append(store.create(small_doc(i)).ids[0])
            t1 = time.perf_counter()
            for i, obj_id in enumerate(ids):
                store.update(obj_id, {"n": i + 1, "active": i % 2 == 0})
            t2 = time.perf_counter()
        assert store.count == n
        outbox = store.outbox_count
    finally:
        store.close()
    total = t2 - t0
    return [
        Figure(
            "commits",
            "single-object commits (create+update)",
            2 * n / total,
            "commits/s",
            5_000,
            detail={
                "commits": 2 * n,
                "seconds": round(total, 3),
                "create_per_s": round(n / (t1 - t0)),
                "update_per_s": round(n / (t2 - t1)),
                "outbox_rows": outbox,
            },
        ),
        Figure("commits", "  of which create", n / (t1 - t0), "commits/s"),
        Figure("commits", "  of which update", n / (t2 - t1), "commits/s"),
    ]


def bench_bulk(workdir: Path, sizes: Sizes, profile: bool) -> list[Figure]:
    store, _url = file_store(workdir, "bulk")
    docs = [{"id": f"obj-{i:08d}", **small_doc(i)} for i in range(sizes.bulk)]
    try:
        with maybe_profile(profile, "bulk"):
            t0 = time.perf_counter()
            result = store.create(docs)
            elapsed = time.perf_counter() - t0
        assert store.count == sizes.bulk and len(result.ids) == sizes.bulk
    finally:
        store.close()
    return [
        Figure(
            "bulk",
            f"one transaction creating {sizes.bulk:,} objects",
            sizes.bulk / elapsed,
            "objects/s",
            50_000,
            detail={"objects": sizes.bulk, "seconds": round(elapsed, 3)},
        )
    ]


def make_remote_changesets(n: int) -> tuple[list[dict[str, Any]], float]:
    """``n`` single-object changesets committed on an in-memory source store ``SRC``:
    60% creates, 40% updates of earlier objects (so the target loads stored state)."""
    rng = random.Random(7)
    source = open_store("mem://", "SRC", save_history=True)
    t0 = time.perf_counter()
    try:
        ids: list[str] = []
        for i in range(n):
            if ids and rng.random() < 0.4:
                source.update(rng.choice(ids), {"n": i, "seen": i % 5 == 0})
            else:
                ids.append(source.create(small_doc(i)).ids[0])
        batch = list(source.changesets())
    finally:
        source.close()
    assert len(batch) == n
    return batch, time.perf_counter() - t0


def bench_apply(workdir: Path, sizes: Sizes, profile: bool) -> list[Figure]:
    changesets, gen_seconds = make_remote_changesets(sizes.apply)
    store, _url = file_store(workdir, "apply", branch="DEST")
    try:
        with maybe_profile(profile, "apply"):
            applied = 0
            t0 = time.perf_counter()
            for start in range(0, len(changesets), APPLY_BATCH):
                result = store.apply_many(changesets[start : start + APPLY_BATCH])
                applied += len(result.applied)
            elapsed = time.perf_counter() - t0
        assert applied == sizes.apply, (applied, sizes.apply)
        assert store.pending_count == 0
        assert store.version_vector == {"SRC": sizes.apply}
    finally:
        store.close()
    return [
        Figure(
            "apply",
            f"remote changesets, apply_many x{APPLY_BATCH}",
            sizes.apply / elapsed,
            "changesets/s",
            20_000,
            detail={
                "changesets": sizes.apply,
                "seconds": round(elapsed, 3),
                "generate_seconds": round(gen_seconds, 3),
            },
        )
    ]


SCAN_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from vesper.store.store import open_store

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0

base_hwm = status("VmHWM")
store = open_store(sys.argv[1], "BENCH", save_history=True, outbox=True)
opened_rss = status("VmRSS")
rows = 0
size = 0
t0 = time.perf_counter()
for text in store.query_json():
    rows += 1
    size += len(text)
elapsed = time.perf_counter() - t0
count = store.count
store.close()
print(json.dumps({
    "rows": rows,
    "count": count,
    "bytes": size,
    "seconds": elapsed,
    "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "vmhwm_kib": status("VmHWM"),
    "import_hwm_kib": base_hwm,
    "opened_rss_kib": opened_rss,
}))
"""


def bench_scan(workdir: Path, sizes: Sizes, profile: bool) -> list[Figure]:
    store, url = file_store(workdir, "scan")
    t0 = time.perf_counter()
    try:
        for start in range(0, sizes.scan, sizes.scan_txn):
            stop = min(start + sizes.scan_txn, sizes.scan)
            store.create([{"id": f"obj-{i:08d}", **small_doc(i)} for i in range(start, stop)])
        assert store.count == sizes.scan
    finally:
        store.close()
    build_seconds = time.perf_counter() - t0
    db_bytes = sum(p.stat().st_size for p in workdir.glob("scan.db*"))
    cmd = [sys.executable, "-c", SCAN_CHILD, url, str(SRC)]
    if profile:
        prof_file = workdir / "scan.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof_file), *cmd[1:]]
    parent_rss = rss_kib()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scan child failed ({proc.returncode}):\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if profile:
        text = io.StringIO()
        pstats.Stats(str(prof_file), stream=text).sort_stats("tottime").print_stats(20)
        print(f"\n--- profile: scan child (by tottime) ---\n{text.getvalue()}", file=sys.stderr)
    assert out["rows"] == sizes.scan == out["count"], out
    # VmHWM is the child's own peak. ru_maxrss is not usable here: Linux carries the
    # spawning process's peak RSS (this script, after the build) over the exec into
    # the child's rusage, so it reports at least the parent's size.
    peak_mib = out["vmhwm_kib"] / 1024
    return [
        Figure(
            "scan",
            f"peak RSS (VmHWM), query_json() of {sizes.scan:,}",
            peak_mib,
            "MiB",
            200,
            lower_is_better=True,
            detail={
                "vmhwm_kib": out["vmhwm_kib"],
                "ru_maxrss_kib": out["maxrss_kib"],
                "parent_rss_at_spawn_kib": parent_rss,
                "after_import_hwm_kib": out["import_hwm_kib"],
                "after_open_rss_kib": out["opened_rss_kib"],
                "db_bytes": db_bytes,
                "build_seconds": round(build_seconds, 3),
            },
        ),
        Figure(
            "scan",
            "  full scan time",
            out["seconds"],
            "s",
            detail={"rows_per_s": round(out["rows"] / out["seconds"]), "json_bytes": out["bytes"]},
        ),
        Figure("scan", "  scan rate", out["rows"] / out["seconds"], "rows/s"),
        Figure(
            "scan",
            f"  build rate (txns of {sizes.scan_txn:,})",
            sizes.scan / build_seconds,
            "objects/s",
        ),
    ]


BENCHES: dict[str, Callable[[Path, Sizes, bool], list[Figure]]] = {
    "commits": bench_commits,
    "bulk": bench_bulk,
    "apply": bench_apply,
    "scan": bench_scan,
}


# -- report ----------------------------------------------------------------------------


machine = benchlib.machine


def format_value(value: float, unit: str) -> str:
    if unit in ("MiB", "s"):
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def print_table(info: dict[str, Any], figures: list[Figure], quick: bool) -> None:
    print(
        f"machine: nproc={info['nproc']} cpu={info['cpu'] or '?'} python={info['python']} "
        f"sqlite={info['sqlite']} ({info['platform']})"
    )
    print(f"sizes: {'quick (10x smaller)' if quick else 'full'}")
    header = f"{'benchmark':<8}  {'figure':<42} {'value':>12} {'unit':<12} {'target':>12}  result"
    print(header)
    print("-" * len(header))
    for fig in figures:
        target = ""
        if fig.target is not None:
            target = ("<= " if fig.lower_is_better else ">= ") + format_value(fig.target, fig.unit)
        print(
            f"{fig.name:<8}  {fig.metric:<42} {format_value(fig.value, fig.unit):>12} "
            f"{fig.unit:<12} {target:>12}  {fig.verdict}"
        )
    for fig in figures:
        if fig.detail:
            print(f"  {fig.name}: {json.dumps(fig.detail)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller sizes (smoke test)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHES),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHES)}",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--profile", action="store_true", help="cProfile each timed part (stderr)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument("--dir", help="directory for the temporary stores (default: system temp)")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    names = args.only or list(BENCHES)
    figures: list[Figure] = []
    started = time.perf_counter()
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"vesper-bench-{name}-", dir=args.dir) as tmp:
            figures.extend(BENCHES[name](Path(tmp), sizes, args.profile))
    info = machine()
    info["total_seconds"] = round(time.perf_counter() - started, 2)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "quick": args.quick,
                    "sizes": asdict(sizes),
                    "figures": [{**asdict(f), "verdict": f.verdict} for f in figures],
                },
                indent=2,
            )
        )
    else:
        print_table(info, figures, args.quick)
        print(f"total: {info['total_seconds']} s")
    missed = [f for f in figures if f.verdict == "MISS"]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
