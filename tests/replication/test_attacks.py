"""Attacks on replication, end to end: real ``vesper serve`` nodes on a broker, and an
attacker who is nothing but another client of that broker (stomp.py on loopback).

Whatever the attacker sends, every test then checks the same things on the honest nodes:
nothing the attacker wrote is there, every write an honest node acknowledged is on
every honest node, they all report the same digest, a new write still replicates within
seconds, and the attack shows where an operator looks (``/api/quarantine``, the
status, ``/metrics``). The same attacks done in-process on the in-memory transport are
in ``test_units.py``; these go through the real broker, the real STOMP client and the
HTTP API.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import stomp

from tests.api.conftest import NodeProcess, node_command
from tests.replication.harness import new_channel, wait_for
from vesper.broker.process import BrokerProcess
from vesper.history.revision import format_revision, parse_revision
from vesper.replication import catchup, wire
from vesper.trust.keys import NodeKey
from vesper.trust.signing import content_hash, sign

REPLICATES_S = 10.0
"""'Within seconds': how long a new write may take to reach every honest node."""
REPORTED_S = 20.0
"""How long a node may take to read and report what the attacker sent."""
EVIL = [{"id": "evil", "op": "create", "exists": True, "set": {"owner": "mallory"}}]


# -- the attacker ---------------------------------------------------------------------


def now_ms() -> int:
    """The sender's clock: announcements and requests older than ten minutes are
    ignored, so an attacker must stamp them fresh."""
    return int(time.time() * 1000)


class Attacker(stomp.ConnectionListener):
    """A plain stomp.py client of the nodes' broker: sends anything anywhere, reads any
    queue."""

    def __init__(self, broker: tuple[str, int]) -> None:
        self._lock = threading.Lock()
        self.receipts: set[str] = set()
        self.errors: list[str] = []
        self.messages: dict[str, list[tuple[dict[str, str], bytes]]] = {}
        """Subscription id -> (headers, body) of each MESSAGE, in arrival order."""
        # RabbitMQ wants the vhost in CONNECT's host header, as the nodes send it.
        self.conn = stomp.Connection12([broker], heartbeats=(0, 0), auto_decode=False, vhost="/")
        self.conn.set_listener("attacker", self)
        self.conn.connect(wait=True)

    def on_receipt(self, frame: Any) -> None:
        with self._lock:
            self.receipts.add(frame.headers.get("receipt-id", ""))

    def on_error(self, frame: Any) -> None:
        with self._lock:
            self.errors.append(f"{frame.headers.get('message')}: {frame.body!r}"[:300])

    def on_message(self, frame: Any) -> None:
        with self._lock:
            sub = frame.headers.get("subscription", "")
            self.messages.setdefault(sub, []).append((dict(frame.headers), frame.body))

    def send(
        self, destination: str, body: bytes, headers: dict[str, str], wait: bool = True
    ) -> None:
        """One SEND; with ``wait``, returns once the broker's RECEIPT came (the broker
        handles a connection's frames in order: it also covers every SEND before)."""
        receipt = uuid.uuid4().hex
        self.conn.send(
            destination,
            body,
            content_type=wire.JSON,
            headers={**headers, **({"receipt": receipt} if wait else {})},
        )
        if wait:
            wait_for(
                lambda: receipt in self.receipts or self.errors,
                30,
                f"the broker's receipt for a SEND to {destination}",
            )
            assert not self.errors, self.errors

    def changesets(self, channel: str, bodies: list[dict[str, Any]], origin: str) -> None:
        """Publish changesets on the channel's topic, as their origin would."""
        body = orjson.dumps(bodies if len(bodies) > 1 else bodies[0])
        headers = {wire.CLIENTID: origin, "persistent": "true", wire.TYPE: wire.CHANGESETS}
        self.send(wire.topic(channel), body, headers)

    def announce(self, channel: str, body: dict[str, Any], wait: bool = True) -> None:
        headers = {wire.CLIENTID: str(body.get("branch")), wire.TYPE: wire.ANNOUNCE}
        self.send(wire.sync_topic(channel), orjson.dumps(body), headers, wait)

    def subscribe(self, destination: str) -> str:
        """Subscribe (client acks, never sent: nothing is consumed); returns the id."""
        sub = uuid.uuid4().hex
        self.conn.subscribe(destination, sub, ack="client")
        return sub

    def received(self, sub: str) -> list[tuple[dict[str, str], bytes]]:
        with self._lock:
            return list(self.messages.get(sub, ()))

    def close(self) -> None:
        if self.conn.is_connected():
            # The broker may drop the connection between the check and the DISCONNECT
            # (it closes one it sent an ERROR on): closed either way.
            with contextlib.suppress(stomp.exception.NotConnectedException):
                self.conn.disconnect()


@pytest.fixture
def attacker() -> Iterator[Callable[[tuple[str, int]], Attacker]]:
    made: list[Attacker] = []

    def make(broker: tuple[str, int]) -> Attacker:
        made.append(Attacker(broker))
        return made[-1]

    yield make
    for a in made:
        a.close()


