"""Drains the store's outbox to the broker.

The outbox row is written in the commit's own transaction; it leaves only when the
broker's RECEIPT for the SEND that carried it arrives (a receipt for a persistent SEND
comes after the broker stored it). Sends are pipelined: up to ``MAX_IN_FLIGHT``
messages wait for receipts at once. After a reconnect everything still in the outbox is
sent again; receivers drop the duplicates. A backlog travels several changesets per
message, and a changeset larger than a broker takes in parts (``parts``).

The sender signs the last changeset of each message as it first sends it (Ed25519,
about 40 us): on this thread rather than in the commit, so a commit pays only for its
chain hash. The changesets of a message are consecutive, so that one signature covers
the others through their hash chain (receivers check one signature per message). The
signature is not written back to the store: catch-up answers sign the last of this
node's own changesets in each batch the same way, so a confirmation costs one delete.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable

import orjson

from vesper.replication import parts, wire
from vesper.replication.stats import Stats
from vesper.replication.transport import Link, LinkError
from vesper.store import Store
from vesper.trust.keys import NodeKey
from vesper.trust.signing import sign

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4
"""Messages awaiting their receipt. Few, so that a backlog collects into messages of up
to BATCH_CHANGESETS (fewer messages and acks: 5,500 rather than 3,800 changesets/s to a
node through ActiveMQ), while a quiet node still sends each commit at once."""
BATCH_CHANGESETS = 100
BATCH_BYTES = 256 * 1024
IDLE_WAKE_S = 1.0
CONFIRM_BATCH = 1_000
CONFIRM_DELAY_S = 0.1
BUSY_S = 0.001
"""A commit this soon after the previous send is taken for a stream of commits: the
sender then gathers them for one message, as long as some arrive within each GAP_S,
for at most GATHER_MAX_S. One message per burst instead of one per commit costs
the sender, the broker and every receiver a fraction of the work (bench/trust_bench.py:
a single writer's rate with replication went from about three quarters to about nine
tenths of its rate without, against a fixed 2 ms gathering woken by every commit). A
commit after a quieter moment is sent at once: no fixed wait on an idle path."""
GAP_S = 0.002
GATHER_MAX_S = 0.010
STREAM_INTERVAL_S = 0.0015
"""Gathering also needs commits this close together on average (about 670 commits a
second or more): a busy writer's stream gathers, while a few writers at a few hundred
commits a second, some of whose commits merely land just after a send, do not wait
GAP_S after each for a next one that is not coming."""
INTERVAL_CAP_S = 0.003
"""An interval counts at most this much in the moving average: one stall of a busy
writer (a garbage collection, a checkpoint) must not end its gathering."""


class OutboxSender:
    def __init__(
        self,
        store: Store,
        channels: tuple[str, ...],
        branch_id: str,
        stats: Stats,
        current_link: Callable[[], Link | None],
        key: NodeKey,
        expiry_headers: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self._store = store
        self._expiry_headers = expiry_headers
        self._key = key
        self._channels = channels
        self._branch_id = branch_id
        self._stats = stats
        self._current_link = current_link
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[str, list[int]] = {}
        self._confirmed: deque[str] = deque()
        self._sent_upto = 0
        self._generation = -1
        self._unflushed: list[int] = []
        self._unflushed_since = 0.0
        self._sent_at = float("-inf")
        """Monotonic time the last send ended."""
        self._commits = 0
        """Local commits so far (only this number's changes matter)."""
        self._commits_sent = 0
        """``_commits`` when the last send began."""
        self._pace = CommitPace()
        self._thread: threading.Thread | None = None
        self.frame_bytes: int | None = None
        """The connected broker's ceiling on a whole frame (coilmq), set by the
        replication service when it connects: messages are packed, or cut, to fit."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vesper-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self, *_: object) -> None:
        self._wake.set()

    def committed(self, *_: object) -> None:
        """A local commit (the store's commit listener, on the committing thread)."""
        self._pace.commit(time.monotonic())
        self._commits += 1
        self._wake.set()

    def receipt(self, receipt_id: str) -> None:
        """A RECEIPT arrived (receiver thread): confirm on the sender thread."""
        self._confirmed.append(receipt_id)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(CONFIRM_DELAY_S if self._unflushed else IDLE_WAKE_S)
            self._wake.clear()
            now = time.monotonic()
            if (
                self._commits != self._commits_sent
                and now - self._sent_at < BUSY_S
                and self._pace.streaming
            ):
                self._gather(now + GATHER_MAX_S)
            self._commits_sent = self._commits
            if self._store.failure is not None:
                continue  # the replication service halts; retrying would only log
            try:
                self._confirm()
                self._send_some()
            except LinkError as exc:
                # The connection went away mid-send: the supervisor reconnects and the
                # rows still in the outbox go out again then.
                log.info("send interrupted (%s); will resend after reconnecting", exc)
                self._stop.wait(0.2)
            except Exception:
                self._stats.send_errors += 1
                log.exception("replication sender failed; retrying")
                self._stop.wait(1.0)
        try:
            self._confirm(force=True)
        except Exception:
            log.warning("could not record the last confirmations", exc_info=True)

    def _gather(self, deadline: float) -> None:
        """Wait while commits keep coming, up to ``deadline``. Polled, not woken by
        each commit: a wake-up per commit would take the GIL from the committer every
        time, which is most of what gathering saves."""
        seen = self._commits
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(GAP_S, left))
            if self._commits == seen:
                break  # none within the gap: the burst is over
            seen = self._commits
        self._wake.clear()

    def _confirm(self, force: bool = False) -> None:
        """Free the in-flight slots of confirmed messages at once; delete their outbox
        rows in batches. Every delete is a write transaction competing with commits,
        and a row confirmed but not yet deleted when the node dies is merely sent again
        (receivers drop duplicates)."""
        while self._confirmed:
            receipt_id = self._confirmed.popleft()
            with self._lock:
                seqs = self._in_flight.pop(receipt_id, ())
            if seqs and not self._unflushed:
                self._unflushed_since = time.monotonic()
            self._unflushed.extend(seqs)
        if self._unflushed and (
            force
            or len(self._unflushed) >= CONFIRM_BATCH
            or time.monotonic() - self._unflushed_since >= CONFIRM_DELAY_S
        ):
            self._store.outbox_confirm(self._unflushed)
            self._unflushed = []

    def _send_some(self) -> None:
        link = self._current_link()
        if link is None or not link.connected:
            return
        if link.generation != self._generation:
            # New connection: receipts of the old one will never come; resend all that
            # is still in the outbox once the confirmed rows are out of it.
            self._confirm(force=True)
            with self._lock:
                self._in_flight.clear()
            self._sent_upto = 0
            self._generation = link.generation
        while not self._stop.is_set():
            with self._lock:
                room = MAX_IN_FLIGHT - len(self._in_flight)
            if room <= 0:
                return
            rows = self._store.outbox_peek(limit=room * BATCH_CHANGESETS, after_seq=self._sent_upto)
            if not rows:
                return
            for batch in _batches(rows, self._body_room()):
                self._send_batch(link, batch)
                self._sent_upto = batch[-1][0]
            self._sent_at = time.monotonic()

    def _sign(self, text: str) -> str:
        body = orjson.loads(text)
        if "sig" in body:
            return text  # re-imported from a peer, signed already
        return orjson.dumps(sign(body, self._key)).decode()

    def _send_batch(self, link: Link, batch: list[tuple[int, str]]) -> None:
        # Sign where a chain run ends: the last row, and any row whose successor in the
        # batch does not chain onto it (rows left after a reconnect may have gaps, and
        # format-1 changesets written before signing have no chain at all).
        links = [_chain_link(text) for _, text in batch]
        texts = [
            text
            if i + 1 < len(batch) and links[i + 1][1] and links[i + 1][0] == links[i][0] + 1
            else self._sign(text)
            for i, (_, text) in enumerate(batch)
        ]
        if len(texts) == 1:
            body = texts[0].encode()
        else:
            body = b"[" + b",".join(text.encode() for text in texts) + b"]"
        receipt = uuid.uuid4().hex
        with self._lock:
            self._in_flight[receipt] = [seq for seq, _ in batch]
        messages = parts.split(
            body,
            self._headers(),
            self._branch_id,
            self._key,
            frame_bytes=self.frame_bytes,
            destination=self._longest_topic(),
        )
        try:
            for channel in self._channels:
                for i, (piece, piece_headers) in enumerate(messages, 1):
                    # Receipts come in the order of the sends of a connection: the last
                    # one confirms every part before it.
                    last = channel == self._channels[-1] and i == len(messages)
                    link.send(
                        wire.topic(channel), piece, piece_headers, receipt=receipt if last else None
                    )
        except Exception:
            with self._lock:
                self._in_flight.pop(receipt, None)
            self._stats.send_errors += 1
            raise
        self._stats.messages_sent += len(messages)
        self._stats.changesets_sent += len(batch)

    def _headers(self) -> dict[str, str]:
        return wire.changeset_headers(self._branch_id, self._expiry_headers())

    def _longest_topic(self) -> str:
        return wire.topic(max(self._channels, key=len))

    def _body_room(self) -> int:
        """Bytes of changesets a message may gather: with a frame ceiling, what one
        frame holds besides its headers and the signature the last changeset gets."""
        if self.frame_bytes is None:
            return BATCH_BYTES
        signature = len(',"key":"","sig":""') + len(self._key.public) + parts.SIG_CHARS
        headers = parts.frame_overhead(self._headers(), self._longest_topic(), self.frame_bytes)
        return min(BATCH_BYTES, self.frame_bytes - headers - signature)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)


