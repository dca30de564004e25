#!/usr/bin/env python3
"""Vesper against PostgreSQL 15 logical replication: node A to node B over loopback.

The workload is W documents of 193 bytes of JSON each (an id plus name, email, age,
score and note). PostgreSQL: two throw-away clusters (initdb, ``wal_level = logical``,
everything else default), a publication on A and a subscription on B, the documents in
a ``jsonb`` column. Vesper: ``vesper serve`` nodes A and B replicating through a broker
(the embedded one, and ActiveMQ and RabbitMQ when installed), written to over the HTTP
API with keep-alive connections.

(a)   W single-document writes from one client (one INSERT per transaction / one
      ``POST /api/objects`` per document): docs/s from the first write until B has all
      (target: Vesper >= 1.0x PostgreSQL)
(a')  one bulk write of W (one transaction / one POST of a JSON array), until B has all:
      docs/s (target: Vesper >= 0.5x PostgreSQL)
(b)   500 writes/s, paced, from 4 writer processes with a connection each: per write,
      from A's answer (2xx, or the COMMIT returning) until the document is visible on
      B: p50 and p99 (target: <= 1 ms and <= 3 ms)
(c)   B stopped while A takes W single writes, then started again: from B ready (its
      first 200 on ``/health``; for PostgreSQL, B accepting connections) until B has
      all, and as changesets/s (target: <= 0.4 s)

Visibility on B comes from B's own clock. PostgreSQL: a ``BEFORE INSERT`` trigger on
the subscriber's table, enabled ALWAYS (apply workers run with
``session_replication_role = replica``), stamps ``clock_timestamp()`` into a column.
Vesper: B runs through ``bench/_timed_node.py``, which records ``time.time_ns()`` right
after each apply transaction returns in the store. Writers stamp ``time.time_ns()`` when
a write is answered. All on one machine, so the wall clocks agree.

Each system keeps its default durability: PostgreSQL fsyncs every commit on A; a Vesper
node's SQLite store runs ``synchronous = NORMAL`` in WAL mode (no fsync per commit);
the embedded broker keeps persistent messages in SQLite (``--data-dir``,
``synchronous = FULL``) as ActiveMQ and RabbitMQ store theirs.

Runs of each system are interleaved (PostgreSQL, Vesper, PostgreSQL, Vesper, ...) and the
median of ``--runs`` is reported; every run's figures go to stderr.

Usage::

    .venv/bin/python bench/peers.py                          # every system installed
    .venv/bin/python bench/peers.py --quick                  # 10x smaller (smoke test)
    .venv/bin/python bench/peers.py --systems postgres,embedded --runs 3
    .venv/bin/python bench/peers.py --json                   # one JSON object on stdout

Needs psycopg 3 (``pip install -e '.[bench]'``); PostgreSQL 15 is installed with
apt-get when missing and this runs as root, else skipped with a message. The exit
status is 0 unless ``--strict`` is given and a target is missed or a system fails.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import orjson  # noqa: E402

import _postgres  # noqa: E402 - bench/ is on sys.path when a script runs
import benchlib  # noqa: E402
from _nodes import (  # noqa: E402
    BenchError,
    Client,
    HttpNode,
    cpu_seconds,
    launch_node,
    log,
    stop_node,
    wait_serving,
)
from _timed_node import APPLY_LOG  # noqa: E402
from vesper.storage.url import StorageLocation  # noqa: E402

SYSTEMS = ("postgres", "embedded", "activemq", "rabbitmq")
VESPER_BROKERS = SYSTEMS[1:]
SCRIPTS = ROOT / "scripts" / "brokers"
TIMED_NODE = Path(__file__).resolve().parent / "_timed_node.py"
DOC_BYTES = 193
LAG_RATE = 500
WRITERS = 4
WARMUP = 20
"""Writes B must have before a clock starts: both ends connected and subscribed, the
path warm (for PostgreSQL, the statement prepared and the apply worker running)."""
DEADLINE_S = 300.0
PG_POLL_S = 0.01
"""How often B is asked for the last document: a primary-key lookup, cheap beside the
apply worker. Completion only; the times come from B's stamps."""
LOG_POLL_S = 0.05
HEALTH_POLL_S = 0.001
INSERT = "INSERT INTO docs (id, doc) VALUES (%s, %s::jsonb)"


@dataclass(frozen=True)
class Sizes:
    docs: int
    """W: documents of (a), (a') and (c)."""
    lag_writes: int
    """Writes of (b), at ``LAG_RATE``/s."""


