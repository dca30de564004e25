"""Who reaches the broker, and how: real ``vesper serve`` nodes over TLS and with broker
logins, and raw stomp.py clients attacking users with limited rights.

- Embedded brokers of the test's own (the default run; skipped under ``--mq``): TLS
  with a trusted CA, a certificate the node does not trust, ``replication_tls_verify =
  False``, and logins from a ``--users`` file.
- The ``--mq`` broker's TLS listener and limited users (``--mq-tls``, ``--mq-ca``,
  ``--mq-channel``, ``--mq-user``, ``--mq-readonly-user``, as
  ``scripts/brokers/{activemq,rabbitmq}.sh`` write them to ``DIR/access.env``;
  skipped without them): the node user replicates over TLS; neither user reaches
  beyond its channel; the reader publishes nothing at all.

Absence is asserted against a clock the broker or node provides: a marker sent after
the refused attempt arrives, or the node logs more failed attempts after the write.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stomp
import stomp.exception

from tests.api.conftest import NodeProcess, node_command
from tests.replication.harness import new_channel, wait_for
from tests.tlsutil import CA, make_ca, make_cert, self_signed
from vesper.broker.process import BrokerProcess
from vesper.replication.brokers import subscription_queue

DEADLINE_S = 60.0
ANSWER_S = 15.0
"""How long a raw client waits for the broker's RECEIPT or ERROR."""


# -- nodes ---------------------------------------------------------------------------


class Node(NodeProcess):
    """A ``vesper serve`` process with the replication views these tests read. A node
    that cannot reach its broker serves only after ``wait_started`` gives up (10 s), so
    tests ``launch`` those first and call ``ready`` once the others have started."""

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/api/status", timeout=30).json()

    def replication(self) -> dict[str, Any]:
        return self.status()["replication"]

    def has(self, object_id: str) -> bool:
        return httpx.get(f"{self.url}/api/objects/{object_id}", timeout=30).status_code == 200

    def put(self, object_id: str, **fields: object) -> None:
        r = httpx.put(f"{self.url}/api/objects/{object_id}", json=fields, timeout=30)
        assert r.status_code in (200, 201), r.text

    def count(self, needle: str) -> int:
        return self.log().count(needle)


class Nodes:
    """Nodes on one channel, each with its own config file written from settings."""

    def __init__(self, folder: Path, channel: str, **settings: object) -> None:
        self.folder = folder
        self.channel = channel
        self.settings = settings
        self.started: list[Node] = []

    def launch(self, branch: str, **settings: object) -> Node:
        values = {
            "branch_id": branch,
            "save_history": True,
            "work_dir": f"data-{branch}",
            "replication_channel": self.channel,
            **self.settings,
            **settings,
        }
        config = self.folder / f"{branch}.conf"
        config.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
        log = self.folder / f"{branch}.log"
        node = Node(node_command(config), self.folder, log).launch()
        self.started.append(node)
        return node

    def start(self, branch: str, **settings: object) -> Node:
        """Launch, wait until it serves and is connected to the broker."""
        node = self.launch(branch, **settings).ready()
        wait_for(
            lambda: node.replication()["connected"],
            DEADLINE_S,
            lambda: f"{branch} connected to the broker; its log:\n{node.log()}",
        )
        return node

    def kill_all(self) -> None:
        for node in self.started:
            node.kill()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., Nodes]]:
    made: list[Nodes] = []

    def make(channel: str | None = None, **settings: object) -> Nodes:
        made.append(Nodes(tmp_path, channel or new_channel(), **settings))
        return made[-1]

    yield make
    for group in made:
        group.kill_all()


def replicates(a: Node, b: Node, tag: str) -> None:
    """An object written on each node appears on the other."""
    a.put(f"{tag}-from-a", v=1)
    b.put(f"{tag}-from-b", v=2)
    wait_for(lambda: b.has(f"{tag}-from-a"), DEADLINE_S, f"{tag}-from-a on the second node")
    wait_for(lambda: a.has(f"{tag}-from-b"), DEADLINE_S, f"{tag}-from-b on the first node")


# -- embedded brokers ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: CA
    cert: Path
    key: Path
    rogue_cert: Path
    rogue_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("tls")
    ca = make_ca(folder)
    cert, key = make_cert(ca, folder)
    rogue_cert, rogue_key = self_signed(folder)
    return Certs(ca, cert, key, rogue_cert, rogue_key)


