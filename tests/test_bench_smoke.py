"""The benchmark scripts still run (their figures are printed, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_core_bench_quick_runs() -> None:
    out = run("core_bench.py", "--quick", "--only", "commits", "--only", "apply")
    assert "single-object commits" in out and "remote changesets" in out


def test_replication_bench_quick_runs_on_the_embedded_broker() -> None:
    out = run(
        "replication_bench.py",
        "--quick",
        "--brokers",
        "embedded",
        "--only",
        "raw",
        "--only",
        "throughput",
    )
    assert "embedded" in out and "changesets/s" in out


def test_trust_bench_quick_runs() -> None:
    out = run("trust_bench.py", "--quick")
    assert "commits/s" in out and "changesets/s" in out and "writes/s" in out


def test_access_bench_quick_runs() -> None:
    out = run("access_bench.py", "--quick")
    assert "writes/s" in out and "docs/s" in out and "idle connections the node closed" in out


def test_tree_bench_quick_runs_on_the_embedded_broker() -> None:
    out = run("tree_bench.py", "--quick")
    assert "at every other node" in out and "embedded" in out
