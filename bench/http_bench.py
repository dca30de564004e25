#!/usr/bin/env python3
"""HTTP throughput and latency of one Vesper node, beside its targets.

Starts ``vesper serve`` as a subprocess on a fresh SQLite file store
(``save_history = True``, as replication needs) on a free port, then drives it with
``--connections`` keep-alive HTTP/1.1 connections from this process:

writes   ``POST /api/objects`` of one small object each (target >= 1,500/s)
reads    ``GET /api/objects/{id}`` of random written objects (target >= 3,000/s)

The client is raw asyncio streams on uvloop with pre-built requests: on a 2-core
machine client and server share the CPU, so the cheapest client measures the most
server. ``--mode`` picks where the node runs single-object store calls: ``inline`` on
the event loop (the default of ``vesper serve``) or ``thread`` in a worker thread;
``both`` measures the two one after the other. Besides rate and latency it reports the
server's CPU time per request, which other load on the machine hardly moves: the
figure to compare the modes by on a shared machine.

Usage::

    .venv/bin/python bench/http_bench.py                 # 16 connections, 5 s per phase
    .venv/bin/python bench/http_bench.py --mode both --seconds 3
    .venv/bin/python bench/http_bench.py --json --strict # exit 1 when a target is missed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

TARGETS_PER_S = {"writes": 1500.0, "reads": 3000.0}
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
WARMUP_S = 0.5
URL_RE = re.compile(r'serving (http://[^\s"]+)')


@dataclass
class Result:
    phase: str
    mode: str
    requests: int
    errors: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float
    target_per_s: float
    server_cpu_us: float
    """Server CPU time (user + system, all threads) per request: unlike the rate, it
    hardly moves when other processes load the machine."""

    @property
    def passed(self) -> bool:
        return self.errors == 0 and self.per_s >= self.target_per_s


# -- the node ---------------------------------------------------------------------------


def start_node(work: Path, mode: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    config = work / "node.conf"
    config.write_text(f"branch_id = 'bench'\nsave_history = True\nwork_dir = {str(work)!r}\n")
    log_path = work / f"node-{mode}.log"
    if mode == "inline":
        command = [sys.executable, "-m", "vesper", "serve", str(config), "--port=0"]
    else:
        command = [sys.executable, __file__, "--serve-threaded", str(config)]
    log_file = log_path.open("wb")
    proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        match = URL_RE.search(log_path.read_text(errors="replace"))
        if match:
            return proc, match.group(1), log_path
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise SystemExit(f"node did not start:\n{log_path.read_text(errors='replace')}")


def stop_node(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SystemExit("node did not stop within 30 s of SIGTERM") from None
    if status != 0:
        raise SystemExit(f"node exited with {status}:\n{log_path.read_text(errors='replace')}")


def serve_threaded(config: str) -> int:
    """The node of ``--mode thread``: store calls in worker threads."""
    from functools import partial

    from vesper.api import create_app
    from vesper.cli.serve import configure_logging, serve
    from vesper.config import load_settings

    settings = load_settings(config, ["--port=0"])
    configure_logging(settings.log_level)
    return serve(settings, partial(create_app, inline_writes=False, inline_reads=False))


# -- the client -------------------------------------------------------------------------


def post_request(body: bytes) -> bytes:
    return (
        b"POST /api/objects HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def get_request(obj_id: str) -> bytes:
    return b"GET /api/objects/%s HTTP/1.1\r\nHost: bench\r\n\r\n" % obj_id.encode()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    start = head.find(b"content-length:")
    if start < 0:
        start = head.lower().find(b"content-length:")
    if start >= 0:
        length = int(head[start + 15 : head.index(b"\r\n", start)])
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


async def drive(
    host: str, port: int, connections: int, seconds: float, make_request: object
) -> tuple[list[float], int, float]:
    """Each connection sends requests back to back until the time is up."""
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter

    async def one(conn: int, warmup_until: float, stop_at: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        i = 0
        try:
            while True:
                now = clock()
                if now >= stop_at:
                    return
                request = make_request(conn, i)  # type: ignore[operator]
                i += 1
                status = await exchange(reader, writer, request)
                if now >= warmup_until:
                    latencies.append(clock() - now)
                    if status >= 300:
                        errors += 1
        finally:
            writer.close()

    begin = clock()
    warmup_until = begin + WARMUP_S
    stop_at = warmup_until + seconds
    await asyncio.gather(*(one(c, warmup_until, stop_at) for c in range(connections)))
    return latencies, errors, clock() - warmup_until


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(
    phase: str, mode: str, latencies: list[float], errors: int, secs: float, cpu_s: float
) -> Result:
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, int(n * q))] * 1000 if n else float("nan")

    target = TARGETS_PER_S[phase]
    cpu_us = cpu_s / n * 1e6 if n else float("nan")
    return Result(phase, mode, n, errors, secs, n / secs, pct(0.50), pct(0.99), target, cpu_us)


async def bench_node(
    url: str, pid: int, mode: str, connections: int, seconds: float
) -> list[Result]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    written: list[str] = []
    payload = b'{"id":"%s","kind":"bench","n":%d,"tags":["a","b"],"text":"%s"}'
    filler = b"x" * 64

    def write(conn: int, i: int) -> bytes:
        obj_id = f"c{conn}-{i}"
        written.append(obj_id)
        return post_request(payload % (obj_id.encode(), i, filler))

    cpu = cpu_seconds(pid)
    lat, errors, secs = await drive(host, int(port), connections, seconds, write)
    # The CPU figure includes the warm-up requests too: scale it to the timed share.
    cpu = (cpu_seconds(pid) - cpu) * secs / (secs + WARMUP_S)
    results = [summarize("writes", mode, lat, errors, secs, cpu)]

    rng = random.Random(3)
    # Pre-built so the timed loop only picks one: the client must stay cheap.
    reads = [get_request(rng.choice(written)) for _ in range(4096)]

    def read(conn: int, i: int) -> bytes:
        return reads[(conn * 257 + i) % len(reads)]

    cpu = cpu_seconds(pid)
    lat, errors, secs = await drive(host, int(port), connections, seconds, read)
    cpu = (cpu_seconds(pid) - cpu) * secs / (secs + WARMUP_S)
    results.append(summarize("reads", mode, lat, errors, secs, cpu))
    return results


def run_mode(mode: str, connections: int, seconds: float) -> list[Result]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="vesper-http-bench-") as tmp:
        proc, url, log_path = start_node(Path(tmp), mode)
        try:
            return uvloop.run(bench_node(url, proc.pid, mode, connections, seconds))
        finally:
            stop_node(proc, log_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("inline", "thread", "both"), default="inline")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--serve-threaded", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_threaded:
        return serve_threaded(args.serve_threaded)

    modes = ("inline", "thread") if args.mode == "both" else (args.mode,)
    results = [r for mode in modes for r in run_mode(mode, args.connections, args.seconds)]
    if args.json:
        print(json.dumps([asdict(r) | {"passed": r.passed} for r in results], indent=2))
    else:
        print(
            f"{args.connections} connections, {args.seconds:g} s per phase, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
        )
        columns = ("req/s", "p50 ms", "p99 ms", "cpu us", "errors")
        print(
            f"{'phase':7} {'mode':7} {columns[0]:>8} "
            + " ".join(f"{c:>7}" for c in columns[1:-1])
            + f" {columns[-1]:>6}  target (cpu us: server CPU per request)"
        )
        for r in results:
            verdict = "PASS" if r.passed else "MISS"
            print(
                f"{r.phase:7} {r.mode:7} {r.per_s:8.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} "
                f"{r.server_cpu_us:7.0f} {r.errors:6d}  >= {r.target_per_s:,.0f}/s {verdict}"
            )
    return 1 if args.strict and not all(r.passed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
