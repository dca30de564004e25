"""Test certificates made with ``cryptography``: a CA, certificates it signs, and
self-signed ones nobody trusts. For any TLS test (broker, HTTP, node-to-broker).

    ca = make_ca(tmp_path)                               # ca.cert_path, ca.key_path
    cert, key = make_cert(ca, tmp_path)                  # server: 127.0.0.1, localhost
    client_cert, client_key = make_cert(ca, tmp_path, name="node-a", client=True)
    rogue_cert, rogue_key = self_signed(tmp_path)        # same hosts, untrusted

Keys are EC P-256 (fast to make); files are PEM, keys unencrypted and mode 0600.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
VALIDITY = datetime.timedelta(days=2)


@dataclasses.dataclass(frozen=True)
class CA:
    """A certificate authority: its certificate, key, and their PEM files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def make_ca(directory: Path, name: str = "Vesper Test CA") -> CA:
    """A new CA; writes ``<name>.ca.pem`` and ``<name>.ca.key`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(name), _name(name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    stem = name.replace(" ", "-").lower()
    cert_path, key_path = directory / f"{stem}.ca.pem", directory / f"{stem}.ca.key"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return CA(cert, key, cert_path, key_path)


def make_cert(
    ca: CA,
    directory: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    name: str = "server",
    client: bool = False,
) -> tuple[Path, Path]:
    """A certificate signed by ``ca`` for ``hosts`` (as SAN); returns (cert, key) paths.

    ``client=True`` makes a client certificate (extended key usage clientAuth) instead
    of a server one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        _builder(_name(name), ca.cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path


def self_signed(
    directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS, name: str = "self-signed"
) -> tuple[Path, Path]:
    """A self-signed certificate for ``hosts``: valid in form, trusted by nobody."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(name), _name(name), key.public_key())
        .add_extension(_san(hosts), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.tlsutil DIR``: a CA and a server certificate it signs for
    127.0.0.1 and localhost, for brokers started by scripts (scripts/brokers/*.sh):
    ``DIR/vesper-test-ca.ca.pem`` (trust this), ``DIR/server.pem``, ``DIR/server.key``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tests.tlsutil DIR", file=sys.stderr)
        return 2
    ca = make_ca(Path(args[0]))
    cert, key = make_cert(ca, Path(args[0]))
    print(f"{ca.cert_path}\n{cert}\n{key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
