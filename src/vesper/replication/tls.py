"""TLS towards the brokers: the settings a link needs, checked once at start.

stomp.py builds its own ``SSLContext`` from file names at every connect, so a missing
or mismatched file would only show as a failed connection, retried forever. Building
a context here first turns it into one configuration error naming the variable.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from vesper.errors import ConfigError


@dataclass(frozen=True)
class BrokerTls:
    """How a link wraps its socket when the broker is reached over TLS."""

    ca_file: str | None = None
    """PEM certificate authorities for the broker's certificate; None: the system's."""
    cert_file: str | None = None
    """PEM client certificate for brokers that require one; None: none is sent."""
    key_file: str | None = None
    """PEM private key of ``cert_file``."""
    verify: bool = True
    """Check the certificate chain and the host name; False only for tests."""

    def check(self) -> None:
        """Raise ConfigError naming the setting whose file cannot be used."""
        self.context()

    def context(self) -> ssl.SSLContext:
        """The client context stomp.py builds from the same settings."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_file is None:
            context.load_default_certs()
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.ca_file is not None:
            try:
                context.load_verify_locations(self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"replication_tls_ca: cannot read certificate authorities from "
                    f"{self.ca_file!r}: {exc}"
                ) from None
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"replication_tls_cert, replication_tls_key: cannot load the client "
                    f"certificate {self.cert_file!r} with key {self.key_file!r}: {exc}"
                ) from None
        return context

    def diagnose(self, host: tuple[str, int], timeout: float) -> str | None:
        """Why a TLS handshake with ``host`` fails, or None if it succeeds now.

        stomp.py reports a failed handshake only as ``ConnectFailedException``; one
        more handshake, made only after a failure, recovers the reason for the log.
        """
        try:
            with (
                socket.create_connection(host, timeout) as raw,
                self.context().wrap_socket(raw, server_hostname=host[0]),
            ):
                return None
        except ssl.SSLError as exc:
            return f"TLS handshake failed: {exc.reason or exc}"
        except (OSError, ConfigError) as exc:
            return f"{type(exc).__name__}: {exc}"