class CommitPace:
    """How fast local commits come: a moving average of the intervals between them."""

    __slots__ = ("_interval", "_last")

    def __init__(self) -> None:
        self._last = float("-inf")
        self._interval = INTERVAL_CAP_S

    def commit(self, now: float) -> None:
        """A commit at monotonic time ``now``."""
        self._interval += (min(now - self._last, INTERVAL_CAP_S) - self._interval) / 8
        self._last = now

    @property
    def streaming(self) -> bool:
        """Whether commits come as a stream worth gathering (STREAM_INTERVAL_S)."""
        return self._interval < STREAM_INTERVAL_S


def _batches(rows: list[tuple[int, str]], max_bytes: int) -> list[list[tuple[int, str]]]:
    """Rows in messages of at most BATCH_CHANGESETS and ``max_bytes`` as a JSON array
    (one comma or bracket counted per row)."""
    out: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    size = 1
    for row in rows:
        if current and (len(current) >= BATCH_CHANGESETS or size + len(row[1]) + 1 > max_bytes):
            out.append(current)
            current, size = [], 1
        current.append(row)
        size += len(row[1]) + 1
    if current:
        out.append(current)
    return out


def _chain_link(text: str) -> tuple[int, bool]:
    """A stored changeset's counter, and whether it names its predecessor's hash."""
    body = orjson.loads(text)
    return int(body["id"].rpartition(".")[2]), "prev" in body