FULL = Sizes(docs=20_000, lag_writes=10_000)
QUICK = Sizes(docs=2_000, lag_writes=1_000)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    """``{n}`` is replaced by the size."""
    unit: str
    lower_is_better: bool = False
    relative: float | None = None
    """Target: Vesper at least this many times PostgreSQL."""
    absolute: float | None = None
    """Target: Vesper's figure at most (or at least) this."""

    def target_text(self) -> str:
        if self.relative is not None:
            return f">= {self.relative:g}x PG"
        if self.absolute is not None:
            return f"{'<=' if self.lower_is_better else '>='} {self.absolute:g} {self.unit}"
        return ""

    def verdict(self, vesper: float | None, pg: float | None) -> str:
        if vesper is None or math.isnan(vesper):
            return ""
        if self.relative is not None:
            if pg is None or math.isnan(pg) or pg == 0:
                return "n/a"
            return "PASS" if vesper / pg >= self.relative else "MISS"
        if self.absolute is not None:
            ok = vesper <= self.absolute if self.lower_is_better else vesper >= self.absolute
            return "PASS" if ok else "MISS"
        return ""


METRICS = (
    Metric("a", "(a)  {n} single writes -> B has all", "docs/s", relative=1.0),
    Metric("bulk", "(a') one bulk write of {n} -> B has all", "docs/s", relative=0.5),
    Metric("lag_p50", "(b)  lag A answered -> on B, p50 (500/s)", "ms", True, absolute=1.0),
    Metric("lag_p99", "(b)  lag A answered -> on B, p99 (500/s)", "ms", True, absolute=3.0),
    Metric("catchup", "(c)  B back {n} behind: ready -> has all", "s", True, absolute=0.4),
    Metric("catchup_rate", "(c)    as changesets/s", "changesets/s"),
    Metric("catchup_launch", "(c)    B launched -> has all", "s", True),
    Metric("restart", "     B restarted, nothing behind: launched -> ready", "s", True),
)
"""(c) is signed: below 0, B had everything before it was ready (Vesper starts
replication before its HTTP server). Its rate counts from whichever came first, B ready
or B's first apply, so that it is the rate of the catch-up itself."""


@dataclass
class RunResult:
    values: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


# -- workload ---------------------------------------------------------------------------


def doc_id(tag: str, i: int) -> str:
    return f"{tag}-{i:06d}"


def document(tag: str, i: int) -> bytes:
    """Exactly ``DOC_BYTES`` of JSON: the note pads what the other fields leave."""
    doc: dict[str, Any] = {
        "id": doc_id(tag, i),
        "name": f"Person {i:06d}",
        "email": f"person{i:06d}@example.com",
        "age": 18 + i % 60,
        "score": round((i * 7919) % 10_000 / 100, 2),
        "note": "",
    }
    room = DOC_BYTES - len(orjson.dumps(doc))
    doc["note"] = ("replicated between peers " * 8)[: max(0, room)]
    return orjson.dumps(doc)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def lag_stats(answered: dict[str, int], visible: dict[str, int]) -> dict[str, float]:
    lags = sorted((visible[k] - t) / 1e6 for k, t in answered.items())
    return {
        "p50_ms": percentile(lags, 50),
        "p90_ms": percentile(lags, 90),
        "p99_ms": percentile(lags, 99),
        "p999_ms": percentile(lags, 99.9),
        "max_ms": lags[-1],
        "min_ms": lags[0],
    }


def catchup_figures(
    out: RunResult, n: int, t_launch: int, t_ready: int, stamps: dict[str, int]
) -> dict[str, float]:
    """(c)'s three figures into ``out``; returns the detail they share."""
    first, done = min(stamps.values()), max(stamps.values())
    out.values["catchup"] = (done - t_ready) / 1e9
    out.values["catchup_rate"] = n / max(1e-9, (done - min(t_ready, first)) / 1e9)
    out.values["catchup_launch"] = (done - t_launch) / 1e9
    return {
        "launch_to_ready_s": (t_ready - t_launch) / 1e9,
        "ready_to_first_applied_ms": (first - t_ready) / 1e6,
        "first_to_last_applied_s": (done - first) / 1e9,
    }


def rounded(detail: dict[str, Any], digits: int = 3) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in detail.items()}


# -- paced writers (b) -------------------------------------------------------------------


def writer_main(
    pipe: Any, kind: str, target: Any, index: int, tag: str, count: int, rate: float
) -> None:
    """One of ``WRITERS`` processes of (b): writes ``i = index, index + WRITERS, ...``,
    write ``i`` due at ``t0 + i / rate``; sends back when each was answered."""
    try:
        mine = list(range(index, count, WRITERS))
        if kind == "postgres":
            import psycopg

            conn = psycopg.connect(**target, autocommit=True)
            cur = conn.cursor()
            rows = [(doc_id(tag, i), document(tag, i).decode()) for i in mine]

            def write(k: int) -> None:
                cur.execute(INSERT, rows[k])

        else:
            client = Client(*target)
            requests = [client.build("POST", "/api/objects", document(tag, i)) for i in mine]

            def write(k: int) -> None:
                status, body = client.request(requests[k])
                if status != 201:
                    raise BenchError(f"POST answered {status}: {body[:200]!r}")

        pipe.send("ready")
        t0_ns = pipe.recv()
        base = time.monotonic() + (t0_ns - time.time_ns()) / 1e9
        answered: list[int] = []
        slip = 0.0
        for k, i in enumerate(mine):
            delay = base + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                slip = max(slip, -delay)
            write(k)
            answered.append(time.time_ns())
        pipe.send(("ok", [doc_id(tag, i) for i in mine], answered, slip))
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))


