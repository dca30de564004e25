"""STOMP over TLS (``--tls-cert``/``--tls-key``), with client certificates required by
``--tls-ca``; certificates come from tests/tlsutil.py."""

from __future__ import annotations

import socket
import ssl

import pytest
import stomp

from tests.broker.clients import Client, make_users
from tests.tlsutil import make_ca, make_cert, self_signed
from vesper.broker import BrokerConfig, BrokerConfigError
from vesper.broker.tls import server_context

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    server = make_cert(ca, d)
    good_client = make_cert(ca, d, name="node-a", client=True)
    rogue = self_signed(d)
    rogue_client = self_signed(d, name="rogue-client")
    return {"ca": ca, "server": server, "client": good_client, "rogue": rogue,
            "rogue_client": rogue_client}  # fmt: skip


def tls_client(port, ca, cert=None, host=HOST, **connect):
    c = Client(port, host=host)
    cert_file, key_file = cert if cert else (None, None)
    c.conn.set_ssl(
        for_hosts=[(host, port)], ca_certs=str(ca), cert_file=cert_file, key_file=key_file
    )
    return c


@pytest.fixture
def tls_clients():
    made: list[Client] = []

    def make(*args, **kw) -> Client:
        c = tls_client(*args, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        # stomp.py's TLS reader never notices a closed stream (it takes an empty read
        # for "no data yet"), so a bare close would leave its thread waiting: its own
        # disconnect() stops the thread.
        if c.conn.is_connected():
            c.conn.disconnect()
        else:
            c.close()


def test_trusted_certificate_connects_with_login(start_broker, tls_clients, pki, tmp_path):
    users = make_users(tmp_path / "u.toml", {"a": {"passcode": "pw", "write": ["/queue/*"]}})
    cert, key = pki["server"]
    broker = start_broker(users=users, tls_cert=cert, tls_key=key)
    assert broker.broker.url == f"stomp+ssl://{HOST}:{broker.port}"
    for host in (HOST, "localhost"):  # both are in the certificate's SAN
        c = tls_clients(broker.port, pki["ca"].cert_path, host=host).connect(
            login="a", passcode="pw"
        )
        c.send_sync("/queue/tls", "over tls")
    assert broker.stats()["queues"]["/queue/tls"] == 2


def test_untrusted_certificate_is_refused(start_broker, tls_clients, pki) -> None:
    cert, key = pki["rogue"]
    broker = start_broker(tls_cert=cert, tls_key=key)
    c = tls_clients(broker.port, pki["ca"].cert_path)
    with pytest.raises(stomp.exception.ConnectFailedException):
        c.connect()
    assert broker.stats()["connections"] == 0


def test_plain_stomp_on_a_tls_port_gets_nothing(start_broker, raw, pki) -> None:
    cert, key = pki["server"]
    broker = start_broker(tls_cert=cert, tls_key=key)
    r = raw(broker.port)
    r.frame("CONNECT", {"accept-version": "1.2"})
    try:
        frames = r.read_until_closed(timeout=10)
    except TimeoutError:
        frames = []
    assert not [f for f in frames if f.command == "CONNECTED"]


def handshake_then_connect(port: int, ca, cert=None) -> list[bytes]:
    """A raw TLS client: what the broker answers to CONNECT (b"" when it closed)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    replies = []
    with socket.create_connection((HOST, port), timeout=10) as plain:
        try:
            with context.wrap_socket(plain, server_hostname=HOST) as sock:
                sock.sendall(b"CONNECT\naccept-version:1.2\n\n\x00")
                replies.append(sock.recv(65536))
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            replies.append(b"")
    return replies


def test_client_certificate_required_with_tls_ca(start_broker, tls_clients, pki) -> None:
    cert, key = pki["server"]
    broker = start_broker(tls_cert=cert, tls_key=key, tls_ca=pki["ca"].cert_path)
    good = tls_clients(broker.port, pki["ca"].cert_path, cert=pki["client"]).connect()
    good.send_sync("/queue/mtls", "client certificate accepted")
    assert handshake_then_connect(broker.port, pki["ca"].cert_path, pki["client"])[0].startswith(
        b"CONNECTED"
    )
    # Without a certificate, or with one the CA did not sign: never a CONNECTED. (With
    # TLS 1.3 the refusal comes after the client's side of the handshake: the first
    # read fails or finds the stream closed.)
    for rogue in (None, pki["rogue_client"]):
        assert handshake_then_connect(broker.port, pki["ca"].cert_path, rogue) == [b""]
    good.send_sync("/queue/mtls", "still served")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused(start_broker, pki) -> None:
    cert, key = pki["server"]
    broker = start_broker(tls_cert=cert, tls_key=key)
    context = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        socket.create_connection((HOST, broker.port), timeout=10) as sock,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(sock, server_hostname=HOST)
    assert server_context(cert, key).minimum_version == ssl.TLSVersion.TLSv1_2


def test_broker_process_over_tls(broker_process, tls_clients, pki) -> None:
    cert, key = pki["server"]
    broker = broker_process(tls_cert=cert, tls_key=key)
    assert broker.scheme == "stomp+ssl"
    assert f"listening on stomp+ssl://{HOST}:{broker.port}" in broker.log_text()
    c = tls_clients(broker.port, pki["ca"].cert_path).connect()
    c.send_sync("/queue/p", "x")
    broker.set_faults(drop=0.5)  # the control helpers speak TLS too
    assert broker.status()["queues"]["/queue/p"] == 1
    broker.reset_faults()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_cert": "c.pem"}, "--tls-cert and --tls-key go together"),
        ({"tls_ca": "ca.pem"}, "--tls-ca checks client certificates"),
    ],
)
def test_incomplete_tls_settings(settings, message) -> None:
    with pytest.raises(BrokerConfigError, match=message):
        BrokerConfig(port=0, allow_anonymous=True, **settings)


def test_unusable_tls_files_name_the_file(tmp_path, pki) -> None:
    cert, key = pki["server"]
    with pytest.raises(BrokerConfigError, match="does not exist"):
        server_context(tmp_path / "missing.pem", key)
    with pytest.raises(BrokerConfigError, match="matching PEM private key"):
        server_context(cert, pki["rogue"][1])  # a key of another certificate
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(BrokerConfigError, match=r"--tls-ca .*garbage\.pem"):
        server_context(cert, key, garbage)
