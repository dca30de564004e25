"""Throughput and memory of the embedded broker. Figures are printed, not asserted.

    .venv/bin/python bench/broker_bench.py                 # memory and sqlite, 20,000 msgs
    .venv/bin/python bench/broker_bench.py --offline 1000000   # RSS with 1M held messages

Throughput: one stomp.py publisher (pipelined persistent SENDs, one final receipt) and one
stomp.py durable subscriber (``client-individual``, ACK per message), each in its own
process so they do not share a GIL; the broker runs as ``python -m vesper.broker``.
Offline: a durable subscriber leaves, a raw-socket publisher pipelines N messages with
``--data-dir``, and the broker's peak RSS is read from /proc.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import tempfile
import threading
import time
from pathlib import Path

import stomp

from vesper.broker import BrokerProcess

TOPIC = "/topic/bench"
SUB_HEADERS = {"activemq.subscriptionName": "bench"}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Sub(stomp.ConnectionListener):
    def __init__(self, conn: stomp.Connection12, count: int) -> None:
        self.conn = conn
        self.count = count
        self.seen = 0
        self.done = threading.Event()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        self.conn.ack(frame.headers["ack"])
        self.seen += 1
        if self.seen >= self.count:
            self.done.set()


def _subscribe(port: int, count: int) -> tuple[stomp.Connection12, _Sub]:
    conn = stomp.Connection12([("127.0.0.1", port)])
    listener = _Sub(conn, count)
    conn.set_listener("sub", listener)
    conn.connect(wait=True, headers={"client-id": "bench-sub"})
    conn.subscribe(TOPIC, id="1", ack="client-individual", headers=SUB_HEADERS)
    return conn, listener


def _subscriber(port: int, count: int, ready, started, result) -> None:
    conn, listener = _subscribe(port, count)
    ready.set()
    started.wait()
    listener.done.wait(600)
    result.put(time.perf_counter())
    conn.disconnect()


def _publish(port: int, count: int, size: int) -> None:
    conn = stomp.Connection12([("127.0.0.1", port)])
    got = threading.Event()

    class L(stomp.ConnectionListener):
        def on_receipt(self, frame: stomp.utils.Frame) -> None:
            got.set()

    conn.set_listener("pub", L())
    conn.connect(wait=True)
    body = "x" * size
    for _ in range(count - 1):
        conn.send(TOPIC, body, headers={"persistent": "true"})
    conn.send(TOPIC, body, headers={"persistent": "true", "receipt": "last"})
    got.wait(600)
    conn.disconnect()


def throughput(data_dir: Path | None, count: int, size: int) -> tuple[float, float]:
    with BrokerProcess(data_dir, control=False, allow_anonymous=True) as broker:
        ctx = multiprocessing.get_context("fork")
        ready, started, result = ctx.Event(), ctx.Event(), ctx.Queue()
        sub = ctx.Process(target=_subscriber, args=(broker.port, count, ready, started, result))
        sub.start()
        ready.wait(60)
        started.set()
        t0 = time.perf_counter()
        _publish(broker.port, count, size)
        end = result.get(timeout=600)
        sub.join(60)
        assert broker.pid is not None
        return end - t0, peak_rss_mb(broker.pid)


def offline(data_dir: Path, count: int, size: int, drain: bool) -> list[tuple]:
    rows = []
    with BrokerProcess(data_dir, control=False, allow_anonymous=True) as broker:
        conn, _ = _subscribe(broker.port, count)
        conn.disconnect()
        frame = b"SEND\ndestination:%s\npersistent:true\ncontent-length:%d\n\n%s\x00" % (
            TOPIC.encode(),
            size,
            b"y" * size,
        )
        batch = frame * 1000
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", broker.port)) as sock:
            sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
            for _ in range(count // 1000):
                sock.sendall(batch)
            sock.sendall(b"SEND\ndestination:/queue/bench-sync\nreceipt:end\n\n\x00")
            data = b""
            while b"receipt-id:end" not in data:
                data += sock.recv(65536)
        elapsed = time.perf_counter() - t0
        assert broker.pid is not None
        rows.append(("offline store", count, elapsed, count / elapsed, peak_rss_mb(broker.pid)))
        if drain:
            t0 = time.perf_counter()
            conn, listener = _subscribe(broker.port, count)
            listener.done.wait(3600)
            elapsed = time.perf_counter() - t0
            conn.disconnect()
            rows.append(("offline drain", count, elapsed, count / elapsed, peak_rss_mb(broker.pid)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="median of this many runs")
    parser.add_argument("--offline", type=int, default=0, help="messages for the RSS test")
    parser.add_argument("--drain", action="store_true", help="then drain them via stomp.py")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("memory", "sqlite"):
            results = []
            for run in range(args.runs):
                data_dir = Path(tmp) / f"{mode}-{run}" if mode == "sqlite" else None
                results.append(throughput(data_dir, args.messages, args.size))
            results.sort()
            seconds, rss = results[len(results) // 2]
            rows.append((mode, args.messages, seconds, args.messages / seconds, rss))
        if args.offline:
            rows += offline(Path(tmp) / "offline", args.offline, args.size, args.drain)
    print(f"{'mode':<14} {'messages':>9} {'seconds':>8} {'msg/s':>8} {'peak RSS MB':>12}")
    for mode, n, seconds, rate, rss in rows:
        print(f"{mode:<14} {n:>9} {seconds:>8.2f} {rate:>8.0f} {rss:>12.1f}")


if __name__ == "__main__":
    main()