def paced_writes(kind: str, target: Any, tag: str, count: int) -> tuple[dict[str, int], float]:
    """(b)'s writes from ``WRITERS`` processes (no GIL shared with one another or with
    this process); returns each document's answer time and the worst schedule slip."""
    ctx = multiprocessing.get_context("spawn")
    procs, pipes = [], []
    try:
        for w in range(WRITERS):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=writer_main,
                args=(child, kind, target, w, tag, count, LAG_RATE),
                daemon=True,
            )
            proc.start()
            procs.append(proc)
            pipes.append(parent)
        for pipe in pipes:
            if not pipe.poll(60):
                raise BenchError("a writer process did not start")
            message = pipe.recv()
            if message != "ready":
                raise BenchError(f"writer: {message[1]}")
        t0 = time.time_ns() + 200_000_000
        for pipe in pipes:
            pipe.send(t0)
        answered: dict[str, int] = {}
        slip = 0.0
        for pipe in pipes:
            if not pipe.poll(count / LAG_RATE + 120):
                raise BenchError("a writer process did not finish")
            message = pipe.recv()
            if message[0] != "ok":
                raise BenchError(f"writer: {message[1]}")
            answered.update(zip(message[1], message[2], strict=True))
            slip = max(slip, message[3])
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return answered, slip


# -- PostgreSQL --------------------------------------------------------------------------

PG_SCHEMA_A = """
CREATE TABLE docs (id text PRIMARY KEY, doc jsonb NOT NULL);
CREATE PUBLICATION peers FOR TABLE docs;
"""
PG_SCHEMA_B = """
CREATE TABLE docs (id text PRIMARY KEY, doc jsonb NOT NULL, applied_at timestamptz);
CREATE FUNCTION stamp_applied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.applied_at := clock_timestamp();
    RETURN NEW;
END $$;
CREATE TRIGGER stamp_applied BEFORE INSERT OR UPDATE ON docs
    FOR EACH ROW EXECUTE FUNCTION stamp_applied();
-- The apply worker runs with session_replication_role = replica: only ALWAYS fires.
ALTER TABLE docs ENABLE ALWAYS TRIGGER stamp_applied;
"""


