#!/usr/bin/env python3
"""What signed, hash-chained changesets cost: "signatures on" against "signatures off".

Every part measures both sides in the same run, interleaved, best of ``--rounds``:

commits  single-object ``store.create`` on a fresh SQLite file store (``save_history``,
         ``outbox``) with the chain hash as shipped ("on") and with
         ``vesper.store.store.content_hash`` replaced by a constant ("off"); also the
         cost of ``sign(body, key)`` per changeset, which the sender thread pays, not
         the commit (target: commits at most 30% lower)
apply    N signed single-object changesets from an origin store, in messages of 100 as
         the sender groups them; on a fresh receiving store, per message: decode +
         ``parse_changeset`` + ``apply_parsed`` ("off"), the same plus
         ``Verifier.changesets`` on the message ("on"), and the same with one verifier
         call per changeset (what the chain amortisation saves) (target: applies at
         most 25% lower); and the verifier alone on a backlog of small messages,
         message by message against one receive batch (``Verifier.batch``)
http     one client, sequential keep-alive ``POST /api/objects`` of one object, against
         ``vesper serve`` nodes: replication off, replicating through the embedded
         broker (``python -m vesper.broker --data-dir``), and replicating with the
         chain hash and the sender's signing stubbed out (target: writes with
         signatures at most 10% lower than the same replicating node without them;
         replication off is shown beside them for what replication itself costs)

Usage::

    .venv/bin/python bench/trust_bench.py             # full sizes, about 1.5 minutes
    .venv/bin/python bench/trust_bench.py --quick     # 10x smaller, about 10 s
    .venv/bin/python bench/trust_bench.py --only apply --rounds 5
    .venv/bin/python bench/trust_bench.py --json

The exit status is 0 unless ``--strict`` is given and a target is missed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import orjson  # noqa: E402

import _nodes  # noqa: E402 - bench/ is on sys.path when a script runs
import benchlib  # noqa: E402
import vesper.store.store as store_module  # noqa: E402
from _nodes import (  # noqa: E402
    BenchError,
    Client,
    HttpNode,
    cpu_seconds,
    log,
    stop_node,
    wait_until,
)
from benchlib import small_doc  # noqa: E402
from vesper.history.changeset import Changeset, parse_changeset  # noqa: E402
from vesper.replication.receiver import BATCH_MESSAGES  # noqa: E402
from vesper.storage.database import Database  # noqa: E402
from vesper.storage.url import parse_storage_url  # noqa: E402
from vesper.store.store import Store, open_store  # noqa: E402
from vesper.trust.keyring import Keyring  # noqa: E402
from vesper.trust.keys import NodeKey  # noqa: E402
from vesper.trust.signing import content_hash, sign  # noqa: E402
from vesper.trust.verifier import Verifier  # noqa: E402

MESSAGE_CHANGESETS = 100
"""Changesets per message, as ``replication.sender.BATCH_CHANGESETS`` sends a backlog."""
BACKLOG_MESSAGE = 12
"""Changesets per message of a single writer's live traffic (12-17 measured)."""
NO_HASH = "0" * 64
HTTP_WARMUP_S = 0.5


@dataclass(frozen=True)
class Sizes:
    commits: int
    """Single-object creates per variant and round."""
    sign_samples: int
    """Changesets signed (and hashed) to time one ``sign`` call."""
    apply: int
    """Signed changesets applied per variant and round."""
    http_seconds: float
    """Timed seconds of sequential writes per node and round (after a warm-up)."""
    rounds: int
    """Interleaved rounds of commits and applies (the best of each side is kept)."""
    http_rounds: int
    """Interleaved rounds of the HTTP phases: shorter and more of them, since a
    replicating node's rate moves a lot from one phase to the next."""


FULL = Sizes(
    commits=10_000, sign_samples=5_000, apply=20_000, http_seconds=3.0, rounds=3, http_rounds=5
)
QUICK = Sizes(
    commits=1_000, sign_samples=500, apply=2_000, http_seconds=1.0, rounds=1, http_rounds=1
)