def next_changeset(
    prev: dict[str, Any], changes: list[dict[str, Any]], counter: int | None = None
) -> dict[str, Any]:
    """An unsigned changeset that follows ``prev`` (a real one) in its origin's chain:
    the id, revision, base revision and ``prev`` hash the origin's next one would have."""
    origin = prev["origin"]
    n = counter or int(prev["id"].rpartition(".")[2]) + 1
    revision = parse_revision(prev["revision"])
    revision[origin] = n
    body = {k: v for k, v in prev.items() if k not in ("key", "sig")}
    body.update(
        id=f"{origin}.{n}",
        revision=format_revision(revision),
        base_revision=prev["revision"],
        prev=content_hash(prev),
        hlc=prev["hlc"] + 1,
        changes=changes,
    )
    return body


def write_key(path: Path) -> NodeKey:
    """A key file as ``vesper keygen`` writes it (mode 0600)."""
    key = NodeKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.pem())
    return key


# -- the honest nodes -----------------------------------------------------------------


class Net:
    """``vesper serve`` nodes on one new channel of one broker (the pattern of
    ``test_nodes.Cluster``), named so that two processes may claim one branch id."""

    def __init__(self, folder: Path, broker: tuple[str, int]) -> None:
        self.folder = folder
        self.broker = broker
        self.channel = new_channel()
        self.nodes: dict[str, NodeProcess] = {}
        self.branches: dict[str, str] = {}
        """Node name -> its branch id."""
        self.started: list[NodeProcess] = []
        self.acknowledged: dict[str, dict[str, Any]] = {}
        """Every write an honest node acknowledged: id -> the object as written."""

    def config(
        self, name: str, branch: str, work_dir: str, extra: str, replicate: bool = True
    ) -> Path:
        text = f"branch_id = {branch!r}\nsave_history = True\nwork_dir = {work_dir!r}\n"
        if replicate:
            text += (
                f"replication_hosts = [{self.broker!r}]\nreplication_channel = {self.channel!r}\n"
            )
        path = self.folder / f"{name}.conf"
        path.write_text(text + extra)
        return path

    def start(
        self,
        name: str,
        branch: str | None = None,
        *,
        work_dir: str = "data",
        extra: str = "",
        replicate: bool = True,
    ) -> NodeProcess:
        config = self.config(name, branch or name, work_dir, extra, replicate)
        log = self.folder / f"{name}-{len(self.started)}.log"
        node = NodeProcess(node_command(config), self.folder, log)
        self.started.append(node)
        node.start()
        self.nodes[name] = node
        self.branches[name] = branch or name
        if replicate:
            wait_for(
                lambda: self.status(name)["replication"]["connected"],
                30,
                f"{name} connected to the broker",
            )
        return node

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        node = self.nodes[name]
        code = node.stop(sig)
        if sig == signal.SIGTERM:
            assert code == 0, node.log()

    def kill_all(self) -> None:
        for node in self.started:
            node.kill()

    # -- HTTP ----------------------------------------------------------------------

    def get(self, name: str, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.nodes[name].url}{path}", params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name, "/api/status")

    def write(self, name: str, doc: dict[str, Any]) -> str:
        """Create one object on ``name``; it is an acknowledged write once this returns."""
        r = httpx.post(f"{self.nodes[name].url}/api/objects", json=doc, timeout=30)
        assert r.status_code == 201, r.text
        self.acknowledged[doc["id"]] = doc
        return r.json()["revision"]

    def objects(self, name: str) -> dict[str, dict[str, Any]]:
        return {o["id"]: o for o in self.get(name, "/api/objects")["results"]}

    def object(self, name: str, obj_id: str) -> dict[str, Any] | None:
        r = httpx.get(f"{self.nodes[name].url}/api/objects/{obj_id}", timeout=30)
        return r.json() if r.status_code == 200 else None

    def changesets(self, name: str) -> dict[str, dict[str, Any]]:
        return {cs["id"]: cs for cs in self.get(name, "/api/changesets")["changesets"]}

    def quarantine(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        params = {"limit": 10_000, **({"reason": reason} if reason else {})}
        return self.get(name, "/api/quarantine", **params)["quarantine"]

    def quarantined(self, name: str) -> dict[str, int]:
        return self.status(name)["replication"]["quarantined"]

    def metric(self, name: str, series: str) -> float:
        text = httpx.get(f"{self.nodes[name].url}/metrics", timeout=30).text
        match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    # -- checks --------------------------------------------------------------------

    def converged(self, *names: str) -> bool:
        states = [self.status(n) for n in names]
        return all(
            (s["revision"], s["digest"], s["pending"])
            == (states[0]["revision"], states[0]["digest"], 0)
            for s in states
        )

    def describe(self, *names: str) -> str:
        out = []
        for n in names:
            s = self.status(n)
            r = s["replication"]
            out.append(
                f"{n}: revision={s['revision']} pending={s['pending']} outbox={s['outbox']} "
                f"forks={r['forks']} quarantined={r['quarantined']} catchup={r['catchup']} "
                f"received={r['messages_received']} backlog={r['apply_backlog']}"
            )
        return "\n".join(out)

    def wait_converged(self, *names: str, timeout: float = 60) -> None:
        wait_for(
            lambda: self.converged(*names),
            timeout,
            lambda: "convergence:\n" + self.describe(*names),
        )

    def reported(self, name: str, reason: str, at_least: int = 1, detail: str = "") -> None:
        """The node refused ``at_least`` messages for ``reason``: in its status, its
        quarantine (with ``detail`` in an entry's explanation) and its metrics."""
        wait_for(
            lambda: self.quarantined(name).get(reason, 0) >= at_least,
            REPORTED_S,
            lambda: f"{name} to quarantine {at_least} x {reason}:\n{self.describe(name)}",
        )
        entries = self.quarantine(name, reason)
        assert len(entries) >= at_least and {e["reason"] for e in entries} == {reason}
        assert any(detail in e["detail"] for e in entries), [e["detail"] for e in entries]
        series = f'vesper_replication_quarantined_total{{reason="{reason}"}}'
        assert self.metric(name, series) >= at_least

    def check_honest(
        self, *names: str, forbidden: tuple[str, ...] = ("evil",), timeout: float = 60
    ) -> None:
        """After an attack: the honest nodes converge with every acknowledged write,
        nothing forbidden and no changeset of any other origin, no forks, and a new write
        reaches them all within seconds."""
        self.wait_converged(*names, timeout=timeout)
        branches = {self.branches[n] for n in names}
        for name in names:
            origins = set(parse_revision(self.status(name)["revision"]))
            assert origins <= branches, f"{name} applied changesets of {origins - branches}"
            have = self.objects(name)
            wrong = {i: have.get(i) for i, doc in self.acknowledged.items() if have.get(i) != doc}
            assert not wrong, f"{name}: acknowledged writes missing or changed: {wrong}"
            assert not set(forbidden) & set(have), f"{name} holds the attacker's objects"
            replication = self.status(name)["replication"]
            assert replication["forks"] == 0, f"{name}: {self.describe(name)}"
            assert self.metric(name, "vesper_replication_forks_total") == 0
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        start = time.monotonic()
        self.write(names[0], {"id": probe})
        wait_for(
            lambda: all(self.object(n, probe) for n in names),
            REPLICATES_S,
            lambda: f"a new write on {names[0]} on every honest node:\n" + self.describe(*names),
        )
        self.last_probe_s = time.monotonic() - start


@pytest.fixture
def net(tmp_path: Path, shared_broker: tuple[str, int]) -> Iterator[Callable[..., Net]]:
    made: list[Net] = []

    def make(broker: tuple[str, int] | None = None) -> Net:
        made.append(Net(tmp_path, broker or shared_broker))
        return made[-1]

    yield make
    for n in made:
        n.kill_all()


# -- forged and replayed changesets ---------------------------------------------------


def test_forged_next_changesets_of_a_live_node_are_refused_and_its_real_one_lands(
    net: Callable[..., Net], attacker: Callable[..., Attacker]
) -> None:
    cluster = net()
    cluster.start("A"), cluster.start("B")
    cluster.write("A", {"id": "seed", "owner": "alice"})
    cluster.wait_converged("A", "B")
    real_1 = cluster.changesets("B")["A.1"]  # as A signed it
    mallory = attacker(cluster.broker)
    fresh = NodeKey.generate()
    forged = next_changeset(real_1, EVIL)  # the id, revision and prev of A's next one
    mallory.changesets(cluster.channel, [forged], "A")  # unsigned
    mallory.changesets(cluster.channel, [sign(forged, fresh)], "A")  # another key
    # A's own key named, a signature by another:
    mallory.changesets(cluster.channel, [{**sign(forged, fresh), "key": real_1["key"]}], "A")

    cluster.reported("B", "unsigned", detail="A.2")
    cluster.reported("B", "key_mismatch", detail=fresh.public)
    cluster.reported("B", "bad_signature", detail="A.2")
    # A sees its own branch claimed under another key: refused and reported. (Unsigned
    # changesets of its own branch it skips as its own echo: the last of each message
    # it sends carries the signature, the others none.)
    cluster.reported("A", "key_mismatch", detail=fresh.public)
    assert fresh.public in cluster.status("A")["replication"]["branch_claims"]
    status_b = cluster.status("B")
    assert status_b["revision"] == real_1["revision"] and status_b["pending"] == 0

    assert parse_revision(cluster.write("A", {"id": "real", "owner": "alice"}))["A"] == 2
    wait_for(lambda: cluster.object("B", "real"), REPLICATES_S, "A's real A.2 on B")
    wait_for(lambda: cluster.status("A")["outbox"] == 0, REPLICATES_S, "A's outbox confirmed")
    # B holds A's A.2 with A's signature (A keeps its own unsigned: it signs on sending).
    held = cluster.changesets("B")["A.2"]
    assert {k: v for k, v in held.items() if k not in ("key", "sig")} == cluster.changesets("A")[
        "A.2"
    ]
    assert cluster.changesets("B")["A.2"]["key"] == real_1["key"]
    cluster.check_honest("A", "B")


def test_a_replayed_changeset_with_a_changed_body_fails_its_signature(
    net: Callable[..., Net], attacker: Callable[..., Attacker]
) -> None:
    cluster = net()
    cluster.start("A"), cluster.start("B")
    cluster.write("A", {"id": "doc", "owner": "alice"})
    cluster.wait_converged("A", "B")
    real = cluster.changesets("B")["A.1"]
    assert real["sig"]
    mallory = attacker(cluster.broker)
    eve = [{"id": "doc", "op": "create", "exists": True, "set": {"owner": "eve"}}]
    mallory.changesets(cluster.channel, [real], "A")  # verbatim: a harmless duplicate
    mallory.changesets(cluster.channel, [{**real, "changes": eve}], "A")  # same id
    moved = {**next_changeset(real, EVIL), "key": real["key"], "sig": real["sig"]}
    mallory.changesets(cluster.channel, [moved], "A")  # the signature moved to A.2
    # The same tampered copy as a catch-up answer on B's own queue.
    mallory.send(
        wire.node_queue(cluster.channel, "B"),
        orjson.dumps([{**real, "changes": eve}]),
        {
            wire.CLIENTID: "A",
            wire.TYPE: wire.CATCHUP,
            wire.REQUEST_ID: "r1",
            wire.BATCH: "1",
            wire.LAST: "true",
            "persistent": "true",
        },
    )
    cluster.reported("B", "bad_signature", at_least=3, detail="A.1")
    assert any("A.2" in e["detail"] for e in cluster.quarantine("B", "bad_signature"))
    assert set(cluster.quarantined("B")) == {"bad_signature"}  # the verbatim copy: dropped
    assert cluster.object("B", "doc") == {"id": "doc", "owner": "alice"}
    assert cluster.changesets("B")["A.1"] == real
    cluster.check_honest("A", "B")
    assert cluster.object("A", "doc") == {"id": "doc", "owner": "alice"}


def test_configured_trusted_keys_refuse_a_third_node_with_a_key_of_its_own(
    net: Callable[..., Net],
) -> None:
    cluster = net()
    keys = {b: write_key(cluster.folder / "data" / f"{b}.key") for b in ("A", "B")}
    trusted = f"replication_trusted_keys = { {b: k.public for b, k in keys.items()}!r}\n"
    cluster.start("A", extra=trusted), cluster.start("B", extra=trusted)
    for b, key in keys.items():
        status = cluster.status(b)
        assert status["public_key"] == key.public
        assert status["replication"]["trust"] == "configured"
    cluster.start("S")  # trust on first use, a key of its own
    cluster.write("S", {"id": "from-s"})
    cluster.write("A", {"id": "from-a"})
    cluster.write("B", {"id": "from-b"})
    s_key = cluster.status("S")["public_key"]
    for b in ("A", "B"):
        cluster.reported(b, "untrusted_key", detail=s_key)
        entries = cluster.quarantine(b, "untrusted_key")
        assert any("S.1" in e["detail"] for e in entries), [e["detail"] for e in entries]
    del cluster.acknowledged["from-s"]
    cluster.check_honest("A", "B", forbidden=("from-s",))
    # S keeps its own write, in its own store only.
    assert cluster.object("S", "from-s") == {"id": "from-s"}


def test_a_forged_announcement_of_a_live_branch_is_reported_never_obeyed(
    net: Callable[..., Net], attacker: Callable[..., Attacker]
) -> None:
    cluster = net()
    cluster.start("A"), cluster.start("B")
    cluster.write("A", {"id": "before"})
    cluster.wait_converged("A", "B")
    a_key, b_key = cluster.status("A")["public_key"], cluster.status("B")["public_key"]
    mallory = attacker(cluster.broker)
    impostor = NodeKey.generate()
    claim = {
        "type": "announce",
        "time_ms": now_ms(),
        "branch": "A",
        "revision": "A.99",
        "hello": True,
        "refused": {"B": [b_key]},  # "B's key is refused": must not stop B either
    }
    mallory.announce(cluster.channel, sign(claim, impostor))
    # A validly signed announcement of an invented branch that says it refuses A's key.
    fake = NodeKey.generate()
    mallory.announce(
        cluster.channel,
        sign(
            {
                "type": "announce",
                "time_ms": now_ms(),
                "branch": "F",
                "revision": "",
                "refused": {"A": [a_key]},
            },
            fake,
        ),
    )
    wait_for(
        lambda: impostor.public in cluster.status("A")["replication"]["branch_claims"],
        REPORTED_S,
        "the claim reported on A",
    )
    cluster.reported("A", "key_mismatch", detail=impostor.public)
    cluster.reported("B", "key_mismatch", detail=impostor.public)
    wait_for(
        lambda: cluster.status("A")["replication"]["refused_by"] == ["F"],
        REPORTED_S,
        "F's refusal reported on A",
    )
    for b in ("A", "B"):
        peers = cluster.status(b)["replication"]["peers"]
        assert peers.get("A", {}).get("revision") != "A.99", peers
    cluster.write("A", {"id": "after-a"})  # A still takes writes, and so does B
    cluster.write("B", {"id": "after-b"})
    cluster.check_honest("A", "B")


def test_a_third_node_with_a_history_of_its_own_is_refused_by_configured_keys(
    net: Callable[..., Net],
) -> None:
    cluster = net()
    keys = {b: write_key(cluster.folder / "data" / f"{b}.key") for b in ("A", "B")}
    trusted = f"replication_trusted_keys = { {b: k.public for b, k in keys.items()}!r}\n"
    cluster.start("A", extra=trusted), cluster.start("B", extra=trusted)
    cluster.start("S", replicate=False)  # S wrote before it joined the channel
    cluster.write("S", {"id": "from-s"})
    cluster.stop("S")
    cluster.start("S")
    cluster.write("S", {"id": "from-s-2"})
    cluster.write("A", {"id": "from-a"})
    cluster.write("B", {"id": "from-b"})
    s_key = cluster.status("S")["public_key"]
    for b in ("A", "B"):
        cluster.reported(b, "untrusted_key", detail=s_key)
        details = [e["detail"] for e in cluster.quarantine(b, "untrusted_key")]
        assert any("S.2" in d for d in details), details
    for own in ("from-s", "from-s-2"):
        del cluster.acknowledged[own]
    cluster.check_honest("A", "B", forbidden=("from-s", "from-s-2"))
    assert cluster.object("S", "from-s-2") == {"id": "from-s-2"}


# -- flooding the control traffic -----------------------------------------------------


def peer_lag(cluster: Net, name: str, peer: str) -> int | None:
    info = cluster.status(name)["replication"]["peers"].get(peer)
    return None if info is None else info["lag"]


def lose_one_write(cluster: Net, broker: BrokerProcess, name: str, doc: dict[str, Any]) -> None:
    """Commit ``doc`` on ``name`` and have the broker lose its changeset: stored and
    confirmed to the writer, then dropped for every subscriber (a dropped delivery counts
    as consumed and is never redelivered)."""
    broker.pause()
    try:
        cluster.write(name, doc)
        wait_for(lambda: cluster.status(name)["outbox"] == 0, 30, f"{name}'s write confirmed")
        broker.set_faults(drop=1.0, paused=False)
    finally:
        broker.reset_faults()


def test_a_fake_branch_announcing_10000_entries_does_not_stop_a_lost_write_recovering(
    brokers: Callable[..., BrokerProcess],
    net: Callable[..., Net],
    attacker: Callable[..., Attacker],
) -> None:
    broker = brokers()  # fault injection: a private embedded broker
    cluster = net((broker.host, broker.port))
    cluster.start("A"), cluster.start("B")
    cluster.write("A", {"id": "a0"})
    cluster.write("B", {"id": "b0"})
    cluster.wait_converged("A", "B")
    mallory = attacker(cluster.broker)
    revision = format_revision({f"F{i:05d}": 1 for i in range(10_000)})
    mallory.announce(
        cluster.channel,
        sign(
            {"type": "announce", "time_ms": now_ms(), "branch": "F", "revision": revision},
            NodeKey.generate(),
        ),
    )
    # Only so many entries of origins a node does not know are kept from one peer.
    kept = catchup.MAX_UNKNOWN_ENTRIES
    for b in ("A", "B"):
        wait_for(lambda b=b: peer_lag(cluster, b, "F") == kept, REPORTED_S, f"F on {b}")
        assert cluster.metric(b, 'vesper_replication_peer_lag_changesets{peer="F"}') == kept
    by_catchup = cluster.status("B")["replication"]["catchup_changesets_received"]
    lose_one_write(cluster, broker, "A", {"id": "lost"})
    start = time.monotonic()
    wait_for(
        lambda: cluster.object("B", "lost"),
        45,
        lambda: "the lost write recovered on B:\n" + cluster.describe("A", "B"),
    )
    recovered_s = time.monotonic() - start
    # It came by catch-up from A: the broker did lose it.
    # The counter follows the batch's commit, which the data shows first.
    wait_for(
        lambda: cluster.status("B")["replication"]["catchup_changesets_received"] > by_catchup,
        what="the lost write counted as received by catch-up",
    )
    cluster.check_honest("A", "B")
    print(f"lost write recovered in {recovered_s:.1f} s; probe {cluster.last_probe_s:.2f} s")


def test_a_thousand_fake_branches_with_much_to_give_do_not_starve_catchup(
    brokers: Callable[..., BrokerProcess],
    net: Callable[..., Net],
    attacker: Callable[..., Attacker],
) -> None:
    """Each fake peer announces more than the honest one has to give, and never answers:
    a lost write must still be fetched from the honest peer within seconds."""
    broker = brokers()
    cluster = net((broker.host, broker.port))
    cluster.start("A"), cluster.start("B")
    cluster.write("A", {"id": "a0"})
    cluster.wait_converged("A", "B")
    mallory = attacker(cluster.broker)
    fakes = 1_000  # as many as a peer list holds
    for i in range(fakes):
        body = {
            "type": "announce",
            "time_ms": now_ms(),
            "branch": f"F{i}",
            "revision": f"F{i}.1000",
        }
        mallory.announce(cluster.channel, sign(body, NodeKey.generate()), wait=i == fakes - 1)
    wait_for(
        lambda: peer_lag(cluster, "B", f"F{fakes - 1}") == 1_000,
        60,
        lambda: "the fake peers listed on B:\n" + cluster.describe("B"),
    )
    lose_one_write(cluster, broker, "A", {"id": "lost"})
    wait_for(
        lambda: cluster.object("B", "lost"),
        25,
        lambda: "the lost write recovered on B:\n" + cluster.describe("A", "B"),
    )
    cluster.check_honest("A", "B")


FAKE_PEERS = 10_000


def check_peers_bounded(cluster: Net, name: str) -> None:
    status = cluster.status(name)
    peers = status["replication"]["peers"]
    size = len(orjson.dumps(status))
    assert len(peers) <= catchup.MAX_PEERS, len(peers)
    assert size < 256 * 1024, f"{name}'s status is {size} bytes"
    metrics = httpx.get(f"{cluster.nodes[name].url}/metrics", timeout=30).text
    assert len(metrics) < 512 * 1024, len(metrics)
    # The flood shows: fake peers in the status and the metrics (not necessarily the
    # same ones: while the flood arrives, newer fakes push older ones out).
    assert any(p.startswith("F") for p in peers)
    assert re.search(r'vesper_replication_peer_lag_changesets\{peer="F\d+"\} 1\.0', metrics)


def test_ten_thousand_fake_peers_keep_the_status_small_and_writes_flowing(
    net: Callable[..., Net], attacker: Callable[..., Attacker]
) -> None:
    cluster = net()
    cluster.start("A"), cluster.start("B")
    cluster.write("A", {"id": "a0"})
    cluster.wait_converged("A", "B")
    before = {b: cluster.status(b)["replication"]["messages_received"] for b in ("A", "B")}
    mallory = attacker(cluster.broker)
    for i in range(FAKE_PEERS):
        body = {"type": "announce", "time_ms": now_ms(), "branch": f"F{i}", "revision": f"F{i}.1"}
        mallory.announce(cluster.channel, sign(body, NodeKey.generate()), wait=i == FAKE_PEERS - 1)
    for b in ("A", "B"):  # the peer lists fill up while the flood is being read
        wait_for(
            lambda b=b: len(cluster.status(b)["replication"]["peers"]) >= catchup.MAX_PEERS,
            60,
            lambda b=b: f"{b}'s peer list filling up:\n{cluster.describe(b)}",
        )
        check_peers_bounded(cluster, b)
    # A real write in the middle of the flood.
    cluster.write("A", {"id": "during"})
    wait_for(
        lambda: cluster.object("B", "during"),
        REPLICATES_S,
        lambda: "a write made during the flood on B:\n" + cluster.describe("A", "B"),
    )
    for b in ("A", "B"):
        wait_for(
            lambda b=b: (
                cluster.status(b)["replication"]["messages_received"]
                - before[b]
                + cluster.status(b)["replication"]["announcements_dropped"]
                >= FAKE_PEERS
                and cluster.status(b)["replication"]["apply_backlog"] == 0
            ),
            120,
            lambda b=b: f"{b} reading the announcements:\n{cluster.describe(b)}",
        )
        check_peers_bounded(cluster, b)
    # The honest peers are not crowded out for good: each is listed again by the other.
    for b, other in (("A", "B"), ("B", "A")):
        wait_for(
            lambda b=b, other=other: peer_lag(cluster, b, other) is not None,
            REPORTED_S,
            f"{other} among {b}'s peers",
        )
    cluster.check_honest("A", "B")


def test_a_forged_catchup_request_for_an_invented_asker_costs_one_small_window(
    net: Callable[..., Net], attacker: Callable[..., Attacker]
) -> None:
    # What flow control lets out before the first acknowledgement.
    window = sum(
        min(catchup.FIRST_BATCH_BYTES << i, catchup.ANSWER_BATCH_BYTES)
        for i in range(catchup.ANSWER_WINDOW)
    )
    pad = max(200, 20 * window // 2_000)  # a history some 20 windows long
    cluster = net()
    cluster.start("A"), cluster.start("B")
    with httpx.Client(base_url=cluster.nodes["A"].url, timeout=30) as client:
        for i in range(2_000):
            doc = {"id": f"s{i}", "pad": "y" * pad}
            assert client.post("/api/objects", json=doc).status_code == 201
            cluster.acknowledged[doc["id"]] = doc
    cluster.wait_converged("A", "B")
    wait_for(lambda: cluster.status("A")["outbox"] == 0, 30, "A's outbox confirmed")
    history = len(httpx.get(f"{cluster.nodes['A'].url}/api/changesets", timeout=30).content)
    assert history > 10 * window
    mallory = attacker(cluster.broker)
    asker = f"X{uuid.uuid4().hex[:8]}"  # nobody runs it
    request = {
        "type": "request",
        "time_ms": now_ms(),
        "branch": asker,
        "since": "",
        "request_id": "r1",
    }
    mallory.send(
        wire.node_queue(cluster.channel, "A"),
        orjson.dumps(sign(request, NodeKey.generate())),
        {wire.CLIENTID: asker, wire.TYPE: wire.REQUEST},
    )
    # Nobody acknowledges the answer's batches: A gives up after its ack timeout.
    stopped = re.compile(rf"{asker} acknowledged nothing .* stops after (\d+) changesets")
    match = wait_for(
        lambda: stopped.search(cluster.nodes["A"].log()),
        catchup.ACK_TIMEOUT_S + 20,
        "A abandoning the answer",
    )
    # Everything A sent to the invented asker's queue, then a marker behind it.
    sub = mallory.subscribe(wire.node_queue(cluster.channel, asker))
    mallory.send(wire.node_queue(cluster.channel, asker), b"{}", {"marker": "end"})
    wait_for(
        lambda: any(h.get("marker") == "end" for h, _ in mallory.received(sub)),
        30,
        "the marker behind A's answer",
    )
    answer = [body for h, body in mallory.received(sub) if h.get(wire.TYPE) == wire.CATCHUP]
    sent = sum(len(body) for body in answer)
    changesets = sum(len(orjson.loads(body)) for body in answer)
    assert 1 <= len(answer) <= catchup.ANSWER_WINDOW, len(answer)
    assert sent <= window + 1024, (sent, window, history)
    assert changesets == int(match.group(1)) < 2_000
    cluster.check_honest("A", "B")
    print(f"answer to the forgery: {len(answer)} batches, {sent} bytes of a {history}-byte history")


def test_50000_far_future_changesets_of_an_invented_origin_are_not_kept(
    net: Callable[..., Net], attacker: Callable[..., Attacker]
) -> None:
    cluster = net()
    cluster.start("A"), cluster.start("B")
    cluster.write("A", {"id": "a0"})
    cluster.wait_converged("A", "B")
    mallory = attacker(cluster.broker)
    key = NodeKey.generate()
    total, per_message, first = 50_000, 5_000, 10**9
    prev = "0" * 64
    for m in range(total // per_message):
        bodies = []
        for n in range(first + m * per_message, first + (m + 1) * per_message):
            body = {
                "v": 2,
                "id": f"Z.{n}",
                "origin": "Z",
                "revision": f"Z.{n}",
                "base_revision": f"Z.{n - 1}",
                "prev": prev,
                "hlc": 1,
                "time": "2026-01-01T00:00:00.000Z",
                "changes": [{"id": f"z{n}", "op": "create", "exists": True, "set": {}}],
            }
            prev = content_hash(body)
            bodies.append(body)
        # A chained run needs only its last signature: all of them pass the verifier,
        # so this is the store's bound that must hold.
        bodies[-1] = sign(bodies[-1], key)
        mallory.changesets(cluster.channel, bodies, "Z")
    for b in ("A", "B"):
        cluster.reported(b, "pending_full", at_least=total // per_message, detail="Z.")
        status = cluster.status(b)
        assert status["pending"] == 0 and status["replication"]["pending"] == 0
        assert cluster.metric(b, "vesper_pending_changesets") == 0
    cluster.check_honest("A", "B", forbidden=(f"z{first}", f"z{first + total - 1}"))


# -- one branch id, two nodes; restarts that must not fork ----------------------------

SERVING = re.compile(r"serving (http://\S+)")


def start_refused(cluster: Net, name: str, branch: str, work_dir: str) -> tuple[int, str]:
    """Start a node that must refuse to start: its exit status and its stderr."""
    config = cluster.config(name, branch, work_dir, "")
    err = cluster.folder / f"{name}.stderr"
    with err.open("wb") as out:
        proc = subprocess.Popen(
            node_command(config), cwd=cluster.folder, stdout=subprocess.DEVNULL, stderr=out
        )
    try:
        wait_for(
            lambda: proc.poll() is not None or SERVING.search(err.read_text()),
            45,
            lambda: f"{name} (branch {branch}) exiting; its log:\n{err.read_text()}",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail(
                f"a second node configured as {branch!r} started and serves instead of "
                f"refusing to start; its log:\n{err.read_text()}"
            )
    return proc.returncode, err.read_text()


def assert_one_clear_line(code: int, stderr: str, branch: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("vesper serve:")]
    assert code != 0, stderr
    assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr
    assert f"branch_id {branch!r}" in lines[0], lines[0]


def key_in(path: Path) -> str:
    return NodeKey.from_pem(path.read_bytes(), str(path)).public


def test_a_second_node_configured_with_a_live_branch_id_refuses_to_start(
    brokers: Callable[..., BrokerProcess], net: Callable[..., Net]
) -> None:
    # Liveness is the broker's client-id rule (the embedded broker and ActiveMQ keep one
    # connection per client-id; RabbitMQ has no such rule, and there the second node is
    # reported, as below): a private embedded broker, skipped under --mq.
    broker = brokers()
    cluster = net((broker.host, broker.port))
    cluster.start("A"), cluster.start("B")
    cluster.write("A", {"id": "a1"})
    cluster.wait_converged("A", "B")
    code, stderr = start_refused(cluster, "A2", "A", "data2")  # another key
    assert_one_clear_line(code, stderr, "A")
    second = key_in(cluster.folder / "data2" / "A.key")
    assert second != cluster.status("A")["public_key"] and second in stderr
    cluster.write("A", {"id": "a2"})
    cluster.write("B", {"id": "b1"})
    cluster.check_honest("A", "B")


def test_a_second_node_with_a_stopped_nodes_branch_id_never_gets_its_writes_accepted(
    net: Callable[..., Net],
) -> None:
    cluster = net()
    cluster.start("A"), cluster.start("B")
    cluster.write("A", {"id": "a1"})
    cluster.write("A", {"id": "a2"})
    cluster.wait_converged("A", "B")
    wait_for(lambda: cluster.status("A")["outbox"] == 0, 30, "A's outbox confirmed")
    cluster.stop("A")
    cluster.write("B", {"id": "b-while-a-is-down"})  # waits in A's durable subscription
    # A new node given A's branch id (another work_dir, so another key). Under trust on
    # first use nothing tells it from an impostor, so it is not refused: it reports that
    # its peers refuse its key, and they refuse its requests and changesets.
    cluster.start("A2", "A", work_dir="data2")
    wait_for(
        lambda: cluster.status("A2")["replication"]["refused_by"] == ["B"],
        REPORTED_S,
        "A2 reports that B refuses it",
    )
    assert "branch A looks taken" in cluster.nodes["A2"].log()
    cluster.stop("A2")
    # The same, with a history of its own from before it joined: it runs and writes,
    # and the peers refuse every changeset of it.
    cluster.start("A3", "A", work_dir="data3", replicate=False)
    cluster.write("A3", {"id": "second-1"})
    cluster.write("A3", {"id": "second-2"})
    cluster.stop("A3")
    cluster.start("A3", "A", work_dir="data3")
    cluster.write("A3", {"id": "second-3"})
    cluster.write("B", {"id": "b-while-a3-runs"})
    third = cluster.status("A3")["public_key"]
    cluster.reported("B", "key_mismatch", detail=third)
    seconds = ("second-1", "second-2", "second-3")
    assert all(cluster.object("A3", i) == {"id": i} for i in seconds)  # in its own store
    assert not any(cluster.object("B", i) for i in seconds)
    cluster.stop("A3")
    for i in seconds:
        del cluster.acknowledged[i]
    cluster.start("A")  # the first A comes back
    cluster.write("A", {"id": "a3"})
    cluster.check_honest("A", "B", forbidden=seconds)
    assert cluster.changesets("B")["A.3"]["key"] == cluster.status("A")["public_key"]


def test_a_node_killed_with_sigkill_in_the_middle_of_writes_never_forks(
    net: Callable[..., Net],
) -> None:
    cluster = net()
    cluster.start("A"), cluster.start("B")
    stop = threading.Event()

    def stream(name: str) -> None:
        i = 0
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                doc = {"id": f"{name}{i}", "i": i}
                try:
                    r = client.post(f"{cluster.nodes[name].url}/api/objects", json=doc)
                except httpx.HTTPError:
                    continue  # down: not acknowledged
                if r.status_code == 201:
                    cluster.acknowledged[doc["id"]] = doc
                i += 1

    writers = [threading.Thread(target=stream, args=(n,)) for n in ("A", "B")]
    for w in writers:
        w.start()
    try:
        for _ in range(2):
            target = len(cluster.acknowledged) + 200
            wait_for(lambda t=target: len(cluster.acknowledged) > t, 60, "writes under way")
            cluster.stop("A", signal.SIGKILL)
            cluster.start("A")
        target = len(cluster.acknowledged) + 200
        wait_for(lambda: len(cluster.acknowledged) > target, 60, "writes after the restarts")
    finally:
        stop.set()
        for w in writers:
            w.join()
    cluster.check_honest("A", "B", timeout=90)
    for b in ("A", "B"):
        assert not {"fork", "broken_chain"} & set(cluster.quarantined(b)), cluster.describe(b)


def test_a_memory_node_restarted_reimports_its_history_and_continues_its_counter(
    net: Callable[..., Net],
) -> None:
    cluster = net()
    memory = "storage_url = 'mem://'\n"
    cluster.start("A", extra=memory), cluster.start("B")
    for i in range(5):
        cluster.write("A", {"id": f"a{i}"})
    cluster.write("B", {"id": "b0"})
    cluster.wait_converged("A", "B")
    wait_for(lambda: cluster.status("A")["outbox"] == 0, 30, "A's outbox confirmed")
    key = cluster.status("A")["public_key"]
    cluster.stop("A")
    cluster.start("A", extra=memory)  # the key file is kept, the store is not
    status = cluster.status("A")
    assert status["public_key"] == key
    assert f"node A public key {key} (read from" in cluster.nodes["A"].log()
    assert parse_revision(status["revision"]).get("A") == 5, "re-imported before serving"
    assert parse_revision(cluster.write("A", {"id": "after"}))["A"] == 6
    cluster.check_honest("A", "B")
    mine = [cs for cs in cluster.changesets("A").values() if cs["origin"] == "A"]
    # Signatures kept are the node's own (those a later one covered are kept without).
    assert len(mine) == 7 and all(cs.get("key", key) == key for cs in mine)
    assert mine[4]["key"] == key
    assert cluster.quarantined("B") == {}


def test_a_node_restored_from_an_older_copy_of_its_store_never_forks(
    net: Callable[..., Net],
) -> None:
    cluster = net()
    cluster.start("A"), cluster.start("B")
    for i in range(3):
        cluster.write("A", {"id": f"a{i}"})
    cluster.wait_converged("A", "B")
    wait_for(lambda: cluster.status("A")["outbox"] == 0, 30, "A's outbox confirmed")
    cluster.stop("A")
    data, backup = cluster.folder / "data", cluster.folder / "backup"
    backup.mkdir()
    for f in data.glob("A.db*"):
        shutil.copy2(f, backup / f.name)
    cluster.start("A")
    for i in range(3, 6):
        cluster.write("A", {"id": f"a{i}"})
    cluster.write("B", {"id": "b0"})
    cluster.wait_converged("A", "B")
    wait_for(lambda: cluster.status("A")["outbox"] == 0, 30, "A's outbox confirmed")
    cluster.stop("A")
    for f in data.glob("A.db*"):
        f.unlink()
    for f in backup.iterdir():
        shutil.copy2(f, data / f.name)  # the copy from before A.4 .. A.6
    cluster.start("A")
    assert parse_revision(cluster.status("A")["revision"]).get("A") == 6, "re-imported first"
    assert parse_revision(cluster.write("A", {"id": "a6"}))["A"] == 7
    cluster.check_honest("A", "B")
    assert cluster.quarantined("B") == {}