@pytest.fixture
def embedded(request: pytest.FixtureRequest) -> Callable[..., BrokerProcess]:
    """Embedded brokers of the test's own, with TLS and users as each test needs."""
    if request.config.getoption("--mq"):
        pytest.skip("needs embedded brokers with TLS or users of its own; the default run has it")
    return request.getfixturevalue("brokers")


def tls_url(broker: BrokerProcess) -> str:
    assert broker.scheme == "stomp+ssl", broker.url
    return f"stomp+ssl://127.0.0.1:{broker.port}"


def test_nodes_replicate_over_tls_trusting_the_brokers_ca(
    embedded: Callable[..., BrokerProcess], nodes: Callable[..., Nodes], certs: Certs
) -> None:
    broker = embedded(tls_cert=certs.cert, tls_key=certs.key)
    group = nodes(replication_hosts=[tls_url(broker)], replication_tls_ca=str(certs.ca.cert_path))
    a, b = group.start("A"), group.start("B")
    assert a.replication()["connected"] == tls_url(broker)
    replicates(a, b, "tls")
    for node in (a, b):
        assert "replication_tls_verify" not in node.log(), node.log()


def test_an_untrusted_broker_certificate_is_refused_unless_verify_is_off(
    embedded: Callable[..., BrokerProcess], nodes: Callable[..., Nodes], certs: Certs
) -> None:
    """The broker shows a self-signed certificate: A, trusting only the CA, is refused
    and says why; C and D, with replication_tls_verify = False, connect (warning about
    it) and replicate on the same channel while nothing reaches or leaves A."""
    broker = embedded(tls_cert=certs.rogue_cert, tls_key=certs.rogue_key)
    group = nodes(replication_hosts=[tls_url(broker)], replication_tls_ca=str(certs.ca.cert_path))
    a = group.launch("A")  # serves only after its 10 s start check gives up
    c = group.start("C", replication_tls_ca=None, replication_tls_verify=False)
    d = group.start("D", replication_tls_ca=None, replication_tls_verify=False)
    for node in (c, d):
        assert re.search(r"WARNING .*replication_tls_verify is False", node.log()), node.log()
    refused = (
        f"cannot replicate through 127.0.0.1:{broker.port}: "
        "TLS handshake failed: CERTIFICATE_VERIFY_FAILED"
    )
    wait_for(lambda: a.count(refused), DEADLINE_S, lambda: a.log())
    a.ready()
    a.put("from-a", v=1)  # an offline node takes writes and keeps them in its outbox
    seen = a.count(refused)
    wait_for(lambda: a.count(refused) > seen, DEADLINE_S, "another attempt after the write")
    replicates(c, d, "unverified")  # the broker works, for those that accept it
    r = a.replication()
    assert r["connected"] is None, r
    assert (r["messages_sent"], r["messages_received"], r["changesets_received"]) == (0, 0, 0)
    assert r["outbox"] >= 1, r
    assert not a.has("unverified-from-c")
    assert not d.has("from-a") and not c.has("from-a")


def add_user(users: Path, name: str, passcode: str, channel: str) -> None:
    """``vesper broker adduser`` with the rights of a node on ``channel``."""
    rights = [f"/topic/{channel}", f"/topic/{channel}.sync", f"/queue/{channel}.*"]
    args = [sys.executable, "-m", "vesper", "broker", "adduser", str(users), name]
    args.append("--passcode-stdin")
    for pattern in rights:
        args += ["--read", pattern, "--write", pattern]
    subprocess.run(args, input=passcode + "\n", text=True, check=True, capture_output=True)


def test_broker_login_wrong_passcode_refused_right_one_replicates(
    embedded: Callable[..., BrokerProcess],
    nodes: Callable[..., Nodes],
    certs: Certs,
    tmp_path: Path,
) -> None:
    channel = new_channel()
    users = tmp_path / "users.toml"
    add_user(users, "node", "right-passcode-3b1f", channel)
    broker = embedded(users=users, allow_anonymous=False, tls_cert=certs.cert, tls_key=certs.key)
    group = nodes(
        channel,
        replication_hosts=[tls_url(broker)],
        replication_tls_ca=str(certs.ca.cert_path),
        replication_login="node",
    )
    wrong = group.launch("W", replication_passcode="wrong-passcode-9c2e")
    nobody = group.launch("N", replication_login=None)
    a = group.start("A", replication_passcode="right-passcode-3b1f")
    b = group.start("B", replication_passcode="right-passcode-3b1f")
    replicates(a, b, "login")
    refused = (
        f"cannot replicate through 127.0.0.1:{broker.port}: broker error: authentication failed"
    )
    for node, why in ((wrong, "login 'node' or its passcode is wrong"), (nobody, "needs login")):
        wait_for(lambda n=node: n.count(refused) >= 2, DEADLINE_S, lambda n=node: n.log())
        assert why in node.log(), node.log()
        node.ready()
        r = node.replication()
        assert r["connected"] is None and r["changesets_received"] == 0, r
        assert not node.has("login-from-a")
    for node in (wrong, a, b):
        for secret in ("wrong-passcode-9c2e", "right-passcode-3b1f"):
            assert secret not in node.log(), "a passcode was logged"