@dataclass
class Figure:
    name: str
    """Benchmark name (what ``--only`` selects)."""
    metric: str
    off: float | None
    on: float | None
    unit: str
    max_drop_pct: float | None = None
    """Target: ``on`` at most this many percent below ``off``."""
    lower_is_better: bool = False
    """For a cost (us, not a rate): the change shown is still on - off."""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def change_pct(self) -> float | None:
        if self.off is None or self.on is None or self.off == 0:
            return None
        return 100.0 * (self.on - self.off) / self.off

    @property
    def verdict(self) -> str:
        change = self.change_pct
        if self.max_drop_pct is None or change is None:
            return ""
        return "PASS" if change >= -self.max_drop_pct else "MISS"


def file_store(workdir: Path, name: str, branch: str) -> Store:
    url = f"sqlite:///{(workdir / f'{name}.db').resolve()}"
    return open_store(url, branch, save_history=True, outbox=True)


@contextmanager
def chain_hash_off() -> Iterator[None]:
    """Local commits without the chain hash: ``content_hash`` in the store a constant,
    and in the store's chain check too, or its background verification takes the
    constant hashes for damage and stops the store's writes."""
    from vesper.store import chain as chain_module

    real = store_module.content_hash
    store_module.content_hash = chain_module.content_hash = lambda body: NO_HASH
    try:
        yield
    finally:
        store_module.content_hash = chain_module.content_hash = real


def best(values: list[float]) -> float:
    return max(values)


def per_call_us(fn: Callable[[Any], Any], items: list[Any]) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items) * 1e6


# -- commits ---------------------------------------------------------------------------


def time_commits(workdir: Path, name: str, n: int) -> tuple[float, Store]:
    store = file_store(workdir, name, "BENCH")
    t0 = time.perf_counter()
    for i in range(n):
        store.create(small_doc(i))
    elapsed = time.perf_counter() - t0
    assert store.count == n and store.outbox_count == n
    return n / elapsed, store


def time_hash_in_commits(workdir: Path, n: int) -> float:
    """Mean time of the store's ``content_hash`` calls during ``n`` commits (a separate,
    uncounted run: the timer wrapper would slow the counted ones)."""
    real = store_module.content_hash
    spent = [0.0, 0]

    def timed(body: Any) -> str:
        t0 = time.perf_counter()
        digest = real(body)
        spent[0] += time.perf_counter() - t0
        spent[1] += 1
        return digest

    store_module.content_hash = timed
    try:
        time_commits(workdir, "hash-timed", n)[1].close()
    finally:
        store_module.content_hash = real
    return spent[0] / max(1, spent[1]) * 1e6


