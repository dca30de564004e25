"""Anti-entropy: nodes announce their revision; a node that stays behind asks a peer.

Convergence must not depend on the broker keeping every message (a broker crash, a
failover to another broker, ``send_stomp_ack = False``, a node that was never
subscribed). So every node announces its version vector on the channel's sync topic
when it connects and every few seconds. A node that sees a peer holding changesets it
lacks, and still lacks them a grace period later (they were not merely in flight), sends
that peer a request on the peer's queue; the peer answers with every changeset the
asker lacks, from its own history, in causal order, in batches on the asker's queue.
Any node can answer for any origin, so a new empty node bootstraps the whole store this
way. One request is outstanding at a time, so peers do not all answer at once.

Answers are flow-controlled: the asker acknowledges each batch once applied, and the
answerer sends the next only while at most ``ANSWER_WINDOW`` batches wait for their
acknowledgement, starting small (``FIRST_BATCH_BYTES``) and doubling per acknowledged
batch up to ``ANSWER_BATCH_BYTES``. A request forged for an asker nobody runs thus
costs the broker at most the first window (a few tens of KiB), never the whole
history, while a real bootstrap streams at full speed.

Announcements and requests are signed by their sender and verified before they get
here. The peer list is bounded (``MAX_PEERS``; the longest silent peer makes room) and
forgets a peer not heard from for ``peer_expiry_s``. A request that times out counts
against its peer, so the next request goes to another peer that has what is missing
rather than to one silent peer in a loop.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from vesper.history.revision import dominates, format_revision, parse_revision
from vesper.replication import wire
from vesper.replication.loglimit import LogLimit
from vesper.replication.peer_state import SYNC_GRACE_S, ChangesetTimes, Standing
from vesper.replication.stats import Stats
from vesper.store import Store
from vesper.trust.keyring import Keyring
from vesper.trust.keys import NodeKey
from vesper.trust.signing import sign

log = logging.getLogger(__name__)

ANNOUNCE_INTERVAL_S = 5.0
ACTIVE_ANNOUNCE_INTERVAL_S = 1.0
HELLO_ANSWER_BURST = 4
"""Hellos and new peers answered at once in a row (nodes restarted together); past
that, one a second, owed ones at the next tick, so a flood of invented peers gets no
flood of announcements and no real one waits for the periodic announcement."""
GRACE_S = 2.0
MAX_WAIT_S = 10.0
REQUEST_TIMEOUT_S = 5.0
"""A request with no batch arriving for this long is abandoned and asked again (a lost
answer must not stall a node for long)."""
ANSWER_BATCH = 500
ANSWER_BATCH_BYTES = 512 * 1024
FIRST_BATCH_BYTES = 16 * 1024
ANSWER_WINDOW = 2
OPEN_CUT_FACTOR = 4
"""A batch may grow to this many times its size to end on a signed changeset of each
origin in it."""
ACK_TIMEOUT_S = 10.0
"""An answer whose asker acknowledges nothing for this long is abandoned."""
MAX_ANSWERS = 8
"""Answers streaming at once; further requests wait for the asker to ask again."""
PROGRESS_LOG_S = 5.0
MAX_PEERS = 1_000
MAX_UNKNOWN_ENTRIES = 1_000
"""Entries of origins this node does not know kept from one announcement: enough to
learn of new branches, not enough for a forged 20,000-entry revision to cost memory."""
REFUSAL_TTL_S = 60.0
"""A peer's refusal of this node's key counts while it keeps announcing it; this long
after the last announcement that said so, it no longer does."""
DEFAULT_PEER_EXPIRY_S = 7 * 24 * 3600.0
DEFAULT_PEER_GONE_AFTER_S = 60.0
AGE_READS_PER_STATUS = 200
"""Store reads one status may spend on the ages of what peers lack (each changeset's
time is read once and cached; past this, ages are left out until the next status)."""


@dataclass
class Peer:
    revision: dict[str, int]
    seen: float
    """Monotonic time of its last announcement."""
    behind_since: float | None = None
    """When we first saw it hold something we lack (None: we have all it has)."""
    behind_snapshot: dict[str, int] = field(default_factory=dict)
    """Its revision at ``behind_since``: what must arrive before the grace runs out."""
    wall: str = ""
    timeouts: int = 0
    """Requests to it that went unanswered since it last answered one."""
    answered: int = 0
    """Requests it answered with changesets: a peer that has given before is asked
    before an unknown one."""
    sent_ms: int = 0
    """``time_ms`` of its latest announcement (older ones are ignored)."""
    standing: Standing = field(default_factory=Standing)
    """Its differences with this node over time (vesper.replication.peer_state)."""
    digest: str | None = None
    """The store digest it announced with its revision (None: an older version)."""


@dataclass
class Answer:
    """An answer being streamed to one asker."""

    request_id: str
    acked: int = 0
    """The highest batch number the asker acknowledged."""
    wake: threading.Condition = field(default_factory=threading.Condition)
    started: float = field(default_factory=time.monotonic)
    expected: int = 0
    """Changesets the asker lacks, as counted when the answer started."""
    sent: int = 0
    """Changesets sent so far."""
    through: dict[int, int] = field(default_factory=dict)
    """Changesets sent up to and including each batch not yet acknowledged."""
    applied: int = 0
    """Changesets in the batches the asker acknowledged: applied there."""


@dataclass
class Request:
    peer: str
    request_id: str
    started: float
    expected: int
    received: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    last_log: float = field(default_factory=time.monotonic)


class AntiEntropy:
    def __init__(
        self,
        store: Store,
        branch_id: str,
        channel: str,
        stats: Stats,
        send: Any,
        key: NodeKey,
        keyring: Keyring,
        peer_expiry_s: float = DEFAULT_PEER_EXPIRY_S,
        peer_gone_after_s: float = DEFAULT_PEER_GONE_AFTER_S,
    ) -> None:
        self._store = store
        self._peer_gone_after_s = peer_gone_after_s
        self._times = ChangesetTimes(store.changeset)
        # Invented peers can each announce a big gap: their lines are limited.
        self._gap_log = LogLimit(
            10,
            10.0,
            lambda n, _, s: f"{n} more peers far apart from this node in {s:.0f} s (not logged)",
            log,
            logging.INFO,
        )
        self._key = key
        self._keyring = keyring
        self.own_elsewhere = 0
        """The highest counter of this node's own branch that a peer announced: above
        this node's own, it lost changesets it had published and must fetch them back
        before it commits again."""
        self.refused_by: dict[str, float] = {}
        """Peers that announce they refuse this node's key for its branch id, and when."""
        self._hello_tokens = float(HELLO_ANSWER_BURST)
        self._hello_tokens_at = time.monotonic()
        self._hello_owed = False
        self._last_heard = 0.0
        self.on_refused: Any = lambda peer: None
        """Called with a peer's branch when it announces that it refuses our key."""
        self._peer_expiry_s = peer_expiry_s
        self._branch_id = branch_id
        self._channel = channel
        self._stats = stats
        self._send = send  # send(destination, body, headers) on the current link
        self._lock = threading.Lock()
        self.peers: dict[str, Peer] = {}
        self.request: Request | None = None
        self._last_announce = 0.0
        self._answering: dict[str, Answer] = {}
        self._last_revision = ""
        self._announced = ""
        self._pending_since: float | None = None
        self._last_change = time.monotonic()

    # -- announcing ----------------------------------------------------------------

    def announce(self, hello: bool = False) -> None:
        """Publish this node's revision; ``hello`` (after connecting) asks every peer to
        answer with its own at once, so a starting node learns quickly whether its peers
        hold more of its own history than it does."""
        self._last_announce = time.monotonic()
        self._hello_owed = False  # this one answers every hello before it
        self._announced, digest = self._store.revision_and_digest()
        body: dict[str, Any] = {
            "type": wire.ANNOUNCE,
            "branch": self._branch_id,
            "revision": self._announced,
            "digest": digest,  # signed with the rest: peers can tell divergence apart
            "time_ms": int(time.time() * 1000),
        }
        if hello:
            body["hello"] = True
        refused = self._keyring.refusals()
        if refused:
            body["refused"] = refused
        self._send(
            wire.sync_topic(self._channel),
            wire.encode(sign(body, self._key)),
            {wire.CLIENTID: self._branch_id, wire.TYPE: wire.ANNOUNCE},
        )

    def tick(self) -> None:
        """Periodic work (supervisor thread): announce, time out, re-check peers."""
        if self._hello_owed and self._hello_token():
            self.announce()
        now = time.monotonic()
        since_last = now - self._last_announce
        # Idle nodes announce every ANNOUNCE_INTERVAL_S; a node whose revision moved
        # announces within a second, so peers notice lost messages quickly.
        if since_last >= ANNOUNCE_INTERVAL_S or (
            self._store.revision != self._announced and since_last >= ACTIVE_ANNOUNCE_INTERVAL_S
        ):
            self.announce()
        with self._lock:
            req = self.request
            if req is not None and now - req.last_progress > REQUEST_TIMEOUT_S:
                log.warning(
                    "catch-up from %s timed out after %d of ~%d changesets",
                    req.peer,
                    req.received,
                    req.expected,
                )
                self.request = None
                peer = self.peers.get(req.peer)
                if peer is not None:
                    peer.timeouts += 1
            elif req is not None and now - req.last_log >= PROGRESS_LOG_S:
                req.last_log = now
                log_progress(
                    f"catch-up from {req.peer}", req.received, req.expected, now - req.started
                )
            expired = [b for b, p in self.peers.items() if now - p.seen > self._peer_expiry_s]
            for branch in expired:
                log.info("peer %s silent for %.0f s: forgotten", branch, self._peer_expiry_s)
                del self.peers[branch]
            self._follow_peers(now, self._store.version_vector)
        self._gap_log.flush()
        self._maybe_request(now)

    def _follow_peers(self, now: float, have: dict[str, int]) -> None:
        """Compare every peer's last announced revision with this node's (under the
        lock): O(peers x revision entries), never the history."""
        for branch, peer in self.peers.items():
            standing = peer.standing
            heard = peer.seen > standing.compared_at
            quiet = now - peer.seen >= min(SYNC_GRACE_S, self._peer_gone_after_s)
            standing.update(have, peer.revision, now, quiet)
            if standing.big_gap(heard) and self._gap_log.allow("gap"):
                if standing.ahead_of_us >= standing.behind_us:
                    log.info(
                        "this node lacks ~%d changesets that peer %s has: catching up",
                        standing.ahead_of_us,
                        branch,
                        extra={"peer": branch, "ahead_of_us": standing.ahead_of_us},
                    )
                else:
                    log.info(
                        "peer %s is ~%d changesets behind this node",
                        branch,
                        standing.behind_us,
                        extra={"peer": branch, "behind_us": standing.behind_us},
                    )

    def on_connected(self) -> None:
        with self._lock:
            self.request = None
            for peer in self.peers.values():
                peer.behind_since = None
        self.announce(hello=True)

    # -- peers ---------------------------------------------------------------------

    def on_announce(self, body: dict[str, Any]) -> None:
        branch = body.get("branch")
        if not isinstance(branch, str) or branch == self._branch_id:
            return
        sent = body.get("time_ms")
        if type(sent) is not int or abs(time.time() * 1000 - sent) > wire.REQUEST_MAX_AGE_MS:
            return  # stale: a captured announcement replayed later changes nothing
        revision = self._known_part(parse_revision(body.get("revision", "")), branch)
        now = time.monotonic()
        self._last_heard = now
        self.own_elsewhere = max(self.own_elsewhere, revision.get(self._branch_id, 0))
        refused = body.get("refused")
        keys = refused.get(self._branch_id) if isinstance(refused, dict) else None
        if isinstance(keys, list) and self._key.public in keys:
            self.refused_by[branch] = now
            if len(self.refused_by) > MAX_PEERS:
                del self.refused_by[min(self.refused_by, key=self.refused_by.__getitem__)]
            self.on_refused(branch)
        else:
            self.refused_by.pop(branch, None)  # it no longer refuses this node's key
        if body.get("hello") is True:
            self.answer_hello()
        with self._lock:
            peer = self.peers.get(branch)
            new = peer is None
            if peer is None:
                if len(self.peers) >= MAX_PEERS:
                    stalest = min(self.peers, key=lambda b: self.peers[b].seen)
                    del self.peers[stalest]
                peer = self.peers[branch] = Peer(revision, now)
            elif sent <= peer.sent_ms:
                return  # older than one already heard from it
            peer.revision, peer.seen, peer.sent_ms = revision, now, sent
            digest = body.get("digest")
            peer.digest = digest if isinstance(digest, str) and len(digest) == 64 else None
            peer.wall = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if new:
            # A node we have not heard from: tell it where we are soon (at most once a
            # second, so a flood of invented peers gets no flood of announcements).
            self.answer_hello()
        self._maybe_request(now)

    def _known_part(self, revision: dict[str, int], sender: str) -> dict[str, int]:
        """The announced revision's entries of origins this node knows, the sender's
        own, and at most MAX_UNKNOWN_ENTRIES others."""
        if len(revision) <= MAX_UNKNOWN_ENTRIES:
            return revision
        have = self._store.version_vector
        out: dict[str, int] = {}
        unknown = 0
        for origin, counter in revision.items():
            if origin in have or origin == sender or origin == self._branch_id:
                out[origin] = counter
            elif unknown < MAX_UNKNOWN_ENTRIES:
                out[origin] = counter
                unknown += 1
        return out

    def refusing(self) -> list[str]:
        """Peers that announced within REFUSAL_TTL_S that they refuse this node's key."""
        now = time.monotonic()
        return [b for b, when in self.refused_by.items() if now - when <= REFUSAL_TTL_S]

    def heard_since(self, moment: float) -> bool:
        """Whether a peer's announcement was processed after ``moment`` (monotonic)."""
        return self._last_heard > moment

    def heard_from(self, branch: str, moment: float) -> bool:
        """Whether an announcement of ``branch`` was processed after ``moment``."""
        with self._lock:
            peer = self.peers.get(branch)
            return peer is not None and peer.seen > moment

    def answer_hello(self) -> None:
        """Announce now for a node that just connected, or at the next tick past
        HELLO_ANSWER_BURST answers in a row (one announcement answers every hello
        before it)."""
        if self._hello_token():
            self.announce()
        else:
            self._hello_owed = True

    def _hello_token(self) -> bool:
        """Take one of the HELLO_ANSWER_BURST answers, which come back at one a second."""
        with self._lock:
            now = time.monotonic()
            tokens = min(HELLO_ANSWER_BURST, self._hello_tokens + now - self._hello_tokens_at)
            self._hello_tokens_at = now
            if tokens < 1:
                self._hello_tokens = tokens
                return False
            self._hello_tokens = tokens - 1
            return True

    def lag(self, peer: Peer, have: dict[str, int]) -> int:
        return sum(max(0, c - have.get(o, 0)) for o, c in peer.revision.items())

    def _maybe_request(self, now: float) -> None:
        """Ask a peer for what we lack once waiting no longer looks like it helps.

        A peer's announcement often shows changesets still in flight to us, so a
        request waits until what the peer had ``GRACE_S`` ago is still missing and,
        besides, either nothing has been applied for a while (no backlog is streaming
        in) or changesets wait as pending (a gap the broker will not fill). An empty
        node asks at once.
        """
        have = self._store.version_vector
        own_behind = self.own_elsewhere > have.get(self._branch_id, 0)
        revision = format_revision(have)
        if revision != self._last_revision:
            self._last_revision, self._last_change = revision, now
        stalled = now - self._last_change >= GRACE_S / 2 or self._store.pending_count > 0
        if self._store.pending_count == 0:
            self._pending_since = None
        elif self._pending_since is None:
            self._pending_since = now
        gap = self._pending_since is not None and now - self._pending_since >= GRACE_S
        best: tuple[tuple[bool, int, int, int], int, str] | None = None
        with self._lock:
            for branch, peer in self.peers.items():
                if dominates(have, peer.revision):
                    peer.behind_since = None
                    continue
                if peer.behind_since is None or dominates(have, peer.behind_snapshot):
                    peer.behind_since, peer.behind_snapshot = now, dict(peer.revision)
                waited = now - peer.behind_since
                # Behind for long even while other traffic flows: ask anyway.
                # A peer holding more of this node's own history than it has is asked at
                # once: local writes wait for it.
                behind_on_own = own_behind and peer.revision.get(self._branch_id, 0) > have.get(
                    self._branch_id, 0
                )
                if (
                    (waited >= GRACE_S and stalled)
                    or waited >= MAX_WAIT_S
                    or not have
                    or behind_on_own
                ):
                    lag = self.lag(peer, have)
                    # First the origin of what is missing, if its key is known (a forged
                    # peer cannot be that); then peers that answered before, then the
                    # fewest unanswered requests, then the most to give. Invented peers
                    # that announce much and answer nothing thus go to the back.
                    is_origin = peer.revision.get(branch, 0) > have.get(branch, 0)
                    score = (
                        is_origin and self._keyring.known(branch),
                        min(peer.answered, 3),
                        -peer.timeouts,
                        lag,
                    )
                    if best is None or score > best[0]:
                        best = (score, lag, branch)
            candidate = None if best is None else (0, best[1], best[2])
            if candidate is None and gap and self.request is None:
                # Changesets wait for a predecessor the broker lost, and no peer's
                # announcement shows it yet: ask a node that must have it, the origin
                # of a waiting changeset, if it is a peer that announced itself (an
                # invented origin must not make this node ask nobody in a loop).
                origins = [
                    o
                    for o in self._store.pending_origins()
                    if o != self._branch_id and o in self.peers
                ]
                if origins:
                    origin = min(origins, key=lambda o: self.peers[o].timeouts)
                    candidate = (self.peers[origin].timeouts, self._store.pending_count, origin)
            if candidate is None or self.request is not None:
                return
            _, lag, branch = candidate
            self.request = Request(branch, uuid.uuid4().hex, now, lag)
            request_id = self.request.request_id
        log.info("asking %s for ~%d changesets this node lacks", branch, lag)
        body = {
            "type": wire.REQUEST,
            "branch": self._branch_id,
            "since": revision,
            "request_id": request_id,
            "time_ms": int(time.time() * 1000),
        }
        self._stats.catchup_requests_sent += 1
        self._send(
            wire.node_queue(self._channel, branch),
            wire.encode(sign(body, self._key)),
            {wire.CLIENTID: self._branch_id, wire.TYPE: wire.REQUEST},
        )

    def on_part(self, headers: dict[str, str]) -> None:
        """A signed part of a catch-up answer was kept (apply worker thread): the
        answer is streaming. On a broker with small frames (coilmq: 4 KiB) one large
        changeset comes in thousands of parts, for longer than REQUEST_TIMEOUT_S; asked
        again meanwhile, peers would send it again and again at once."""
        with self._lock:
            req = self.request
            if req is not None and headers.get(wire.REQUEST_ID) == req.request_id:
                req.last_progress = time.monotonic()

    def on_catchup(self, headers: dict[str, str], applied: int) -> None:
        """A catch-up batch was applied (apply worker thread): acknowledge it to its
        answerer, which sends more only then."""
        self._stats.catchup_changesets_received += applied
        request_id, batch = headers.get(wire.REQUEST_ID), headers.get(wire.BATCH, "")
        with self._lock:
            req = self.request
            # Only batches of this node's own current request count, and only those
            # that brought verified changesets: headers are not signed, and anyone can
            # send an empty "answer" in any peer's name.
            if req is None or request_id != req.request_id:
                return
            peer = req.peer
            if applied:
                req.received += applied
                req.last_progress = time.monotonic()
                answering = self.peers.get(peer)
                if answering is not None:
                    answering.standing.moved(req.last_progress)
            last = headers.get(wire.LAST) == "true"
            if last:
                took = time.monotonic() - req.started
                log.info(
                    "catch-up from %s done: %d changesets in %.1f s (%.0f/s)",
                    req.peer,
                    req.received,
                    took,
                    req.received / max(took, 1e-3),
                )
                self.request = None
                answered = self.peers.get(req.peer)
                if answered is not None:
                    # An answer that brought nothing counts as unanswered: a peer that
                    # announces what it does not give is not asked first again.
                    answered.timeouts = 0 if req.received else answered.timeouts + 1
                    answered.answered += 1 if req.received else 0
                for known in self.peers.values():
                    known.behind_since = None
        if batch.isascii() and batch.isdigit() and len(batch) <= 9 and not last:
            ack = {
                "type": wire.ACK,
                "branch": self._branch_id,
                "request_id": request_id,
                "batch": int(batch),
            }
            self._send(
                wire.node_queue(self._channel, peer),
                wire.encode(sign(ack, self._key)),
                {wire.CLIENTID: self._branch_id, wire.TYPE: wire.ACK},
            )

    # -- answering -----------------------------------------------------------------

    def on_request(self, body: dict[str, Any]) -> None:
        """Answer on a thread of its own: the answer may be the whole history."""
        asker = body.get("branch")
        if not isinstance(asker, str) or asker == self._branch_id:
            return
        since = parse_revision(body.get("since", ""))
        request_id = str(body.get("request_id", ""))
        with self._lock:
            if asker in self._answering or len(self._answering) >= MAX_ANSWERS:
                return
            answer = self._answering[asker] = Answer(request_id)
        threading.Thread(
            target=self._answer,
            args=(asker, since, answer),
            name=f"vesper-answer-{asker}",
            daemon=True,
        ).start()

    def on_ack(self, body: dict[str, Any]) -> None:
        """The asker applied a batch of our answer (apply worker thread)."""
        with self._lock:
            answer = self._answering.get(str(body.get("branch")))
        batch = body.get("batch")
        if answer is None or body.get("request_id") != answer.request_id or type(batch) is not int:
            return
        with self._lock:
            asker = self.peers.get(str(body.get("branch")))
            if asker is not None and batch > answer.acked:
                asker.standing.moved(time.monotonic())
        with answer.wake:
            if batch > answer.acked:
                answer.acked = batch
                for number in [n for n in answer.through if n <= batch]:
                    answer.applied = max(answer.applied, answer.through.pop(number))
            answer.wake.notify_all()

    def _answer(self, asker: str, since: dict[str, int], answer: Answer) -> None:
        destination = wire.node_queue(self._channel, asker)
        headers = {
            wire.CLIENTID: self._branch_id,
            wire.TYPE: wire.CATCHUP,
            wire.REQUEST_ID: answer.request_id,
            "persistent": "true",
        }
        numbered = 0
        limit = FIRST_BATCH_BYTES
        started = last_log = time.monotonic()
        expected = sum(max(0, c - since.get(o, 0)) for o, c in self._store.version_vector.items())
        answer.expected = expected

        # This node's own changesets are mostly stored unsigned (the sender signs the
        # last of each message it publishes); the last of ours in each batch is signed
        # when the batch goes out, which covers the others.
        own_last: list[Any] = []

        def send(batch: list[bytes], last: bool) -> bool:
            nonlocal numbered, limit
            if own_last:
                index, body = own_last
                batch[index] = orjson.dumps(sign(body, self._key))
                own_last.clear()
            with answer.wake:
                if not answer.wake.wait_for(
                    lambda: numbered - answer.acked < ANSWER_WINDOW, ACK_TIMEOUT_S
                ):
                    return False
            numbered += 1
            with answer.wake:
                answer.through[numbered] = sent
            extra = {wire.BATCH: str(numbered), **({wire.LAST: "true"} if last else {})}
            self._send(destination, b"[" + b",".join(batch) + b"]", {**headers, **extra})
            limit = min(limit * 2, ANSWER_BATCH_BYTES)
            return True

        try:
            batch: list[bytes] = []
            size = sent = 0
            # Origins whose last changeset in the batch carries no signature: a receiver
            # can verify it only through a later signed one of its origin, so the batch
            # is not cut there (up to a bound).
            open_origins: set[str] = set()
            for changeset in self._store.changesets(since=since):
                encoded = orjson.dumps(changeset)
                full = len(batch) >= ANSWER_BATCH or size + len(encoded) > limit
                if full and open_origins and size + len(encoded) <= limit * OPEN_CUT_FACTOR:
                    full = False
                if batch and full:
                    if not send(batch, last=False):
                        log.warning(
                            "%s acknowledged nothing for %.0f s: its catch-up answer stops "
                            "after %d changesets",
                            asker,
                            ACK_TIMEOUT_S,
                            sent - len(batch),
                        )
                        return
                    batch, size = [], 0
                    open_origins.clear()
                if changeset["origin"] == self._branch_id:
                    own_last[:] = [] if "sig" in changeset else [len(batch), changeset]
                elif "sig" in changeset:
                    open_origins.discard(changeset["origin"])
                else:
                    open_origins.add(changeset["origin"])
                batch.append(encoded)
                size += len(encoded)
                sent += 1
                answer.sent = sent
                if sent % 100 == 0 and time.monotonic() - last_log >= PROGRESS_LOG_S:
                    last_log = time.monotonic()
                    log_progress(
                        f"answering {asker}'s catch-up", sent, expected, last_log - started
                    )
            if send(batch, last=True):
                self._stats.catchup_requests_answered += 1
                log.info("answered %s's catch-up request with %d changesets", asker, sent)
        except Exception:
            log.exception("answering %s's catch-up request failed", asker)
        finally:
            with self._lock:
                self._answering.pop(asker, None)

    def status(self) -> dict[str, Any]:
        have = self._store.version_vector
        now = time.monotonic()
        wall_ms = time.time() * 1000
        budget = [AGE_READS_PER_STATUS]
        ours = self._store.revision_and_digest()
        with self._lock:
            self._follow_peers(now, have)
            peers = {
                b: self._peer_status(p, have, ours, now, wall_ms, budget)
                for b, p in sorted(self.peers.items())
            }
            answering = {
                asker: {
                    "applied": a.applied,
                    "sent": a.sent,
                    "expected": a.expected,
                    "seconds": round(now - a.started, 1),
                }
                for asker, a in sorted(self._answering.items())
            }
            req = self.request
            catchup = (
                None
                if req is None
                else {
                    "peer": req.peer,
                    "received": req.received,
                    "expected": req.expected,
                    "seconds": round(now - req.started, 1),
                }
            )
        return {"peers": peers, "catchup": catchup, "answering": answering}

    def _peer_status(
        self,
        peer: Peer,
        have: dict[str, int],
        ours: tuple[str, str],
        now: float,
        wall_ms: float,
        budget: list[int],
    ) -> dict[str, Any]:
        """One peer's entry in the status (docs/http-api.md#get-apistatus); ``ours`` is
        this node's revision and digest."""
        standing = peer.standing
        behind_seconds = None
        if standing.behind_us:
            oldest = self._times.oldest_lacking_ms(have, peer.revision, budget)
            if oldest is not None:
                behind_seconds = round(max(0.0, wall_ms - oldest) / 1000, 1)
        revision = format_revision(peer.revision)
        our_revision, digest = ours
        return {
            "revision": revision,
            "digest": peer.digest,
            # The same changesets must give the same objects: a different digest at the
            # same revision means the stores diverged (a bug or a damaged store).
            "diverged": revision == our_revision and peer.digest not in (None, digest),
            "state": standing.state(now, now - peer.seen, self._peer_gone_after_s),
            "behind_us": standing.behind_us,
            "behind_us_s": behind_seconds,
            "ahead_of_us": standing.ahead_of_us,
            "ahead_of_us_s": standing.ahead_seconds(now),
            "lag": standing.ahead_of_us,
            "last_heard": peer.wall,
        }


def log_progress(what: str, done: int, expected: int, elapsed_s: float) -> None:
    """One progress line: counts, rate and, while the estimate holds, the time left."""
    rate = done / max(elapsed_s, 1e-3)
    left = max(0, expected - done)
    eta = f", about {left / rate:.0f} s left" if rate > 0 and left else ""
    log.info(
        "%s: %d of ~%d changesets in %.0f s (%.0f/s%s)",
        what,
        done,
        expected,
        elapsed_s,
        rate,
        eta,
        extra={"done": done, "expected": expected, "rate": round(rate, 1)},
    )