# -- the --mq broker's TLS listener and limited users ----------------------------------


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _credentials(text: str) -> tuple[str, str]:
    name, sep, passcode = text.partition(":")
    assert sep, f"expected NAME:PASS, got {text!r}"
    return name, passcode


@dataclasses.dataclass(frozen=True)
class Access:
    plain: tuple[str, int]
    """The --mq address: anonymous (ActiveMQ) or guest (RabbitMQ) with every right."""
    tls: tuple[str, int]
    ca: str
    channel: str
    node: tuple[str, str]
    reader: tuple[str, str]
    kind: str
    """activemq, rabbitmq or whatever the CONNECTED frame's server header starts with."""


def fresh(prefix: str) -> str:
    """A name no earlier run used: the channel of the limited users is fixed."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


ACCESS_OPTIONS = ("--mq-tls", "--mq-ca", "--mq-channel", "--mq-user", "--mq-readonly-user")


@pytest.fixture(scope="module")
def mq(request: pytest.FixtureRequest) -> Access:
    given = {o: request.config.getoption(o) for o in ("--mq", *ACCESS_OPTIONS)}
    missing = [o for o, v in given.items() if not v]
    if missing:
        pytest.skip(
            f"needs a real broker's TLS listener and limited users: {' '.join(missing)} not "
            "given (scripts/test passes them from the access.env the broker scripts write)"
        )
    plain = _address(given["--mq"])
    probe = Client(plain)
    kind = probe.server.split("/")[0].lower()
    probe.close()
    return Access(
        plain,
        _address(given["--mq-tls"]),
        given["--mq-ca"],
        given["--mq-channel"],
        _credentials(given["--mq-user"]),
        _credentials(given["--mq-readonly-user"]),
        kind,
    )


class Client(stomp.ConnectionListener):
    """One raw stomp.py connection that records what the broker answers."""

    def __init__(
        self,
        address: tuple[str, int],
        user: tuple[str, str] | None = None,
        ca: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.errors: list[str] = []
        self.receipts: set[str] = set()
        self.bodies: list[str] = []
        self.closed = False
        self.server = ""
        self.conn = stomp.Connection12([address], vhost="/", heartbeats=(0, 0))
        if ca is not None:
            self.conn.set_ssl(for_hosts=[address], ca_certs=ca)
        self.conn.set_listener("probe", self)
        login, passcode = user or (None, None)
        headers = {"client-id": client_id} if client_id else {}
        self.conn.connect(login, passcode, wait=True, headers=headers)

    def on_connected(self, frame: Any) -> None:
        self.server = frame.headers.get("server", "")

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame.headers.get("message", "") or str(frame.body)[:200])

    def on_receipt(self, frame: Any) -> None:
        self.receipts.add(frame.headers.get("receipt-id", ""))

    def on_message(self, frame: Any) -> None:
        self.bodies.append(frame.body if isinstance(frame.body, str) else frame.body.decode())

    def on_disconnected(self) -> None:
        self.closed = True

    def _ask(self, frame: Callable[[dict[str, str]], None], headers: dict[str, str]) -> str | None:
        """Send one frame with a receipt: None when the broker confirmed it, else the
        ERROR it answered with (or that the connection is gone)."""
        receipt, errors = uuid.uuid4().hex, len(self.errors)
        try:
            frame({**headers, "receipt": receipt})
        except stomp.exception.StompException as exc:
            return f"{type(exc).__name__}: {exc}"
        wait_for(
            lambda: receipt in self.receipts or len(self.errors) > errors or self.closed,
            ANSWER_S,
            f"the broker's answer to {receipt}",
        )
        if len(self.errors) > errors:
            return "; ".join(self.errors[errors:])
        return None if receipt in self.receipts else "connection closed"

    def send(self, destination: str, body: str, **headers: str) -> str | None:
        return self._ask(lambda h: self.conn.send(destination, body, headers=h), headers)

    def subscribe(self, destination: str, sub_id: str, **headers: str) -> str | None:
        return self._ask(lambda h: self.conn.subscribe(destination, sub_id, headers=h), headers)

    def unsubscribe(self, sub_id: str, **headers: str) -> str | None:
        return self._ask(lambda h: self.conn.unsubscribe(sub_id, headers=h), headers)

    def close(self) -> None:
        try:
            if self.conn.is_connected():
                self.conn.disconnect()
        except Exception:
            pass


def durable_headers(channel: str, branch: str) -> dict[str, str]:
    """Vesper's durable subscription headers for both brokers at once."""
    return {
        "durable": "true",
        "auto-delete": "false",
        "activemq.subscriptionName": f"vesper-{channel}-{branch}",
        "x-queue-name": subscription_queue(channel, branch),
    }