class PostgresSystem:
    name = "postgres"
    label = "PostgreSQL 15 logical"

    def __init__(self, work: Path, bin_dir: Path) -> None:
        self.work = work
        self.bin_dir = bin_dir
        self.a: _postgres.Cluster | None = None
        self.b: _postgres.Cluster | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        port_a, port_b = free_port(1), free_port(1)
        self.a = _postgres.Cluster(self.bin_dir, self.work / "pg-a", port_a)
        self.b = _postgres.Cluster(self.bin_dir, self.work / "pg-b", port_b)
        self.a.start()
        self.b.start()
        with self.a.connect() as conn:
            conn.execute(PG_SCHEMA_A)
        with self.b.connect() as conn:
            conn.execute(PG_SCHEMA_B)
            conn.execute(
                f"CREATE SUBSCRIPTION peers CONNECTION '{self.a.conninfo}' PUBLICATION peers"
            )
            deadline = time.monotonic() + 60
            while not conn.execute(
                "SELECT coalesce(bool_and(srsubstate = 'r'), false) FROM pg_subscription_rel"
            ).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise BenchError("the subscription's table sync did not finish")
                time.sleep(0.05)
        self.info = {
            "server_version": self.a.version(),
            "fsync": self.a.setting("fsync"),
            "synchronous_commit": self.a.setting("synchronous_commit"),
            "wal_level": self.a.setting("wal_level"),
            "subscription_synchronous_commit": self._subscription_sync(),
        }
        log(f"postgres: A on port {port_a}, B on port {port_b}, {self.info}")

    def _subscription_sync(self) -> str:
        with self.cluster_b.connect() as conn:
            return str(conn.execute("SELECT subsynccommit FROM pg_subscription").fetchone()[0])

    def stop(self) -> None:
        for cluster in (self.b, self.a):
            if cluster is not None:
                try:
                    cluster.stop()
                except BenchError as exc:
                    log(f"postgres: {exc}")

    @property
    def cluster_a(self) -> _postgres.Cluster:
        assert self.a is not None
        return self.a

    @property
    def cluster_b(self) -> _postgres.Cluster:
        assert self.b is not None
        return self.b

    # Each part starts from an empty table, on both sides, with a warm path.
    def _fresh(self, tag: str) -> None:
        with self.cluster_a.connect() as conn:
            conn.execute("TRUNCATE docs")
            cur = conn.cursor()
            for i in range(WARMUP):
                cur.execute(INSERT, (doc_id(f"{tag}w", i), document(f"{tag}w", i).decode()))
        self._wait_present(doc_id(f"{tag}w", WARMUP - 1), 60)

    def _wait_present(self, last_id: str, timeout: float) -> None:
        """Until B has ``last_id``: one writer's commits apply in commit order, so then
        B has every earlier one too (the count is checked afterwards)."""
        deadline = time.monotonic() + timeout
        with self.cluster_b.connect() as conn:
            cur = conn.cursor()
            while cur.execute("SELECT 1 FROM docs WHERE id = %s", (last_id,)).fetchone() is None:
                if time.monotonic() > deadline:
                    raise BenchError(f"PostgreSQL B did not get {last_id} within {timeout:g} s")
                time.sleep(PG_POLL_S)

    def _wait_count(self, tag: str, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cluster_b.connect() as conn:
            while self._count(conn, tag) < n:
                if time.monotonic() > deadline:
                    raise BenchError(f"PostgreSQL B did not get {n} rows within {timeout:g} s")
                time.sleep(0.05)

    @staticmethod
    def _count(conn: Any, tag: str) -> int:
        row = conn.execute("SELECT count(*) FROM docs WHERE id LIKE %s", (f"{tag}-%",)).fetchone()
        return int(row[0])

    def _stamps(self, tag: str, n: int) -> dict[str, int]:
        """B's ``applied_at`` of each row of ``tag``, in ns since the epoch."""
        with self.cluster_b.connect() as conn:
            rows = conn.execute(
                "SELECT id, (extract(epoch FROM applied_at) * 1000000)::bigint"
                " FROM docs WHERE id LIKE %s",
                (f"{tag}-%",),
            ).fetchall()
        if len(rows) != n:
            raise BenchError(f"PostgreSQL B has {len(rows)} rows of {tag}, expected {n}")
        return {row[0]: int(row[1]) * 1000 for row in rows}

    def _single_writes(self, tag: str, n: int) -> tuple[int, int]:
        rows = [(doc_id(tag, i), document(tag, i).decode()) for i in range(n)]
        with self.cluster_a.connect() as conn:
            cur = conn.cursor()
            t0 = time.time_ns()
            for row in rows:
                cur.execute(INSERT, row)
            return t0, time.time_ns()

    def run(self, run: int, sizes: Sizes) -> RunResult:
        out = RunResult()
        n = sizes.docs

        tag = f"p{run}a"
        self._fresh(tag)
        t0, t_written = self._single_writes(tag, n)
        self._wait_present(doc_id(tag, n - 1), DEADLINE_S)
        done = max(self._stamps(tag, n).values())
        out.values["a"] = n / ((done - t0) / 1e9)
        out.detail["a"] = rounded(
            {
                "a_writes_per_s": n / ((t_written - t0) / 1e9),
                "tail_ms": (done - t_written) / 1e6,
            }
        )

        tag = f"p{run}bulk"
        self._fresh(tag)
        rows = [(doc_id(tag, i), document(tag, i).decode()) for i in range(n)]
        with self.cluster_a.connect() as conn:
            t0 = time.time_ns()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(INSERT, rows)  # pipelined by psycopg, one transaction
            t_written = time.time_ns()
        self._wait_count(tag, n, DEADLINE_S)
        stamps = self._stamps(tag, n)
        done = max(stamps.values())
        out.values["bulk"] = n / ((done - t0) / 1e9)
        out.detail["bulk"] = rounded(
            {
                "a_commit_s": (t_written - t0) / 1e9,
                "b_first_row_after_commit_ms": (min(stamps.values()) - t_written) / 1e6,
                "b_last_row_after_commit_ms": (done - t_written) / 1e6,
            }
        )

        tag = f"p{run}lag"
        self._fresh(tag)
        answered, slip = paced_writes("postgres", self.cluster_a.params(), tag, sizes.lag_writes)
        self._wait_count(tag, sizes.lag_writes, 60)
        stats = lag_stats(answered, self._stamps(tag, sizes.lag_writes))
        out.values["lag_p50"], out.values["lag_p99"] = stats["p50_ms"], stats["p99_ms"]
        out.detail["lag"] = rounded({**stats, "max_schedule_slip_ms": slip * 1e3})

        tag = f"p{run}c"
        self._fresh(tag)
        self.cluster_b.stop()
        t0, t_written = self._single_writes(tag, n)
        t_launch = time.time_ns()
        self.cluster_b.launch()
        t_ready = self.cluster_b.wait_accepting(60, poll_s=HEALTH_POLL_S)
        self._wait_present(doc_id(tag, n - 1), DEADLINE_S)
        shared = catchup_figures(out, n, t_launch, t_ready, self._stamps(tag, n))
        out.detail["catchup"] = rounded({"a_writes_per_s": n / ((t_written - t0) / 1e9), **shared})

        self.cluster_b.stop()
        t_launch = time.time_ns()
        self.cluster_b.launch()
        t_ready = self.cluster_b.wait_accepting(60, poll_s=HEALTH_POLL_S)
        out.values["restart"] = (t_ready - t_launch) / 1e9
        return out


# -- Vesper ------------------------------------------------------------------------------


def free_port(count: int) -> int:
    """A port below the ephemeral range with ``count - 1`` free ones after it."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "free-port.py"), str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip())


class ApplyLog:
    """Reads what ``_timed_node.py`` appends: when B applied each object (first time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.stamps: dict[str, int] = {}
        self.changesets: dict[str, int] = {}
        self.meta: list[dict[str, Any]] = []

    def poll(self) -> list[str]:
        """New object ids since the last call."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        new: list[str] = []
        for line in data[:end].decode().splitlines():
            if line.startswith("#meta "):
                self.meta.append(json.loads(line[6:]))
                continue
            stamp_text, cs_id, objects = line.split(" ", 2)
            stamp = int(stamp_text)
            self.changesets.setdefault(cs_id, stamp)
            for obj in objects.split(",") if objects else ():
                if obj not in self.stamps:
                    self.stamps[obj] = stamp
                    new.append(obj)
        return new

    def wait(self, ids: Iterable[str], timeout: float) -> dict[str, int]:
        wanted = set(ids)
        missing = wanted - self.stamps.keys()
        deadline = time.monotonic() + timeout
        while missing:
            missing.difference_update(self.poll())
            if not missing:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"Vesper B lacks {len(missing)} documents after {timeout:g} s")
            time.sleep(LOG_POLL_S)
        return {k: self.stamps[k] for k in wanted}


@dataclass
class Pair:
    a: HttpNode
    b: HttpNode
    log: ApplyLog
    config_b: Path


class VesperSystem:
    def __init__(self, work: Path, broker: str) -> None:
        self.work = work
        self.broker = broker
        self.name = broker
        self.label = f"Vesper {broker}"
        self.tag = f"v{broker[0]}"
        """Prefix of this system's document ids and folders: unique per broker."""
        self.host = "127.0.0.1"
        self.port = 0
        self.broker_pid: int | None = None
        self._stop_broker: Callable[[], None] = lambda: None
        self.info: dict[str, Any] = {}
        self.b_meta: dict[str, Any] = {}

    def start(self) -> None:
        folder = self.work / f"broker-{self.broker}-{uuid.uuid4().hex[:8]}"
        if self.broker == "embedded":
            from vesper.broker.process import BrokerProcess

            # --data-dir: persistent messages are stored (SQLite, synchronous=FULL), as
            # ActiveMQ and RabbitMQ store theirs. `vesper broker` runs the same code.
            broker = BrokerProcess(
                folder,
                control=False,
                allow_anonymous=True,
                log_path=self.work / f"broker-{self.broker}.log",
            )
            self._stop_broker = broker.stop
            broker.start()
            self.host, self.port, self.broker_pid = broker.host, broker.port, broker.pid
            self.info = {"broker": "vesper embedded, --data-dir (persistent)"}
        else:
            # rabbitmq.sh binds PORT..PORT+3, activemq.sh PORT and PORT+1.
            self.port = free_port(4 if self.broker == "rabbitmq" else 2)
            script = str(SCRIPTS / f"{self.broker}.sh")
            folder.mkdir(parents=True)

            def stop() -> None:
                subprocess.run(
                    [script, "stop", str(folder)], capture_output=True, timeout=120, check=False
                )

            self._stop_broker = stop
            done = subprocess.run(
                [script, "start", str(folder), str(self.port)],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            if done.returncode != 0:
                raise BenchError(f"{self.broker} did not start:\n{done.stdout}{done.stderr}")
            self.info = {"broker": f"{self.broker} via scripts/brokers/{self.broker}.sh"}
        log(f"{self.broker}: broker at {self.host}:{self.port}")

    def stop(self) -> None:
        self._stop_broker()

    def _pair(self, tag: str) -> Pair:
        work = self.work / tag
        settings = {
            "save_history": True,
            "replication_hosts": f"{self.host}:{self.port}",
            "replication_channel": f"peers{uuid.uuid4().hex[:10]}",
        }
        apply_log = work / "b-applied.log"
        a = launch_node(work / "a", "A", settings)
        os.environ[APPLY_LOG] = str(apply_log)
        try:
            b = launch_node(work / "b", "B", settings, [sys.executable, str(TIMED_NODE), "serve"])
        finally:
            del os.environ[APPLY_LOG]
        try:
            for node in (a, b):
                wait_serving(node)
            for node in (a, b):
                client = Client(node.host, node.port)
                try:
                    deadline = time.monotonic() + 60
                    while not client.get_json("/api/status")["replication"]["connected"]:
                        if time.monotonic() > deadline:
                            raise BenchError(f"node {node.label} did not reach its broker")
                        time.sleep(0.05)
                finally:
                    client.close()
            pair = Pair(a, b, ApplyLog(apply_log), work / "b" / "node.conf")
            self._write_each(a, f"{tag}w", WARMUP)
            pair.log.wait([doc_id(f"{tag}w", i) for i in range(WARMUP)], 60)
            if pair.log.meta:
                self.b_meta = pair.log.meta[0]
            return pair
        except BaseException:
            stop_node(a)
            stop_node(b)
            raise

    @staticmethod
    def _write_each(node: HttpNode, tag: str, n: int) -> tuple[int, int]:
        client = Client(node.host, node.port)
        try:
            requests = [client.build("POST", "/api/objects", document(tag, i)) for i in range(n)]
            t0 = time.time_ns()
            for data in requests:
                status, body = client.request(data)
                if status != 201:
                    raise BenchError(f"node {node.label}: POST answered {status}: {body[:200]!r}")
            return t0, time.time_ns()
        finally:
            client.close()

    @staticmethod
    def _status(node: HttpNode) -> dict[str, Any]:
        client = Client(node.host, node.port)
        try:
            status: dict[str, Any] = client.get_json("/api/status")
            return status
        finally:
            client.close()

    def _wait_outbox(self, node: HttpNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._status(node)["outbox"]:
            if time.monotonic() > deadline:
                raise BenchError(f"node {node.label}'s outbox did not drain in {timeout:g} s")
            time.sleep(0.05)

    def _cpu(self, pair: Pair) -> dict[str, float]:
        out = {"a": cpu_seconds(pair.a.proc.pid), "b": cpu_seconds(pair.b.proc.pid)}
        if self.broker_pid is not None:
            out["broker"] = cpu_seconds(self.broker_pid)
        return out

    def _cpu_per_doc(self, before: dict[str, float], pair: Pair, n: int) -> dict[str, float]:
        after = self._cpu(pair)
        return {f"{k}_cpu_us_per_doc": (after[k] - v) / n * 1e6 for k, v in before.items()}

    def run(self, run: int, sizes: Sizes) -> RunResult:
        out = RunResult()
        n = sizes.docs

        tag = f"{self.tag}{run}a"
        pair = self._pair(tag)
        try:
            sent0 = self._status(pair.a)["replication"]["messages_sent"]
            cpu0 = self._cpu(pair)
            t0, t_written = self._write_each(pair.a, tag, n)
            stamps = pair.log.wait([doc_id(tag, i) for i in range(n)], DEADLINE_S)
            done = max(stamps.values())
            sent = self._status(pair.a)["replication"]["messages_sent"] - sent0
            out.values["a"] = n / ((done - t0) / 1e9)
            out.detail["a"] = rounded(
                {
                    "a_writes_per_s": n / ((t_written - t0) / 1e9),
                    "tail_ms": (done - t_written) / 1e6,
                    "docs_per_message": n / max(1, sent),
                    "b_apply_transactions": len(set(stamps.values())),
                    **self._cpu_per_doc(cpu0, pair, n),
                }
            )
        finally:
            stop_node(pair.a)
            stop_node(pair.b)

        tag = f"{self.tag}{run}bulk"
        pair = self._pair(tag)
        try:
            client = Client(pair.a.host, pair.a.port)
            try:
                body = b"[" + b",".join(document(tag, i) for i in range(n)) + b"]"
                data = client.build("POST", "/api/objects", body)
                cpu0 = self._cpu(pair)
                t0 = time.time_ns()
                status, answer = client.request(data)
                t_written = time.time_ns()
            finally:
                client.close()
            if status != 201:
                raise BenchError(f"bulk POST answered {status}: {answer[:200]!r}")
            stamps = pair.log.wait([doc_id(tag, i) for i in range(n)], DEADLINE_S)
            done = max(stamps.values())
            out.values["bulk"] = n / ((done - t0) / 1e9)
            out.detail["bulk"] = rounded(
                {
                    "a_commit_s": (t_written - t0) / 1e9,
                    "b_applied_after_commit_ms": (done - t_written) / 1e6,
                    "body_bytes": len(body),
                    **self._cpu_per_doc(cpu0, pair, n),
                }
            )
        finally:
            stop_node(pair.a)
            stop_node(pair.b)

        tag = f"{self.tag}{run}lag"
        pair = self._pair(tag)
        try:
            answered, slip = paced_writes(
                "vesper", (pair.a.host, pair.a.port), tag, sizes.lag_writes
            )
            stamps = pair.log.wait(answered, 60)
            stats = lag_stats(answered, stamps)
            out.values["lag_p50"], out.values["lag_p99"] = stats["p50_ms"], stats["p99_ms"]
            out.detail["lag"] = rounded({**stats, "max_schedule_slip_ms": slip * 1e3})
        finally:
            stop_node(pair.a)
            stop_node(pair.b)

        tag = f"{self.tag}{run}c"
        pair = self._pair(tag)
        try:
            b_port = pair.b.port
            stop_node(pair.b)
            pair.log.poll()
            t0, t_written = self._write_each(pair.a, tag, n)
            self._wait_outbox(pair.a, DEADLINE_S)  # all of it held by the broker
            t_drained = time.time_ns()
            pair.b, t_launch, t_ready = self._restart(pair, b_port)
            stamps = pair.log.wait([doc_id(tag, i) for i in range(n)], DEADLINE_S)
            status_b = self._status(pair.b)["replication"]
            shared = catchup_figures(out, n, t_launch, t_ready, stamps)
            out.detail["catchup"] = rounded(
                {
                    "a_writes_per_s": n / ((t_written - t0) / 1e9),
                    "a_outbox_drained_after_s": (t_drained - t_written) / 1e9,
                    **shared,
                    "b_apply_transactions": len(set(stamps.values())),
                    "b_changesets_received": status_b.get("changesets_received"),
                    "b_catchup_changesets_received": status_b.get("catchup_changesets_received"),
                }
            )
            stop_node(pair.b)
            pair.b, t_launch, t_ready = self._restart(pair, b_port, "node-restart-2.log")
            out.values["restart"] = (t_ready - t_launch) / 1e9
        finally:
            stop_node(pair.a)
            stop_node(pair.b)
        return out

    def _restart(
        self, pair: Pair, port: int, log_name: str = "node-restart.log"
    ) -> tuple[HttpNode, int, int]:
        """Start B again on its port; returns it, the launch time and the time of its
        first 200 on ``/health``."""
        log_path = pair.b.log_path.with_name(log_name)
        argv = [sys.executable, str(TIMED_NODE), "serve", str(pair.config_b), f"--port={port}"]
        env = {**os.environ, APPLY_LOG: str(pair.log.path)}
        with log_path.open("wb") as log_file:
            t_launch = time.time_ns()
            proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        node = HttpNode(pair.b.label, proc, "127.0.0.1", port, log_path)
        deadline = time.monotonic() + 60
        while True:
            try:
                client = Client(node.host, port)
                try:
                    status, _ = client.get("/health")
                finally:
                    client.close()
                if status == 200:
                    return node, t_launch, time.time_ns()
            except (OSError, ValueError):
                pass  # not listening yet, or closed mid-answer while starting
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_node(node)
                raise BenchError(f"node B did not restart:\n{log_path.read_text()[-2000:]}")
            time.sleep(HEALTH_POLL_S)


# -- report ------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "ms":
        return f"{value:,.2f} ms"
    if unit == "s":
        return f"{value:,.3f} s"
    return f"{value:,.0f} {unit}"


def ratio_text(vesper: float | None, pg: float | None) -> str:
    if vesper is None or pg is None or math.isnan(vesper) or math.isnan(pg) or pg == 0:
        return "-"
    return f"{vesper / pg:.2f}x"


def median_values(runs: list[RunResult]) -> dict[str, float]:
    return {
        m.key: statistics.median(r.values[m.key] for r in runs)
        for m in METRICS
        if runs and all(m.key in r.values for r in runs)
    }


def print_report(
    header: list[str],
    labels: dict[str, str],
    medians: dict[str, dict[str, float]],
    runs: dict[str, list[RunResult]],
    sizes: Sizes,
    errors: dict[str, str],
) -> None:
    for line in header:
        print(line)
    pg = medians.get("postgres", {})
    vesper = [s for s in labels if s != "postgres"]
    pg_label = labels.get("postgres", "PostgreSQL 15 logical")
    for system in vesper or [None]:
        ours = medians.get(system, {}) if system else {}
        label = labels[system] if system else "Vesper"
        head = f"{'metric':<44} {pg_label:>22} {label:>22} {'ratio':>7} {'target':>14}  result"
        print()
        print(head)
        print("-" * len(head))
        for m in METRICS:
            n = sizes.lag_writes if m.key.startswith("lag") else sizes.docs
            mine, theirs = ours.get(m.key), pg.get(m.key)
            print(
                f"{m.label.format(n=f'{n:,}'):<44} {fmt(theirs, m.unit):>22} "
                f"{fmt(mine, m.unit):>22} {ratio_text(mine, theirs):>7} "
                f"{m.target_text():>14}  {m.verdict(mine, theirs)}".rstrip()
            )
    print()
    for system, results in runs.items():
        for i, r in enumerate(results, 1):
            print(f"  {labels[system]} run {i}: {json.dumps(r.detail)}")
    for key, error in errors.items():
        name, _, which = key.partition(" ")
        print(f"  {' '.join(filter(None, (labels.get(name, name), which)))} ERROR: {error}")
    for system, results in runs.items():
        print(f"  {labels[system]}: median of {len(results)} completed run(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller workload (smoke test)")
    parser.add_argument("--runs", type=int, default=3, help="runs per system (median reported)")
    parser.add_argument(
        "--systems",
        help=f"comma-separated, of {', '.join(SYSTEMS)} (default: postgres, embedded and"
        " the brokers installed)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--dir", help="directory for the temporary files (default: system temp)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.systems:
        wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in SYSTEMS]
        if unknown:
            parser.error(f"unknown system(s): {', '.join(unknown)}")
    else:
        wanted = ["postgres", *benchlib.installed_brokers()]
    sizes = QUICK if args.quick else FULL
    # SIGTERM unwinds like Ctrl-C, so the clusters, brokers and nodes we started stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    errors: dict[str, str] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vesper-peers-", dir=args.dir) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # PostgreSQL and RabbitMQ run as their own users
        systems: list[PostgresSystem | VesperSystem] = []
        if "postgres" in wanted:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                errors["postgres"] = "skipped: psycopg is not installed"
            else:
                bin_dir, why_not = _postgres.ensure_postgres()
                if bin_dir is None:
                    errors["postgres"] = f"skipped: {why_not}"
                else:
                    systems.append(PostgresSystem(work, bin_dir))
            if "postgres" in errors:
                log(f"PostgreSQL {errors['postgres']}")
        systems.extend(VesperSystem(work, b) for b in VESPER_BROKERS if b in wanted)
        runs: dict[str, list[RunResult]] = {}
        live: list[PostgresSystem | VesperSystem] = []
        try:
            for system in systems:
                try:
                    system.start()
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    log(f"{system.name}: failed to start: {exc}")
                    errors[system.name] = f"start failed: {exc}"
                    system.stop()
                    continue
                live.append(system)
                runs[system.name] = []
            for run in range(1, args.runs + 1):
                for system in live:
                    log(f"{system.label}: run {run}/{args.runs} ...")
                    t = time.monotonic()
                    try:
                        result = system.run(run, sizes)
                    except (BenchError, OSError, subprocess.SubprocessError) as exc:
                        log(f"{system.label}: run {run} failed: {exc}")
                        # The other runs still count: one failure must not hide them.
                        errors[f"{system.name} run {run}"] = f"failed: {exc}"
                        continue
                    runs[system.name].append(result)
                    figures = ", ".join(
                        f"{m.key}={fmt(result.values.get(m.key), m.unit)}" for m in METRICS
                    )
                    log(f"{system.label}: run {run}: {figures} ({time.monotonic() - t:.0f} s)")
                    log(f"{system.label}: run {run} detail: {json.dumps(result.detail)}")
        finally:
            for system in reversed(live):
                system.stop()

    labels = {s.name: s.label for s in systems}
    medians = {name: median_values(results) for name, results in runs.items() if results}
    machine = benchlib.machine(loadavg_at_start=os.getloadavg()[0])
    pg = next((s for s in systems if isinstance(s, PostgresSystem)), None)
    b_meta = next((s.b_meta for s in systems if isinstance(s, VesperSystem) and s.b_meta), {})
    sync_default = next(f.default for f in fields(StorageLocation) if f.name == "synchronous")
    settings = {
        "gil_switchinterval_s": sys.getswitchinterval(),
        "vesper_b_gil_switchinterval_s": b_meta.get("switchinterval"),
        "vesper_sqlite_synchronous": str(sync_default).upper(),
        "postgres": pg.info if pg else None,
        "brokers": {s.name: s.info for s in systems if isinstance(s, VesperSystem)},
    }
    total = round(time.monotonic() - started, 1)
    bad = bool(errors) or any(
        m.verdict(medians[s].get(m.key), medians.get("postgres", {}).get(m.key)) == "MISS"
        for s in medians
        if s != "postgres"
        for m in METRICS
    )
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine,
                    "settings": settings,
                    "quick": args.quick,
                    "sizes": asdict(sizes),
                    "doc_bytes": DOC_BYTES,
                    "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
                    "medians": medians,
                    "verdicts": {
                        s: {
                            m.key: m.verdict(
                                medians[s].get(m.key), medians.get("postgres", {}).get(m.key)
                            )
                            for m in METRICS
                        }
                        for s in medians
                        if s != "postgres"
                    },
                    "errors": errors,
                    "total_seconds": total,
                },
                indent=2,
            )
        )
    else:
        pg_info = pg.info if pg else {}
        header = [
            f"machine: nproc={machine['nproc']} cpu={machine['cpu'] or '?'} "
            f"python={machine['python']} sqlite={machine['sqlite']} "
            f"load={machine['loadavg_at_start']:.2f} ({machine['platform']})",
            f"GIL switch interval: {sys.getswitchinterval() * 1e3:g} ms (this process); "
            f"node B: {fmt_ms(b_meta.get('switchinterval'))}",
            f"workload: {sizes.docs:,} documents of {DOC_BYTES} bytes of JSON; (b) "
            f"{sizes.lag_writes:,} writes at {LAG_RATE}/s from {WRITERS} writer processes; "
            f"median of {args.runs} interleaved run(s)"
            + (" (quick: 10x smaller)" if args.quick else ""),
            f"durability: Vesper nodes' SQLite synchronous={settings['vesper_sqlite_synchronous']}"
            " (WAL; no fsync per commit)"
            + ("; embedded broker --data-dir (synchronous=FULL)" if "embedded" in labels else ""),
        ]
        if pg_info:
            header.append(
                f"durability: PostgreSQL {pg_info['server_version']} fsync={pg_info['fsync']} "
                f"synchronous_commit={pg_info['synchronous_commit']} on A; the subscription's "
                f"apply synchronous_commit={pg_info['subscription_synchronous_commit']}"
            )
        print_report(header, labels, medians, runs, sizes, errors)
        print(f"total: {total} s")
    return 1 if args.strict and bad else 0


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:g} ms"


if __name__ == "__main__":
    sys.exit(main())
