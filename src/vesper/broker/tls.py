"""The listener's TLS: a server ``SSLContext`` from the ``--tls-*`` files.

TLS 1.2 is the minimum (1.0 and 1.1 are deprecated by RFC 8996). With ``--tls-ca`` the
broker requires a client certificate signed by that CA; the certificate only opens
the TLS session, STOMP ``login``/``passcode`` still decide who the client is.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from vesper.broker.errors import BrokerConfigError


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """A server context for ``cert``/``key``; BrokerConfigError naming a bad file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise BrokerConfigError(
            f"--tls-cert {cert} / --tls-key {key}: {exc.filename} does not exist"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise BrokerConfigError(
            f"--tls-cert {cert} / --tls-key {key} cannot be used ({exc}): give a PEM"
            " certificate chain and its matching PEM private key"
        ) from None
    if ca is not None:
        try:
            context.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerConfigError(
                f"--tls-ca {ca} cannot be used ({exc}): give the PEM certificate of the"
                " authority that signs client certificates"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