def never_arrives(mq: Access, destination: str, attack: Callable[[], str | None]) -> str | None:
    """Run ``attack`` while a full-rights observer watches ``destination``; then send
    a marker there and return the attack's outcome once the marker arrived alone."""
    observer = Client(mq.plain)
    try:
        assert observer.subscribe(destination, "observer") is None, observer.errors
        outcome = attack()
        marker = f"marker-{uuid.uuid4().hex}"
        sender = Client(mq.plain)
        try:
            assert sender.send(destination, marker) is None, sender.errors
        finally:
            sender.close()
        wait_for(lambda: marker in observer.bodies, ANSWER_S, f"the marker on {destination}")
        assert observer.bodies == [marker], f"the attack got through to {destination}"
        return outcome
    finally:
        observer.close()


def attempt(mq: Access, who: str, act: Callable[[Client], str | None], **kw: Any) -> str | None:
    """One action on a fresh TLS connection as ``who`` ("node" or "reader")."""
    client = Client(mq.tls, mq.node if who == "node" else mq.reader, mq.ca, **kw)
    try:
        return act(client)
    finally:
        client.close()


def test_node_user_replicates_over_tls(mq: Access, nodes: Callable[..., Nodes]) -> None:
    login, passcode = mq.node
    host, port = mq.tls
    group = nodes(
        mq.channel,
        replication_hosts=[f"stomp+ssl://{host}:{port}"],
        replication_tls_ca=mq.ca,
        replication_login=login,
        replication_passcode=passcode,
    )
    run = fresh("")  # the channel is fixed: new branches every run
    a, b = group.start(f"A{run}"), group.start(f"B{run}")
    assert a.replication()["connected"] == f"stomp+ssl://{host}:{port}"
    try:
        replicates(a, b, "limited")
        for node in (a, b):
            assert "broker error" not in node.log(), node.log()
    finally:
        group.kill_all()
        for branch in (f"A{run}", f"B{run}"):
            _delete_durable(mq, mq.channel, branch)


def test_a_node_trusting_another_authority_is_refused_by_the_real_broker(
    mq: Access, nodes: Callable[..., Nodes], tmp_path: Path
) -> None:
    """The broker's certificate is sound, but not signed by the authority this node
    trusts: the handshake fails, the node says why and sends nothing."""
    login, passcode = mq.node
    host, port = mq.tls
    other = make_ca(tmp_path)
    group = nodes(
        mq.channel,
        replication_hosts=[f"stomp+ssl://{host}:{port}"],
        replication_tls_ca=str(other.cert_path),
        replication_login=login,
        replication_passcode=passcode,
    )
    a = group.launch(f"A{fresh('')}")
    try:
        refused = f"cannot replicate through {host}:{port}: TLS handshake failed"
        wait_for(lambda: a.count(refused), DEADLINE_S, lambda: a.log())
        assert "CERTIFICATE_VERIFY_FAILED" in a.log()
        a.ready()
        r = a.replication()
        assert r["connected"] is None and r["messages_sent"] == 0, r
    finally:
        group.kill_all()


PUBLISH_ATTACKS = [
    # (who, destination template, why it must fail)
    ("reader", "/topic/{channel}", "the reader may not publish changesets"),
    ("reader", "/topic/{channel}.sync", "the reader may not announce"),
    ("reader", "/queue/{channel}.{victim}", "the reader may not send to a node's queue"),
    ("node", "/topic/{other}", "the node user may not publish on another channel"),
    ("node", "/topic/{other}.sync", "the node user may not announce on another channel"),
    ("node", "/queue/{other}.{victim}", "the node user may not reach another channel's node"),
    ("node", "/topic/{channel}.sync.extra", "only the channel's own two topics"),
]


