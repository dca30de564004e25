"""A process beside the writer that computes the digest's share of large transactions.

Per object the digest costs the writer a SHAKE128 squeeze of 2 KiB and a lane sum on
top of the object's canonical JSON: a quarter to a third of a bulk commit or of applying
a catch-up batch, and all of it under the GIL (hashlib lets go of it only for inputs of
2 KiB or more), so a thread cannot run it beside the writer, but another process can,
on another core.

The protocol is the writer's alone, on the process's stdin and stdout: a chunk of
objects goes in (``C``), acknowledged by one byte once it is added in; the end of the
transaction (``S``) is answered with one lane sum per bucket of what was added and
of what was removed, and the sums start again from zero. The writer thread does all of
the I/O itself, with no helper thread: a thread of this process waiting for the GIL
while the writer holds it would wait a switch interval (5 ms) for every read and
write, which measured four times slower than the worker's own work.

The process is this module's ``main`` on a pair of pipes, not a ``multiprocessing``
pool: every start method of ``multiprocessing`` but fork (unsafe in a process with
threads) runs the program's main script again in the child, which for a program
embedding the store means running its code twice.

Nothing depends on the process being there: when it dies, hangs or cannot start, the
writer computes the transaction's chunks itself, so the digest is the same either way.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import orjson

import vesper
from vesper.document import lthash
from vesper.document.lthash import LaneSum
from vesper.trust.canonical import canonical

log = logging.getLogger(__name__)

Items = list[tuple[int, str, bool]]
"""(bucket, JSON text of a live object, whether that text is its canonical form)."""
Sums = tuple[dict[int, int], dict[int, int]]
"""Each bucket's sum of the added elements, and of the removed ones."""

ANSWER_TIMEOUT_S = 30.0
"""A worker that has not answered by then is taken for hung: it is killed and the
writer computes the transaction's chunks itself."""
_PIPE_BYTES = 1 << 20
"""The pipe to the worker is enlarged to this (Linux), so that the chunks it has not
taken yet fit and the writer does not block handing over the next."""
_F_SETPIPE_SZ = 1031
_HEADER = struct.Struct("<cQ")
_COUNT = struct.Struct("<H")
_ENTRY = 1 + lthash.STATE_BYTES
_ACK = b"."


class WorkerGone(Exception):
    """The worker process ended, hung or could not be started."""


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class DigestWorker:
    """One worker process shared by the stores of a process, one transaction at a time
    (the one that ``acquire`` gave it to, until ``finish`` or ``abandon``)."""

    _shared: ClassVar[DigestWorker | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._busy = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._unacked = 0
        self._received = b""
        self._failures = 0
        self._lease_chunks = 0
        """Chunks handed over since ``acquire``: the sums of those are in the process,
        so another one must not replace it before ``finish``."""

    @classmethod
    def shared(cls) -> DigestWorker | None:
        """The process's worker; None on a machine with one usable CPU, where a second
        process would only take turns with the writer."""
        if _usable_cpus() < 2:
            return None
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
                atexit.register(cls._shared.close)
            return cls._shared

    def acquire(self) -> bool:
        """Take the worker for one transaction; False when another has it."""
        if not self._busy.acquire(blocking=False):
            return False
        self._lease_chunks = 0
        return True

    def send(self, added: Items, removed: Items) -> None:
        """Hand over a chunk (the worker must be acquired). Raises WorkerGone."""
        try:
            proc = self._running()
            payload = orjson.dumps([added, removed])
            self._write(proc, _HEADER.pack(b"C", len(payload)) + payload)
            self._unacked += 1
            self._lease_chunks += 1
        except Exception as exc:
            raise self._gone(exc) from exc
        except BaseException as exc:
            # Even a KeyboardInterrupt may leave half a frame in the process: it must
            # not be used again, and the interrupt goes on.
            self._gone(exc)
            raise

    def backlog(self) -> int:
        """Chunks handed over and not yet added in by the worker."""
        if self._unacked:
            try:
                self._read_available()
            except Exception as exc:
                raise self._gone(exc) from exc
            self._unacked -= self._take_acks()
        return self._unacked

    def finish(self) -> Sums:
        """The sums of every chunk handed over since ``acquire``, which it ends."""
        try:
            proc = self._running()
            deadline = time.monotonic() + ANSWER_TIMEOUT_S
            self._write(proc, _HEADER.pack(b"S", 0), deadline)
            while self._unacked:
                self._read_some(deadline)
                self._unacked -= self._take_acks()
            while len(self._received) < _HEADER.size:
                self._read_some(deadline)
            kind, length = _HEADER.unpack_from(self._received)
            if kind != b"S":
                raise ValueError(f"the digest worker answered {kind!r}")
            while len(self._received) < _HEADER.size + length:
                self._read_some(deadline)
            body = self._received[_HEADER.size : _HEADER.size + length]
            self._received = self._received[_HEADER.size + length :]
            if self._received:
                raise ValueError(f"{len(self._received)} bytes after the digest worker's answer")
            return _decode(body)
        except Exception as exc:
            raise self._gone(exc) from exc
        except BaseException as exc:
            # A KeyboardInterrupt mid-answer leaves the sums or the answer in the
            # process: it must not serve another lease, and the interrupt goes on.
            self._gone(exc)
            raise
        finally:
            self._busy.release()

    def abandon(self) -> None:
        """End the transaction without its sums (it rolled back, or the writer computed
        them itself after a failure)."""
        if self._proc is None:
            self._busy.release()
            return
        with contextlib.suppress(WorkerGone):  # released by finish either way
            self.finish()

    def close(self) -> None:
        """End the process: it exits once its stdin closes."""
        # Not forever: at exit a daemon thread may hold it in a transaction it will
        # never finish.
        if not self._busy.acquire(timeout=5):
            return  # its stdin closes when this process ends, which ends it too
        proc, self._proc = self._proc, None
        self._busy.release()
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        _discard(proc)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures == 1 or self._failures % 100 == 0:
            log.warning(
                "the digest worker process failed (%s: %s); the writer computes the "
                "digest itself meanwhile (%d failures so far)",
                type(exc).__name__,
                exc,
                self._failures,
            )

    def _gone(self, exc: BaseException) -> WorkerGone:
        """Kill the process (the next transaction starts another) and say why."""
        self._failed(exc)
        proc, self._proc = self._proc, None
        self._unacked, self._received = 0, b""
        if proc is not None:
            proc.kill()
            _discard(proc)
        return WorkerGone(f"{type(exc).__name__}: {exc}")

    def _running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            _discard(proc)
            self._proc = None
        if self._lease_chunks:
            raise BrokenPipeError("the digest worker process ended")
        # Isolated (-I): neither PYTHONPATH nor the working folder may give the worker
        # another vesper (another digest) or shadow a module; the package's own folder
        # is added, for a program that found it by sys.path.
        package_root = str(Path(vesper.__file__).resolve().parent.parent)
        code = (
            f"import sys\nroot = {package_root!r}\n"
            "if root not in sys.path: sys.path.insert(0, root)\n"
            "from vesper.store.digest_worker import main\nmain()"
        )
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stdout is not None
        # Else a smaller pipe: handing over waits for the worker now and then.
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdin.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)
        self._proc, self._unacked, self._received = proc, 0, b""
        return proc

    def _write(self, proc: subprocess.Popen[bytes], data: bytes, deadline: float = 0.0) -> None:
        """All of ``data`` into the worker's pipe, waiting for room until ``deadline``
        (default: ANSWER_TIMEOUT_S from now): a stalled worker must not stall the
        writer, which holds the store's lock."""
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        deadline = deadline or time.monotonic() + ANSWER_TIMEOUT_S
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
                continue
            except BlockingIOError:
                pass
            _wait(fd, select.POLLOUT, deadline)

    def _read_available(self) -> None:
        if self._proc is None or self._proc.stdout is None:
            raise BrokenPipeError("the digest worker process is gone")
        try:
            data = os.read(self._proc.stdout.fileno(), _PIPE_BYTES)
        except BlockingIOError:
            return
        if not data:
            raise BrokenPipeError("the digest worker process ended")
        self._received += data

    def _read_some(self, deadline: float) -> None:
        if self._proc is None or self._proc.stdout is None:
            raise BrokenPipeError("the digest worker process is gone")
        _wait(self._proc.stdout.fileno(), select.POLLIN, deadline)
        self._read_available()

    def _take_acks(self) -> int:
        """Acknowledgements at the front of what was received, consumed."""
        received = self._received
        kept = received.lstrip(_ACK)
        self._received = kept
        return len(received) - len(kept)