def bench_commits(workdir: Path, sizes: Sizes) -> list[Figure]:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    bodies: list[dict[str, Any]] = []
    time_commits(workdir, "warmup", min(1_000, sizes.commits))[1].close()  # not counted
    for r in range(sizes.rounds):
        # Alternate which side goes first: a neighbour's burst should not favour one.
        for variant in ("off", "on") if r % 2 == 0 else ("on", "off"):
            if variant == "off":
                with chain_hash_off():
                    rate, store = time_commits(workdir, f"commits-off-{r}", sizes.commits)
            else:
                rate, store = time_commits(workdir, f"commits-on-{r}", sizes.commits)
                if not bodies:
                    bodies = list(store.changesets())[: sizes.sign_samples]
            store.close()
            rates[variant].append(rate)
    hash_in_commit_us = time_hash_in_commits(workdir, max(1, sizes.commits // 2))
    key = NodeKey.generate()
    sign_us = min(per_call_us(lambda b: sign(b, key), bodies) for _ in range(3))
    hash_us = min(per_call_us(content_hash, bodies) for _ in range(3))
    texts = [orjson.dumps(b).decode() for b in bodies]
    # What OutboxSender._sign does with each outbox row it first sends.
    sender_us = min(
        per_call_us(lambda t: orjson.dumps(sign(orjson.loads(t), key)).decode(), texts)
        for _ in range(3)
    )
    off, on = best(rates["off"]), best(rates["on"])
    return [
        Figure(
            "commits",
            "single-object commits (chain hash vs no-op)",
            off,
            on,
            "commits/s",
            30,
            detail={
                "commits_per_round": sizes.commits,
                "off_rounds": [round(x) for x in rates["off"]],
                "on_rounds": [round(x) for x in rates["on"]],
                "commit_us_off": round(1e6 / off, 1),
                "commit_us_on": round(1e6 / on, 1),
            },
        ),
        Figure(
            "commits",
            "  content_hash(body) inside a commit",
            0.0,
            hash_in_commit_us,
            "us",
            detail={"content_hash_us_alone": round(hash_us, 2)},
        ),
        Figure(
            "commits",
            "  sign(body, key), sender thread",
            0.0,
            sign_us,
            "us",
            detail={"sign_samples": len(bodies), "changeset_bytes": len(texts[0])},
        ),
        Figure("commits", "  sender: loads + sign + dumps", 0.0, sender_us, "us"),
    ]


# -- applies ---------------------------------------------------------------------------


def signed_messages(n: int) -> tuple[list[bytes], float]:
    """``n`` single-object creates of origin ``ORIGIN``, each signed, in JSON messages of
    ``MESSAGE_CHANGESETS`` as the sender sends a backlog."""
    key = NodeKey.generate()
    t0 = time.perf_counter()
    origin = open_store("mem://", "ORIGIN", save_history=True)
    try:
        for i in range(n):
            origin.create(small_doc(i))
        bodies = [sign(body, key) for body in origin.changesets()]
    finally:
        origin.close()
    assert len(bodies) == n
    messages = [
        orjson.dumps(bodies[i : i + MESSAGE_CHANGESETS]) for i in range(0, n, MESSAGE_CHANGESETS)
    ]
    return messages, time.perf_counter() - t0


def verify_message(verifier: Verifier, parsed: list[Changeset]) -> list[Changeset]:
    good, refused = verifier.changesets(parsed)
    assert not refused, refused[0].detail
    return good


def verify_each(verifier: Verifier, parsed: list[Changeset]) -> list[Changeset]:
    good: list[Changeset] = []
    for cs in parsed:
        good.extend(verify_message(verifier, [cs]))
    return good


APPLY_VARIANTS: dict[str, Callable[[Verifier, list[Changeset]], list[Changeset]] | None] = {
    "off": None,
    "on": verify_message,
    "each": verify_each,
}


def time_apply(workdir: Path, name: str, messages: list[bytes], variant: str) -> tuple[float, int]:
    store = file_store(workdir, name, "DEST")
    check = APPLY_VARIANTS[variant]
    # Trust on first use, as a node without replication_trusted_keys runs.
    verifier = Verifier(Keyring(store.db, "DEST", NodeKey.generate().public))
    applied = 0
    try:
        t0 = time.perf_counter()
        for message in messages:
            parsed = [parse_changeset(raw, "DEST") for raw in orjson.loads(message)]
            if check is not None:
                parsed = check(verifier, parsed)
            applied += len(store.apply_parsed(parsed).applied)
        elapsed = time.perf_counter() - t0
    finally:
        store.close()
    return elapsed, applied


def bench_apply(workdir: Path, sizes: Sizes) -> list[Figure]:
    messages, gen_seconds = signed_messages(sizes.apply)
    n = sizes.apply
    secs: dict[str, list[float]] = {v: [] for v in APPLY_VARIANTS}
    order = list(APPLY_VARIANTS)
    for r in range(sizes.rounds):
        for variant in order if r % 2 == 0 else order[::-1]:
            elapsed, applied = time_apply(workdir, f"apply-{variant}-{r}", messages, variant)
            assert applied == n, (variant, applied, n)
            secs[variant].append(elapsed)
    rate = {v: n / min(s) for v, s in secs.items()}
    # The verifier's own time, alone: per message of 100, and per changeset one by one.
    parsed_msgs = [[parse_changeset(raw, "DEST") for raw in orjson.loads(m)] for m in messages]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = file_store(Path(tmp), "verify", "DEST")
        try:
            verifier = Verifier(Keyring(store.db, "DEST", NodeKey.generate().public))
            verify_message(verifier, parsed_msgs[0][:1])  # the one pin, not timed
            msg_us = min(
                per_call_us(lambda p: verify_message(verifier, p), parsed_msgs) for _ in range(3)
            )
            each_us = min(
                per_call_us(lambda p: verify_each(verifier, p), parsed_msgs) for _ in range(3)
            )
        finally:
            store.close()
    per_msg = len(parsed_msgs[0])
    return [
        Figure(
            "apply",
            f"applies, messages of {MESSAGE_CHANGESETS} (verify per message)",
            rate["off"],
            rate["on"],
            "changesets/s",
            25,
            detail={
                "changesets": n,
                "messages": len(messages),
                "message_bytes": len(messages[0]),
                "generate_and_sign_seconds": round(gen_seconds, 2),
                **{f"{v}_seconds": [round(x, 3) for x in s] for v, s in secs.items()},
            },
        ),
        Figure(
            "apply",
            "  one verify per changeset (no chain)",
            rate["off"],
            rate["each"],
            "changesets/s",
        ),
        Figure(
            "apply",
            "  verifier time per changeset, chained",
            0.0,
            msg_us / per_msg,
            "us",
            detail={"per_message_us": round(msg_us, 1)},
        ),
        Figure("apply", "  verifier time per changeset, one by one", 0.0, each_us / per_msg, "us"),
        *bench_backlog_verify(sizes),
    ]


def bench_backlog_verify(sizes: Sizes) -> list[Figure]:
    """The verifier alone on a returning node's backlog: small messages (as a single
    writer's sender makes them), each signed on its last changeset, checked message by
    message against one receive batch (``Verifier.batch``) of up to ``BATCH_MESSAGES``."""
    key = NodeKey.generate()
    origin = open_store("mem://", "ORIGIN", save_history=True)
    try:
        for i in range(sizes.apply):
            origin.create(small_doc(i))
        bodies = list(origin.changesets())
    finally:
        origin.close()
    parts = [bodies[i : i + BACKLOG_MESSAGE] for i in range(0, len(bodies), BACKLOG_MESSAGE)]
    raw = [[*part[:-1], sign(part[-1], key)] for part in parts]
    own = NodeKey.generate().public
    seconds: dict[str, list[float]] = {"message": [], "batch": []}
    for r in range(sizes.rounds):
        for way in ("message", "batch") if r % 2 == 0 else ("batch", "message"):
            parsed = [[parse_changeset(b, "DEST") for b in m] for m in raw]
            verifier = Verifier(Keyring(Database(parse_storage_url("mem://")), "DEST", own))
            t0 = time.perf_counter()
            if way == "message":
                for message in parsed:
                    verifier.changesets(message)
            else:
                for i in range(0, len(parsed), BATCH_MESSAGES):
                    verifier.batch(parsed[i : i + BATCH_MESSAGES])
            seconds[way].append(time.perf_counter() - t0)
    n = sizes.apply
    return [
        Figure(
            "apply",
            f"  verifier, backlog in messages of {BACKLOG_MESSAGE}: per message / batch",
            n / min(seconds["message"]),
            n / min(seconds["batch"]),
            "changesets/s",
            detail={
                "messages": len(raw),
                **{f"{w}_seconds": [round(x, 3) for x in s] for w, s in seconds.items()},
            },
        ),
    ]


# -- HTTP ------------------------------------------------------------------------------


def start_node(work: Path, label: str, broker: tuple[str, int] | None, unsigned: bool) -> HttpNode:
    settings: dict[str, Any] = {"save_history": True}
    if broker is not None:
        settings["replication_hosts"] = [broker]
        settings["replication_channel"] = f"trust{uuid.uuid4().hex[:10]}"
    command = [sys.executable, __file__, "--serve-unsigned"] if unsigned else None
    return _nodes.start_node(work, label, settings, command)


def serve_unsigned(config: str) -> int:
    """A replicating node with the chain hash a constant and the sender's signing step
    skipped (rows go out as stored, and their stored body is not rewritten)."""
    from vesper.cli.serve import configure_logging, serve
    from vesper.config import load_settings
    from vesper.replication import sender
    from vesper.store import chain as chain_module

    if not hasattr(sender.OutboxSender, "_sign"):
        raise SystemExit("OutboxSender._sign is gone: update bench/trust_bench.py")
    sender.OutboxSender._sign = lambda self, text: text  # type: ignore[method-assign]
    store_module.content_hash = lambda body: NO_HASH
    # The store's chain check (on open and in the background) must hash as the commits
    # did, or it takes the constant hashes for damage and stops the node's writes.
    chain_module.content_hash = lambda body: NO_HASH
    settings = load_settings(config, ["--port=0"])
    configure_logging(settings.log_level)
    return serve(settings)


def post(obj_id: str, i: int) -> bytes:
    body = orjson.dumps({"id": obj_id, **small_doc(i)})
    return (
        b"POST /api/objects HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def http_phase(node: HttpNode, seconds: float, tag: str, broker_pid: int | None) -> dict[str, Any]:
    """Sequential POSTs for HTTP_WARMUP_S (not counted) plus ``seconds``. The CPU
    figures run until the node's outbox is empty: the replication work of the timed
    writes counts, wherever it falls."""
    client = Client(node.host, node.port)
    clock = time.perf_counter
    try:
        sent0 = client.get_json("/api/status")["replication"]["messages_sent"]
        i = 0
        latencies: list[float] = []
        errors = 0
        start = clock()
        warm_until = start + HTTP_WARMUP_S
        stop_at = warm_until + seconds
        cpu0 = broker0 = 0.0
        timing = False
        while True:
            t = clock()
            if t >= stop_at:
                break
            if not timing and t >= warm_until:
                timing = True
                cpu0 = cpu_seconds(node.proc.pid)
                broker0 = cpu_seconds(broker_pid) if broker_pid else 0.0
                t = clock()
                t_begin = t
            status, _ = client.request(post(f"{tag}-{i}", i))
            i += 1
            if timing:
                latencies.append(clock() - t)
                if status >= 300:
                    errors += 1
        elapsed = clock() - t_begin
        # A replicating node must have sent them all before the next phase starts.
        wait_until(lambda: client.get_json("/api/status")["outbox"] == 0, 60, "outbox to drain")
        cpu = cpu_seconds(node.proc.pid) - cpu0
        broker_cpu = cpu_seconds(broker_pid) - broker0 if broker_pid else 0.0
        sent = client.get_json("/api/status")["replication"]["messages_sent"] - sent0
    finally:
        client.close()
    if errors:
        raise BenchError(f"{errors} writes on node {node.label} failed")
    latencies.sort()
    n = len(latencies)
    return {
        "writes": n,
        "per_s": n / elapsed,
        "p50_ms": latencies[n // 2] * 1e3,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
        "cpu_us": cpu / n * 1e6,
        "broker_cpu_us": broker_cpu / n * 1e6,
        "messages_sent": sent,
        "writes_per_message": i / sent if sent else None,
    }


HTTP_NODES = ("off", "unsigned", "on")
"""Replication off; replicating with hash and signing stubbed out; replicating as shipped."""


def bench_http(workdir: Path, sizes: Sizes) -> list[Figure]:
    from vesper.broker.process import BrokerProcess

    broker = BrokerProcess(
        workdir / "broker", control=False, allow_anonymous=True, log_path=workdir / "broker.log"
    )
    broker.start()
    nodes: dict[str, HttpNode] = {}
    try:
        address = (broker.host, broker.port)
        nodes["off"] = start_node(workdir / "off", "HOFF", None, unsigned=False)
        nodes["unsigned"] = start_node(workdir / "unsigned", "HUNSIGNED", address, unsigned=True)
        nodes["on"] = start_node(workdir / "on", "HON", address, unsigned=False)
        for label in ("unsigned", "on"):
            client = Client(nodes[label].host, nodes[label].port)
            try:
                wait_until(
                    lambda c=client: c.get_json("/api/status")["replication"]["connected"],
                    30,
                    f"node {label} to connect to the broker",
                )
            finally:
                client.close()
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in HTTP_NODES}
        for r in range(sizes.http_rounds):
            for label in HTTP_NODES if r % 2 == 0 else HTTP_NODES[::-1]:
                pid = broker.pid if label != "off" else None
                runs[label].append(http_phase(nodes[label], sizes.http_seconds, f"r{r}", pid))
    finally:
        for node in nodes.values():
            stop_node(node)
        broker.stop()
    top = {label: max(rs, key=lambda x: x["per_s"]) for label, rs in runs.items()}
    cpu = {label: min(x["cpu_us"] for x in rs) for label, rs in runs.items()}
    if any(x["messages_sent"] == 0 for x in runs["on"] + runs["unsigned"]):
        raise BenchError("a replicating node sent no message in a phase")
    detail = {
        label: {
            "rounds_per_s": [round(x["per_s"]) for x in rs],
            "p50_ms": round(top[label]["p50_ms"], 3),
            "p99_ms": round(top[label]["p99_ms"], 3),
            "writes_per_message": [
                round(x["writes_per_message"], 2) if x["writes_per_message"] else None for x in rs
            ],
            "cpu_us_per_write": [round(x["cpu_us"]) for x in rs],
        }
        for label, rs in runs.items()
    }
    return [
        Figure(
            "http",
            "1 client POST writes, replicating: sigs off vs on",
            top["unsigned"]["per_s"],
            top["on"]["per_s"],
            "writes/s",
            10,
            detail={"seconds_per_phase": sizes.http_seconds, **detail},
        ),
        # What replication itself costs the writer, signatures or not: for comparison.
        Figure(
            "http",
            "  replication off vs replicating (signed)",
            top["off"]["per_s"],
            top["on"]["per_s"],
            "writes/s",
        ),
        Figure(
            "http",
            "  p50 latency: repl. off vs replicating",
            top["off"]["p50_ms"],
            top["on"]["p50_ms"],
            "ms",
            lower_is_better=True,
        ),
        Figure(
            "http",
            "  node CPU per write: repl. off vs replicating",
            cpu["off"],
            cpu["on"],
            "us",
            lower_is_better=True,
        ),
        Figure(
            "http",
            "  node CPU per write: sigs stubbed vs shipped",
            cpu["unsigned"],
            cpu["on"],
            "us",
            lower_is_better=True,
            detail={
                "broker_cpu_us_per_write_unsigned": round(
                    min(x["broker_cpu_us"] for x in runs["unsigned"]), 1
                ),
                "broker_cpu_us_per_write_on": round(min(x["broker_cpu_us"] for x in runs["on"]), 1),
            },
        ),
    ]


BENCHES: dict[str, Callable[[Path, Sizes], list[Figure]]] = {
    "commits": bench_commits,
    "apply": bench_apply,
    "http": bench_http,
}


# -- report ----------------------------------------------------------------------------


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("us", "ms"):
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def print_table(info: dict[str, Any], figures: list[Figure], sizes: Sizes, quick: bool) -> None:
    print(
        f"machine: nproc={info['nproc']} cpu={info['cpu'] or '?'} python={info['python']} "
        f"sqlite={info['sqlite']} ({info['platform']})"
    )
    print(
        f"sizes: {'quick (10x smaller)' if quick else 'full'}, best of {sizes.rounds} "
        f"interleaved round(s) ({sizes.http_rounds} of {sizes.http_seconds:g} s for http); "
        "off = signatures off, on = signatures on (as shipped)"
    )
    header = (
        f"{'bench':<8} {'metric':<46} {'off':>9} {'on':>9} {'unit':<12} "
        f"{'change':>8} {'target':>8}  result"
    )
    print(header)
    print("-" * len(header))
    for fig in figures:
        change = fig.change_pct
        change_text = "" if change is None else f"{change:+.1f}%"
        target = "" if fig.max_drop_pct is None else f">= -{fig.max_drop_pct:g}%"
        print(
            f"{fig.name:<8} {fig.metric:<46} {format_value(fig.off, fig.unit):>9} "
            f"{format_value(fig.on, fig.unit):>9} {fig.unit:<12} {change_text:>8} "
            f"{target:>8}  {fig.verdict}"
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
    parser.add_argument("--rounds", type=int, help="interleaved rounds per side (best is kept)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument("--dir", help="directory for the temporary stores (default: system temp)")
    parser.add_argument("--serve-unsigned", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_unsigned:
        return serve_unsigned(args.serve_unsigned)

    # SIGTERM unwinds like Ctrl-C, so the broker and nodes we started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**asdict(sizes), "rounds": args.rounds, "http_rounds": args.rounds})
    names = args.only or list(BENCHES)
    figures: list[Figure] = []
    started = time.perf_counter()
    for name in names:
        log(f"{name} ...")
        with tempfile.TemporaryDirectory(prefix=f"vesper-trust-{name}-", dir=args.dir) as tmp:
            figures.extend(BENCHES[name](Path(tmp), sizes))
    info = benchlib.machine(total_seconds=round(time.perf_counter() - started, 2))
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "quick": args.quick,
                    "sizes": asdict(sizes),
                    "figures": [
                        {**asdict(f), "change_pct": f.change_pct, "verdict": f.verdict}
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