@pytest.mark.parametrize(
    ("who", "template", "why"), PUBLISH_ATTACKS, ids=[f"{w}-{t}" for w, t, _ in PUBLISH_ATTACKS]
)
def test_limited_users_cannot_publish_outside_their_rights(
    mq: Access, who: str, template: str, why: str
) -> None:
    destination = template.format(channel=mq.channel, other=new_channel(), victim=fresh("V"))

    def attack() -> str | None:
        return attempt(mq, who, lambda c: c.send(destination, "forged", persistent="true"))

    error = never_arrives(mq, destination, attack)
    assert error is not None, f"{why}: SEND to {destination} was confirmed"


def test_reader_cannot_publish_through_broker_specific_destinations(mq: Access) -> None:
    """RabbitMQ's /exchange/ and /amq/queue/ forms name the same exchange and queues;
    on ActiveMQ they are just queue names the reader may not write either."""
    queue = f"{mq.channel}.{fresh('V')}"
    for destination, observed in (
        (f"/exchange/amq.topic/{mq.channel}", f"/topic/{mq.channel}"),
        (f"/amq/queue/{queue}", f"/queue/{queue}"),
    ):

        def attack(d: str = destination) -> str | None:
            return attempt(mq, "reader", lambda c: c.send(d, "forged", persistent="true"))

        assert never_arrives(mq, observed, attack) is not None, destination


SUBSCRIBE_ATTACKS = [
    ("reader", "/queue/{channel}.{victim}", "the reader may not take a node's requests"),
    ("reader", "/topic/{other}", "the reader may not read another channel"),
    ("node", "/topic/{other}", "the node user may not read another channel"),
    ("node", "/topic/{other}.sync", "the node user may not hear another channel"),
    ("node", "/queue/{other}.{victim}", "the node user may not read another channel's node"),
]


@pytest.mark.parametrize(
    ("who", "template", "why"),
    SUBSCRIBE_ATTACKS,
    ids=[f"{w}-{t}" for w, t, _ in SUBSCRIBE_ATTACKS],
)
def test_limited_users_cannot_subscribe_outside_their_rights(
    mq: Access, who: str, template: str, why: str
) -> None:
    destination = template.format(channel=mq.channel, other=new_channel(), victim=fresh("V"))
    client = Client(mq.tls, mq.node if who == "node" else mq.reader, mq.ca)
    try:
        error = client.subscribe(destination, "attack")
        assert error is not None, f"{why}: SUBSCRIBE to {destination} was confirmed"
        if mq.kind == "rabbitmq":
            # RabbitMQ ends the session after any ERROR (it sends FIN; over TLS stomp.py
            # 9.0.0 does not notice and the socket sits in CLOSE-WAIT): nothing arrives.
            return
        # ActiveMQ keeps it open: a marker on the user's own channel, sent after a
        # message to the refused destination, shows that message was not delivered.
        assert client.subscribe(f"/topic/{mq.channel}", "own") is None, client.errors
        marker = f"marker-{uuid.uuid4().hex}"
        sender = Client(mq.plain)
        try:
            assert sender.send(destination, "secret") is None, sender.errors
            assert sender.send(f"/topic/{mq.channel}", marker) is None, sender.errors
        finally:
            sender.close()
        wait_for(lambda: marker in client.bodies, ANSWER_S, "the marker on the own channel")
        assert client.bodies == [marker], f"{why}: something arrived from {destination}"
    finally:
        client.close()


@pytest.mark.parametrize("who", ["reader", "node"])
def test_limited_users_cannot_resume_another_channels_durable_subscription(
    mq: Access, who: str
) -> None:
    """With the victim node's own client-id, subscription name and id (ActiveMQ keys
    durable subscriptions on the first two, RabbitMQ its queue on the id)."""
    other = new_channel()
    victim = fresh("V")
    owner = Client(mq.plain, client_id=f"vesper-{victim}")
    headers = durable_headers(other, victim)
    assert owner.subscribe(f"/topic/{other}", f"vesper-{other}-{victim}", **headers) is None
    owner.close()
    try:
        sender = Client(mq.plain)
        assert sender.send(f"/topic/{other}", "secret", persistent="true") is None
        sender.close()
        error = attempt(
            mq,
            who,
            lambda c: c.subscribe(f"/topic/{other}", f"vesper-{other}-{victim}", **headers),
            client_id=f"vesper-{victim}",
        )
        assert error is not None, f"the {who} user resumed a durable subscription on {other}"
    finally:
        _delete_durable(mq, other, victim)


