"""Passcode hashes: scrypt with a random salt, its parameters kept in the hash string.

The string is ``scrypt$n=16384,r=8,p=1$<salt base64>$<hash base64>``, so the cost can
be raised later without invalidating older entries: each entry is verified with the
parameters it was made with. scrypt is memory-hard (16 MiB per check at these
parameters), which makes guessing a stolen users file expensive; the price is about
50 ms of CPU per CONNECT, paid on a worker thread, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os

from vesper.broker.errors import BrokerConfigError

#: The defaults of ``adduser``: the parameters the scrypt paper and OWASP give for
#: interactive logins.
DEFAULT_N = 2**14
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
#: Refused when reading a file: a hash that asks for more memory than this (n * r * 128
#: bytes per check) would let a bad users file exhaust the broker.
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclasses.dataclass(frozen=True)
class PasscodeHash:
    """One scrypt hash with its salt and cost parameters."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def make(
        cls, passcode: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
    ) -> PasscodeHash:
        """Hash ``passcode`` with a new random salt."""
        salt = os.urandom(SALT_BYTES)
        return cls(n, r, p, salt, cls._scrypt(passcode, salt, n, r, p, HASH_BYTES))

    @classmethod
    def parse(cls, text: str) -> PasscodeHash:
        """Read a ``scrypt$n=..,r=..,p=..$salt$hash`` string; BrokerConfigError if bad."""
        fix = "make one with `vesper broker adduser`"
        parts = text.split("$")
        if len(parts) != 4 or parts[0] != "scrypt":
            raise BrokerConfigError(
                f"passcode hash {text[:40]!r} is not scrypt$n=..,r=..,p=..$salt$hash: {fix}"
            )
        try:
            params = dict(item.split("=", 1) for item in parts[1].split(","))
            n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
            if set(params) != {"n", "r", "p"}:
                raise ValueError("unknown parameter")
            salt, digest = _unb64(parts[2]), _unb64(parts[3])
        except (ValueError, KeyError, binascii.Error) as exc:
            raise BrokerConfigError(
                f"passcode hash {text[:40]!r} cannot be read ({exc}): {fix}"
            ) from None
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r * p > MAX_SCRYPT_MEMORY:
            raise BrokerConfigError(
                f"passcode hash parameters n={n},r={r},p={p} are out of range (n a power"
                f" of 2, at most {MAX_SCRYPT_MEMORY >> 20} MiB per check): {fix}"
            )
        if len(salt) < 8 or len(digest) < 16:
            raise BrokerConfigError(f"passcode hash {text[:40]!r} is too short: {fix}")
        return cls(n, r, p, salt, digest)

    def __str__(self) -> str:
        params = f"n={self.n},r={self.r},p={self.p}"
        return f"scrypt${params}${_b64(self.salt)}${_b64(self.digest)}"

    def verify(self, passcode: str) -> bool:
        """True when ``passcode`` hashes to this digest (constant-time comparison)."""
        candidate = self._scrypt(passcode, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(candidate, self.digest)

    @staticmethod
    def _scrypt(passcode: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
        # OpenSSL refuses above 32 MiB unless told; allow what the parameters need.
        maxmem = 128 * n * r * (p + 1) + 1024 * 1024
        return hashlib.scrypt(
            passcode.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen
        )
