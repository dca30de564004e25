"""Applies what the broker delivers, then acknowledges it.

stomp.py hands frames over on its receiver thread; they queue here and one worker
thread applies them in batches, many changesets per SQLite transaction (group commit),
and only then acknowledges the messages: an acknowledged changeset is applied or stored
as pending, durably. Nothing reaches the store or the anti-entropy before the verifier
has checked its signature and its signer's trust (for the changesets of a batch, all
together, so chains that run across messages cost one check). A message that is refused is counted,
logged, kept in the quarantine and acknowledged, so it can never block the subscription.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from vesper.errors import InvalidChangeset, StoreDamaged, VesperError
from vesper.history.changeset import Changeset, parse_changeset
from vesper.history.revision import parse_revision
from vesper.replication import wire
from vesper.replication.catchup import AntiEntropy
from vesper.replication.loglimit import LogLimit
from vesper.replication.parts import PART, PartRefused, PartStore
from vesper.replication.quarantine import Quarantine, Rejected
from vesper.replication.stats import Stats
from vesper.replication.transport import Delivery, Link
from vesper.store import Store
from vesper.store.store import ApplyResult
from vesper.trust.verifier import Verifier

log = logging.getLogger(__name__)

QUEUE_MAX = 20_000
BATCH_MESSAGES = 2_000
BATCH_BYTES = 4 * 1024 * 1024
"""A batch (one SQLite transaction) ends at this many messages or body bytes; catch-up
messages carry up to 500 changesets each, so bytes bound its size too."""
RETRY_S = 1.0
ANNOUNCE_BACKLOG = 1_000
"""Announcements waiting at most; past it the oldest are dropped (every peer announces
again within seconds, and a flood of invented ones must not delay changesets)."""
ANNOUNCE_PER_ROUND = 200
"""Announcements handled between two batches of changesets and requests."""
CONFLICT_CHECKS_PER_BATCH = 200
"""Objects looked up for new conflicts per batch, at most (only objects written by a
changeset concurrent with what this node had are looked up at all)."""
CONFLICT_LINES = 10
CONFLICT_WINDOW_S = 10.0
"""At most CONFLICT_LINES conflict lines per CONFLICT_WINDOW_S, then one with the
count of those not logged."""
PROGRESS_LOG_S = 5.0
PROGRESS_BACKLOG = 100
"""Messages waiting that make a sustained apply (a returning node's backlog, a flood)
worth progress lines; catch-up answers are flow-controlled and log their own."""
_WAKE = Delivery({}, b"", -1)


class ApplyWorker:
    def __init__(
        self,
        store: Store,
        branch_id: str,
        stats: Stats,
        anti_entropy: dict[str, AntiEntropy],
        routes: dict[str, tuple[str, str]],
        ack: bool,
        current_link: Callable[[], Link | None],
        verifier: Verifier,
        quarantine: Quarantine,
        parts: PartStore,
        relay: Callable[[list[Changeset], str | None], None] | None = None,
    ) -> None:
        self._store = store
        self._branch_id = branch_id
        self._stats = stats
        self._anti_entropy = anti_entropy
        self._first_channel = next(iter(anti_entropy))
        self._routes = routes
        self._ack = ack
        self._current_link = current_link
        self._relay = relay
        self._verifier = verifier
        self._own_key = verifier.keyring.own_key
        self.quarantine = quarantine
        self.parts = parts
        self._queue: queue.Queue[Delivery | None] = queue.Queue(QUEUE_MAX)
        # Announcements wait apart and yield to everything else: they need no
        # acknowledgement, so they may be handled out of order, or dropped.
        self._announcements: deque[Delivery] = deque(maxlen=ANNOUNCE_BACKLOG)
        self._announce_subscriptions = {
            sub for sub, (kind, _) in routes.items() if kind == wire.ANNOUNCE
        }
        self._wake_pending = False
        self.announcements_dropped = 0
        self.received = 0
        """Deliveries handed over since start (counted by the receiver thread)."""
        self._handled = 0
        """Of those, the ones processed (counted by the worker thread)."""
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._rejected: list[Rejected] = []
        self._log_limit = LogLimit()
        self._conflict_log = LogLimit(
            CONFLICT_LINES,
            CONFLICT_WINDOW_S,
            lambda n, _, s: (
                f"{n} more conflicts in the last {s:.0f} s not logged; GET /api/conflicts "
                "lists them"
            ),
            log,
            logging.INFO,
        )
        self.conflicts = 0
        """Conflicts detected since start: concurrent writes of different values to one
        property (or to an object's existence) that this node resolved."""
        self.busy_since: float | None = None
        """Monotonic time the batch being applied was taken (None: idle)."""
        self._sustained: list[float] | None = None
        """[started, applied, last logged] of a sustained apply, for progress lines."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vesper-apply", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def deliver(self, delivery: Delivery) -> None:
        """Receiver thread: hand over. Blocks only when the worker is far behind,
        which pushes back on the broker through TCP rather than growing memory."""
        self.received += 1
        if delivery.headers.get("subscription") in self._announce_subscriptions:
            if len(self._announcements) == ANNOUNCE_BACKLOG:
                self.announcements_dropped += 1
            self._announcements.append(delivery)
            if not self._wake_pending:
                self._wake_pending = True
                self._queue.put(_WAKE)
            return
        self._queue.put(delivery)

    def _run(self) -> None:
        carried: Delivery | None = None
        while not self._stopping:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is None:
                return
            batch = [] if first is _WAKE else [first]
            size = len(first.body)
            while len(batch) < BATCH_MESSAGES and size < BATCH_BYTES:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stopping = True
                    break
                if item is _WAKE:
                    continue
                if batch and size + len(item.body) > BATCH_BYTES:
                    # It starts the next batch: two large messages (bulk changesets in a
                    # catch-up) parsed at once would double the memory a batch takes.
                    carried = item
                    break
                batch.append(item)
                size += len(item.body)
            if first is _WAKE or self._announcements:
                self._wake_pending = False
                for _ in range(min(ANNOUNCE_PER_ROUND, len(self._announcements))):
                    batch.append(self._announcements.popleft())
                if self._announcements and not self._wake_pending:
                    self._wake_pending = True
                    self._queue.put(_WAKE)
            if not batch:
                continue
            self.busy_since = time.monotonic()
            try:
                self._process(batch)
            except StoreDamaged:
                # Nothing may be acknowledged from a damaged store: the replication
                # service halts and closes the link, and the broker keeps the messages.
                link = self._current_link()
                if link is not None:
                    link.close()
            except Exception:
                # Nothing of this batch was acknowledged, and nothing after it may be:
                # a later cumulative ACK would cover these messages. Drop the connection
                # so the broker redelivers everything unacknowledged.
                log.exception(
                    "apply worker failed on a batch of %d messages; reconnecting for redelivery",
                    len(batch),
                )
                link = self._current_link()
                if link is not None and link.generation == batch[-1].generation:
                    link.close()
            finally:
                self.busy_since = None
                self._handled += len(batch)

    def _process(self, batch: list[Delivery]) -> None:
        failure = self._store.failure
        if failure is not None:
            raise StoreDamaged(failure)
        changesets: list[Changeset] = []
        sources: dict[str, str] = {}
        carriers: dict[str, Delivery] = {}
        catchups: list[tuple[AntiEntropy, dict[str, str], int]] = []
        reassembled: list[str] = []
        # Changesets are verified once the whole batch is parsed: chains that run
        # across its messages then cost one signature check instead of one each.
        carrying: list[tuple[Delivery, str, str, AntiEntropy]] = []
        parsed: list[list[Changeset]] = []
        for delivery in batch:
            self._stats.messages_received += 1
            self._stats.last_message_received = (
                datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
            if PART in delivery.headers:
                try:
                    whole = self.parts.add(delivery)
                except PartRefused as exc:
                    self._reject(delivery, exc.reason, exc.detail)
                    continue
                if whole is None:
                    if delivery.headers.get(wire.TYPE) == wire.CATCHUP:
                        route = self._routes.get(delivery.headers.get("subscription", ""))
                        if route is not None and route[0] == wire.REQUEST:
                            self._anti_entropy[route[1]].on_part(delivery.headers)
                    continue  # kept; acknowledged with the batch
                reassembled.append(whole.set_id)
                delivery = whole.delivery
            route = self._routes.get(delivery.headers.get("subscription", ""))
            kind, channel = route if route else (wire.CHANGESETS, self._first_channel)
            if kind == wire.REQUEST:
                # The node's queue carries requests and catch-up answers; the topic only
                # changesets (whatever a header claims) and the sync topic announcements.
                header = delivery.headers.get(wire.TYPE)
                kind = header if header in (wire.CATCHUP, wire.ACK) else wire.REQUEST
            anti_entropy = self._anti_entropy[channel]
            try:
                if kind in (wire.ANNOUNCE, wire.REQUEST, wire.ACK):
                    body = wire.decode_control(kind, delivery.body)
                    problem = self._verifier.control(body)
                    if problem is not None:
                        self._reject(delivery, *problem)
                        if kind == wire.ANNOUNCE and body.get("hello") is True:
                            # Answer a refused hello too: the announcement says whose
                            # key is refused, so a node started with a taken branch id
                            # learns it at once.
                            anti_entropy.answer_hello()
                    elif kind == wire.ANNOUNCE:
                        anti_entropy.on_announce(body)
                    elif kind == wire.ACK:
                        anti_entropy.on_ack(body)
                    else:
                        anti_entropy.on_request(body)
                else:
                    parsed.append(self._changesets(delivery, check_origin=kind != wire.CATCHUP))
                    carrying.append((delivery, kind, channel, anti_entropy))
            except Exception as exc:
                self._reject(delivery, "malformed", f"{type(exc).__name__}: {exc}")
        verified = self._verifier.batch(parsed) if parsed else []
        for (delivery, kind, channel, anti_entropy), (good, refused) in zip(
            carrying, verified, strict=True
        ):
            for refusal in refused:
                self._reject(delivery, refusal.reason, refusal.detail)
            changesets.extend(good)
            sources.update((cs.id, channel) for cs in good)
            carriers.update((cs.id, delivery) for cs in good)
            if kind == wire.CATCHUP:
                catchups.append((anti_entropy, delivery.headers, len(good)))
        before = self._store.version_vector if changesets else {}
        result = self._apply(changesets) if changesets else None
        # Right after the commit, so the answerer streams on meanwhile and the counters
        # trail what readers of the store already see as little as possible.
        for anti_entropy, headers, n in catchups:
            try:
                anti_entropy.on_catchup(headers, n)
            except Exception:
                log.exception(
                    "catch-up bookkeeping failed for a batch from %s", headers.get(wire.CLIENTID)
                )
        if result is not None:
            self._report(result, carriers)
            self._note_conflicts(result.applied, changesets, before)
            self._note_progress(len(result.applied))
            if self._relay is not None and (result.applied or result.adopted):
                # Signatures taken over for held copies travel on too, so the nodes
                # behind a hub get them as well.
                self._relay_applied(result.applied + result.adopted, changesets, sources)
        # Kept before acknowledging: a refused message is acknowledged only once its
        # quarantine entry is durable.
        rejected, self._rejected = self._rejected, []
        self.quarantine.add(rejected)
        # Handled: a redelivered last part would start a new set, and what it brings
        # again is dropped as a duplicate.
        self.parts.discard(reassembled)
        self._acknowledge(batch)

    def _report(self, result: ApplyResult, carriers: dict[str, Delivery]) -> None:
        for fork in result.forks:
            cs = fork.changeset
            self._stats.forks += 1
            log.error("%s; not applied, quarantined", fork.describe())
            delivery = carriers.get(cs.id)
            self._rejected.append(
                Rejected(
                    fork.reason,
                    fork.describe(),
                    dict(delivery.headers) if delivery else {"released": "pending"},
                    cs.encode(),
                )
            )
        by_message: dict[int, list[Changeset]] = {}
        for cs in result.dropped:
            by_message.setdefault(id(carriers.get(cs.id)), []).append(cs)
        for group in by_message.values():
            delivery = carriers.get(group[0].id)
            self._rejected.append(
                Rejected(
                    "pending_full",
                    f"{len(group)} changesets of {group[0].origin} not kept (first "
                    f"{group[0].id}): the pending set is full for that origin; catch-up "
                    "fetches them again once their predecessors are here",
                    dict(delivery.headers) if delivery else {},
                    group[0].encode(),
                )
            )

    def _note_conflicts(
        self, applied: list[str], given: list[Changeset], before: dict[str, int]
    ) -> None:
        """Count and log the conflicts the changesets just applied brought.

        Only a changeset concurrent with what this node had applied before it (some
        origin's counter above its causal context) can conflict, so in the usual flow,
        one write after another, nothing is looked up; for the others, the objects
        they wrote are looked up (CONFLICT_CHECKS_PER_BATCH at most) for a conflict
        that names the changeset.
        """
        by_id = {cs.id: cs for cs in given}
        seen = dict(before)
        checks = CONFLICT_CHECKS_PER_BATCH
        for cs_id in applied:
            cs = by_id.get(cs_id)
            if cs is not None:
                origin, counter, base = cs.origin, cs.counter, cs.base
                objects = [c["id"] for c in cs.changes]
            else:  # released from pending: it arrived in an earlier batch
                body = self._store.changeset(cs_id)
                if body is None:
                    continue
                origin, _, number = cs_id.rpartition(".")
                counter, base = int(number), parse_revision(body.get("base_revision", ""))
                objects = [c.get("id") for c in body.get("changes", ())]
            concurrent = any(c > base.get(o, 0) for o, c in seen.items() if o != origin)
            seen[origin] = max(seen.get(origin, 0), counter)
            if not concurrent:
                continue
            for obj_id in dict.fromkeys(objects):
                if checks <= 0:
                    return
                checks -= 1
                for conflict in self._store.conflicts(obj_id):
                    sides = [conflict["winner"], *conflict["losers"]]
                    if any(side["changeset"] == cs_id for side in sides):
                        self._conflict(conflict)

    def _conflict(self, conflict: dict[str, Any]) -> None:
        self.conflicts += 1
        if not self._conflict_log.allow("conflict"):
            return
        prop = conflict["property"]
        winner = conflict["winner"]["changeset"]
        losers = [side["changeset"] for side in conflict["losers"]]
        log.info(
            "conflict on object %r %s: %s wins over %s (concurrent writes; GET "
            "/api/conflicts?id=... shows the values)",
            conflict["id"],
            "existence" if prop is None else f"property {prop!r}",
            winner,
            ", ".join(losers),
            extra={"object": conflict["id"], "property": prop, "winner": winner, "losers": losers},
        )

    def _note_progress(self, applied: int) -> None:
        """Progress lines while a large backlog is being applied."""
        now = time.monotonic()
        waiting = self.backlog
        run = self._sustained
        if run is None:
            if waiting < PROGRESS_BACKLOG:
                return
            run = self._sustained = [now, 0, now]
        run[1] += applied
        elapsed = now - run[0]
        if waiting == 0:
            if elapsed >= PROGRESS_LOG_S:
                log.info(
                    "applied %d received changesets in %.0f s (%.0f/s); nothing waiting",
                    run[1],
                    elapsed,
                    run[1] / elapsed,
                    extra={"done": int(run[1])},
                )
            self._sustained = None
        elif now - run[2] >= PROGRESS_LOG_S:
            run[2] = now
            log.info(
                "applying received changesets: %d in %.0f s (%.0f/s), %d messages waiting",
                run[1],
                elapsed,
                run[1] / max(elapsed, 1e-3),
                waiting,
                extra={"done": int(run[1]), "waiting": waiting},
            )

    def flush_logs(self) -> None:
        """Write what the log limits held back once their window ended (service tick)."""
        self._log_limit.flush()
        self._conflict_log.flush()

    def stalled_s(self) -> float:
        """How long the batch being applied has taken (0 when idle); infinite when the
        worker thread died while it should run."""
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._stopping:
            return float("inf")
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _relay_applied(
        self, applied: list[str], changesets: list[Changeset], sources: dict[str, str]
    ) -> None:
        assert self._relay is not None
        given = {cs.id: cs for cs in changesets}
        by_source: dict[str | None, list[Changeset]] = {}
        for cs_id in applied:
            cs = given.get(cs_id)
            if cs is None:  # released from pending: it came earlier, by any channel
                body = self._store.changeset(cs_id)
                if body is None:
                    continue
                cs = parse_changeset(body)
            by_source.setdefault(sources.get(cs_id), []).append(cs)
        for source, group in list(by_source.items()):
            by_source[source] = _covered(group, [given.get(i) for i in applied])
        for source, group in by_source.items():
            try:
                self._relay(group, source)
            except Exception:
                log.warning("relaying %d changesets failed", len(group), exc_info=True)

    def _changesets(self, delivery: Delivery, check_origin: bool) -> list[Changeset]:
        """The changesets of a message, parsed. This node's own come back from the topic
        and are skipped, except: in a catch-up answer, its own that it lacks (a store
        restored from an older copy, or in memory, re-imports what it had published);
        and any signed under another key, which go on to the verifier to be refused
        and reported (another node with this branch id, or an impostor)."""
        sender = delivery.headers.get(wire.CLIENTID)
        own_counter = self._store.own_head()[0]
        out = []
        for raw in wire.decode_changesets(delivery.body):
            origin = raw.get("origin") if isinstance(raw, dict) else None
            if origin == self._branch_id:
                # Unsigned ones come back too: a message's signature is on its last.
                if raw.get("key") in (None, self._own_key) and (
                    check_origin or not _counter_above(raw.get("id"), own_counter)
                ):
                    continue
                out.append(parse_changeset(raw))
                continue
            if check_origin and origin != sender:
                raise InvalidChangeset(
                    f"origin {origin!r} does not match the clientid header {sender!r}"
                )
            out.append(parse_changeset(raw, self._branch_id))
        return out

    def _apply(self, changesets: list[Changeset]) -> ApplyResult:
        self._stats.changesets_received += len(changesets)
        while True:
            try:
                return self._store.apply_parsed(changesets)
            except VesperError as exc:
                if not exc.retryable or self._stopping:
                    raise
                # Disk full, database locked: keep the messages unacknowledged and try
                # again rather than drop what the broker entrusted to us.
                log.error("applying %d changesets failed (%s); retrying", len(changesets), exc)
                time.sleep(RETRY_S)

    def _reject(self, delivery: Delivery, reason: str, detail: str) -> None:
        self._stats.receive_errors += 1
        self._rejected.append(Rejected(reason, detail, dict(delivery.headers), delivery.body))
        if self._log_limit.allow(reason):
            log.warning(
                "rejected message from %s (%s): %s",
                delivery.headers.get(wire.CLIENTID),
                reason,
                detail,
            )

    def _acknowledge(self, batch: list[Delivery]) -> None:
        if not self._ack:
            return
        link = self._current_link()
        if link is None:
            return
        # Subscriptions use ``client`` acks, which are cumulative: acknowledging the last
        # message of each subscription in the batch acknowledges all before it, one
        # ACK frame instead of one per message. Messages of a connection that is gone
        # are left to the broker, which redelivers them.
        last: dict[str, Delivery] = {}
        for delivery in batch:
            if delivery.generation == link.generation:
                last[delivery.headers.get("subscription", "")] = delivery
        for delivery in last.values():
            try:
                link.ack(delivery.headers)
            except Exception:
                return

    def handled_through(self, mark: int) -> bool:
        """Whether the first ``mark`` deliveries have all been processed (or, being
        announcements, dropped for newer ones)."""
        return self._handled + self.announcements_dropped >= mark

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + len(self._announcements)


def _counter_above(changeset_id: object, counter: int) -> bool:
    _, _, text = str(changeset_id).rpartition(".")
    return text.isdigit() and int(text) > counter


def _covered(group: list[Changeset], applied: list[Changeset | None]) -> list[Changeset]:
    """``group`` with, for each origin, the applied changesets up to the next signed one.

    A changeset covered by a later one's signature (the verifier keeps it without its
    own) is valid only in a message that also carries its chain up to that signature.
    The deliveries of one batch may come by several channels, so the run of one origin
    can be split between the groups relayed to different channels: each group gets
    back the rest of its runs, which the channels that had them drop as duplicates.
    """
    runs: dict[str, list[Changeset]] = {}
    place: dict[str, int] = {}
    """Each applied changeset's index in its origin's run."""
    for cs in applied:
        if cs is not None:
            run = runs.setdefault(cs.origin, [])
            place[cs.id] = len(run)
            run.append(cs)
    out: list[Changeset] = []
    by_origin: dict[str, list[Changeset]] = {}
    for cs in group:
        by_origin.setdefault(cs.origin, []).append(cs)
    for origin, mine in by_origin.items():
        start = place.get(mine[0].id)
        if start is None:
            out.extend(mine)  # released from pending: not part of this batch's runs
            continue
        run = runs[origin]
        end = max(place.get(cs.id, start) for cs in mine)
        while end + 1 < len(run) and not run[end].signed:
            end += 1
        out.extend(run[start : end + 1])
    return out