def _wait(fd: int, event: int, deadline: float) -> None:
    """Until ``fd`` is ready for ``event`` (or has hung up); TimeoutError at ``deadline``.
    poll, not select: a node with many sockets has descriptors beyond select's 1024."""
    poller = select.poll()
    poller.register(fd, event)
    left = deadline - time.monotonic()
    if left <= 0 or not poller.poll(left * 1000):
        raise TimeoutError(f"the digest worker did not answer in {ANSWER_TIMEOUT_S:g} s")


def _discard(proc: subprocess.Popen[bytes]) -> None:
    """Reap an ended (or killed) worker and close its pipes."""
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def add_elements(sums: dict[int, LaneSum], items: Items) -> None:
    """Add to each bucket's sum the elements of the objects given for it (the digest's
    ``object_element``, from their text)."""
    for bucket, text, is_canonical in items:
        found = sums.get(bucket)
        if found is None:
            found = sums[bucket] = LaneSum()
        data = text.encode() if is_canonical else canonical(orjson.loads(text))
        found.add(lthash.element(data))


def _encode(sums: tuple[dict[int, LaneSum], dict[int, LaneSum]]) -> bytes:
    out = []
    for part in sums:
        out.append(_COUNT.pack(len(part)))
        out.extend(bytes((bucket,)) + lthash.to_bytes(s.value()) for bucket, s in part.items())
    return b"".join(out)


def _decode(data: bytes) -> Sums:
    parts: list[dict[int, int]] = []
    at = 0
    for _ in range(2):
        (count,) = _COUNT.unpack_from(data, at)
        at += _COUNT.size
        part = {}
        for _ in range(count):
            part[data[at]] = int.from_bytes(data[at + 1 : at + _ENTRY], "little")
            at += _ENTRY
        parts.append(part)
    if at != len(data):
        raise ValueError(f"an answer of {len(data)} bytes, {at} expected")
    return parts[0], parts[1]


def main() -> None:
    """The worker, until stdin closes (the writer's process ended or closed it)."""
    # Ctrl-C reaches the whole process group; the worker ends with its stdin instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    added: dict[int, LaneSum] = {}
    removed: dict[int, LaneSum] = {}
    while len(header := stdin.read(_HEADER.size)) == _HEADER.size:
        kind, length = _HEADER.unpack(header)
        if kind == b"C":
            new, gone = orjson.loads(stdin.read(length))
            add_elements(added, new)
            add_elements(removed, gone)
            stdout.write(_ACK)
        else:
            answer = _encode((added, removed))
            added, removed = {}, {}
            stdout.write(_HEADER.pack(b"S", len(answer)) + answer)
        stdout.flush()
