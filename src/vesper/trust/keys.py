"""A node's Ed25519 identity: the key pair that signs its changesets and control messages.

A public key travels as ``ed25519:<base64url, no padding>`` (its own id: receivers need
nothing else to check a signature, and trust decides whether the key is the right one for
the branch). The private key file holds the PKCS#8 PEM that ``vesper keygen`` prints; it
is created with mode 0600 and refused when others can read it, as ssh does.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vesper.errors import ConfigError

KEY_PREFIX = "ed25519:"
DEFAULT_KEY_FILE = "node.key"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class NodeKey:
    """The private key of this node; signs with :meth:`sign`."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public: str = KEY_PREFIX + _b64(raw)
        """The public key as it travels: ``ed25519:<base64url>``."""

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> str:
        return _b64(self._private.sign(data))

    def pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, data: bytes, where: str) -> NodeKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{where}: the key is {type(key).__name__}, not Ed25519")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path, create: bool) -> tuple[NodeKey, bool]:
        """The key in ``path``; if it does not exist and ``create``, a new one written
        there with mode 0600. Returns the key and whether it was created."""
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            if not create:
                raise ConfigError(
                    f"replication_key_file: {path} does not exist (make one with "
                    f"'vesper keygen > {path}' and chmod 600 it)"
                ) from None
            key = cls.generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(key.pem())
                out.flush()
                os.fsync(out.fileno())
            return key, True
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"replication_key_file: {path} is readable by others (mode "
                f"{stat.S_IMODE(mode):o}); run 'chmod 600 {path}'"
            )
        return cls.from_pem(path.read_bytes(), f"replication_key_file {path}"), False


def parse_public_key(text: object) -> Ed25519PublicKey:
    """A public key from its ``ed25519:<base64url>`` form; ValueError if it is not one."""
    if not isinstance(text, str) or not text.startswith(KEY_PREFIX) or len(text) > 100:
        raise ValueError(f"not an Ed25519 public key: {str(text)[:60]!r}")
    try:
        raw = _unb64(text[len(KEY_PREFIX) :])
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        raise ValueError(f"not an Ed25519 public key: {text[:60]!r}") from None


def is_public_key(text: object) -> bool:
    try:
        parse_public_key(text)
    except ValueError:
        return False
    return True


def verify(public: Ed25519PublicKey, signature: object, data: bytes) -> bool:
    if not isinstance(signature, str) or len(signature) > 100:
        return False
    try:
        public.verify(_unb64(signature), data)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True