def _delete_durable(mq: Access, channel: str, branch: str) -> None:
    """Best effort: delete a node's durable subscription, so none piles up on the broker
    (RabbitMQ: UNSUBSCRIBE with durable:true; ActiveMQ: UNSUBSCRIBE, then again with the
    subscription name)."""
    sub_id = f"vesper-{channel}-{branch}"
    headers = durable_headers(channel, branch)
    try:
        owner = Client(mq.plain, client_id=f"vesper-{branch}")
        try:
            owner.subscribe(f"/topic/{channel}", sub_id, **headers)
            if mq.kind == "activemq":
                owner.unsubscribe(sub_id)
                owner.unsubscribe(
                    sub_id, **{"activemq.subscriptionName": headers["activemq.subscriptionName"]}
                )
            else:
                owner.unsubscribe(sub_id, durable="true")
        finally:
            owner.close()
    except (stomp.exception.StompException, OSError, AssertionError):
        pass


@pytest.mark.parametrize("who", ["reader", "node"])
def test_limited_users_cannot_bind_another_channels_queue_to_their_own(
    mq: Access, who: str
) -> None:
    """RabbitMQ names a topic subscription's queue from ``x-queue-name`` when given: a
    user allowed one channel subscribes to it with the queue of another channel's node
    as that name, to read (and with a node user, write into) that queue. Vesper names
    its queues under the channel's prefix, so the permissions refuse it."""
    other = new_channel()
    victim = fresh("V")
    victim_queue = subscription_queue(other, victim)
    owner = Client(mq.plain, client_id=f"vesper-{victim}")
    headers = durable_headers(other, victim)
    assert owner.subscribe(f"/topic/{other}", f"vesper-{other}-{victim}", **headers) is None
    owner.close()
    attacker = Client(mq.tls, mq.node if who == "node" else mq.reader, mq.ca)
    try:
        sender = Client(mq.plain)
        assert sender.send(f"/topic/{other}", "secret", persistent="true") is None
        sender.close()
        # RabbitMQ's durable style only (an ActiveMQ subscriptionName without client-id
        # would leave a durable subscription behind on every run).
        takeover = {"durable": "true", "auto-delete": "false", "x-queue-name": victim_queue}
        error = attacker.subscribe(f"/topic/{mq.channel}", f"takeover-{victim}", **takeover)
        if error is None:
            marker = f"marker-{uuid.uuid4().hex}"
            sender = Client(mq.plain)
            assert sender.send(f"/topic/{mq.channel}", marker) is None
            sender.close()
            wait_for(lambda: marker in attacker.bodies or attacker.closed, ANSWER_S, "marker")
        assert "secret" not in attacker.bodies, f"the {who} user read {other}'s queue"
    finally:
        attacker.close()
        _delete_durable(mq, other, victim)


def test_wildcard_subscriptions_get_nothing_from_other_channels(mq: Access) -> None:
    """RabbitMQ checks the binding key (``#`` is no channel of the reader); ActiveMQ
    accepts ``*`` for the channel's sake but then delivers only what the user may
    read, destination by destination."""
    other = new_channel()
    patterns = ["/topic/#", "/topic/*"] if mq.kind == "rabbitmq" else ["/topic/>", "/topic/*"]
    for pattern in patterns:
        for who in ("reader", "node"):
            client = Client(mq.tls, mq.node if who == "node" else mq.reader, mq.ca)
            try:
                error = client.subscribe(pattern, "wild")
                if mq.kind != "activemq" or pattern != "/topic/*":
                    assert error is not None, f"{who} subscribed to {pattern}"
                    continue
                assert error is None, error
                sender = Client(mq.plain)
                marker = f"marker-{uuid.uuid4().hex}"
                assert sender.send(f"/topic/{other}", "secret") is None
                assert sender.send(f"/topic/{mq.channel}", marker) is None
                sender.close()
                wait_for(lambda c=client, m=marker: m in c.bodies, ANSWER_S, "the marker")
                assert "secret" not in client.bodies, f"{who} read {other} through {pattern}"
            finally:
                client.close()
