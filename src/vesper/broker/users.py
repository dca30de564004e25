"""Who may connect, and with which rights: the ``--users`` TOML file.

::

    [users."node-a"]
    passcode = "scrypt$n=16384,r=8,p=1$<salt>$<hash>"
    read = ["/topic/orders", "/topic/orders.*", "/queue/orders.node-a"]
    write = ["/topic/orders", "/topic/orders.*", "/queue/orders.*"]
    admin = []

``vesper broker adduser`` writes entries; see ``permissions`` for the patterns and
``passcodes`` for the hash. Checking a passcode is deliberately slow (scrypt), so it
runs on a worker thread; an unknown login costs the same as a known one, so the
timing of a refusal does not tell which logins exist.
"""

from __future__ import annotations

import dataclasses
import logging
import stat
import tomllib
from pathlib import Path
from typing import Any

from vesper.broker.errors import BrokerConfigError
from vesper.broker.passcodes import PasscodeHash
from vesper.broker.permissions import ALL, RIGHTS, Permissions

log = logging.getLogger("vesper.broker")

#: The name durable subscriptions made by anonymous clients are recorded under.
ANONYMOUS = ""
_USER_KEYS = frozenset({"passcode", *RIGHTS})


def check_login(name: str) -> str:
    """A login must fit a STOMP CONNECT header (no control characters, no NUL)."""
    if not name or len(name) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BrokerConfigError(
            f"login {name[:60]!r} must be 1 to 256 characters without control characters"
        )
    return name


@dataclasses.dataclass(frozen=True)
class User:
    """An authenticated client (or the anonymous one)."""

    name: str
    permissions: Permissions
    passcode: PasscodeHash | None = None

    @property
    def anonymous(self) -> bool:
        return self.name == ANONYMOUS

    @property
    def label(self) -> str:
        """For log lines and ERROR messages."""
        return "anonymous" if self.anonymous else repr(self.name)

    def may(self, right: str, destination: str) -> bool:
        return self.permissions.allows(right, destination)


ANONYMOUS_USER = User(ANONYMOUS, ALL)


class Users:
    """The users of one broker, loaded from a TOML file."""

    def __init__(self, users: dict[str, User], path: Path | None = None) -> None:
        self._users = dict(users)
        self.path = path
        # Unknown logins are checked against this, so they take as long as known ones.
        self._decoy = PasscodeHash.make("decoy passcode of an unknown login")

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, name: str) -> bool:
        return name in self._users

    @classmethod
    def load(cls, path: Path) -> Users:
        """Read a users file; BrokerConfigError naming the file and the bad entry."""
        data = read_users_file(path)
        users = {name: _user(path, name, entry) for name, entry in data.items()}
        if not users:
            raise BrokerConfigError(
                f"users file {path} names no user: add one with `vesper broker adduser {path} NAME`"
            )
        mode = stat.S_IMODE(Path(path).stat().st_mode)
        if mode & 0o077:
            log.warning(
                "broker: users file %s is readable by others (mode %04o): chmod 600 it",
                path,
                mode,
            )
        return cls(users, Path(path))

    def authenticate(self, login: str | None, passcode: str | None) -> User | None:
        """The user when ``login`` exists and ``passcode`` matches; None otherwise.

        Slow on purpose (scrypt): call it off the event loop.
        """
        user = self._users.get(login or "")
        stored = user.passcode if user is not None else None
        ok = (stored or self._decoy).verify(passcode or "")
        return user if ok and user is not None else None


def read_users_file(path: Path) -> dict[str, Any]:
    """The ``users`` table of a users file (empty when the file has none)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise BrokerConfigError(
            f"cannot read users file {path}: it does not exist (create it with"
            f" `vesper broker adduser {path} NAME`)"
        ) from None
    except OSError as exc:
        raise BrokerConfigError(f"cannot read users file {path}: {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BrokerConfigError(f"users file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"users"}
    if unknown:
        raise BrokerConfigError(
            f"users file {path}: unknown top-level key {sorted(unknown)[0]!r};"
            ' every entry goes under [users."NAME"]'
        )
    users = data.get("users", {})
    if not isinstance(users, dict):
        raise BrokerConfigError(f'users file {path}: users must be a table of [users."NAME"]')
    return users


def _user(path: Path, name: str, entry: Any) -> User:
    where = f"users file {path}, user {name!r}: "
    try:
        check_login(name)
    except BrokerConfigError as exc:
        raise BrokerConfigError(where + str(exc)) from None
    if not isinstance(entry, dict):
        raise BrokerConfigError(where + "must be a table with passcode, read, write, admin")
    unknown = set(entry) - _USER_KEYS
    if unknown:
        raise BrokerConfigError(
            where + f"unknown key {sorted(unknown)[0]!r}: use passcode, read, write, admin"
        )
    passcode = entry.get("passcode")
    if not isinstance(passcode, str):
        raise BrokerConfigError(where + 'needs passcode = "scrypt$..." (use adduser)')
    try:
        hashed = PasscodeHash.parse(passcode)
    except BrokerConfigError as exc:
        raise BrokerConfigError(where + str(exc)) from None
    rights: dict[str, tuple[str, ...]] = {}
    for right in RIGHTS:
        patterns = entry.get(right, [])
        if not isinstance(patterns, list):
            raise BrokerConfigError(where + f"{right} must be a list of destination patterns")
        rights[right] = tuple(patterns)
    try:
        permissions = Permissions(**rights)
    except BrokerConfigError as exc:
        raise BrokerConfigError(where + str(exc)) from None
    return User(name, permissions, hashed)
