"""Optional login/passcode checking from a users file.

The file holds one ``login:passcode`` per line (the passcode may contain ``:``);
blank lines and lines starting with ``#`` are ignored. It exists so tests can check
that Vesper sends credentials; it is not a security boundary (plain text, no TLS).
"""

from __future__ import annotations

import hmac
from pathlib import Path

from vesper.broker.errors import BrokerConfigError


class Users:
    """Known logins and their passcodes."""

    def __init__(self, passcodes: dict[str, str]) -> None:
        self._passcodes = dict(passcodes)

    @classmethod
    def load(cls, path: Path) -> Users:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BrokerConfigError(f"cannot read users file {path}: {exc}") from exc
        passcodes: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            login, sep, passcode = line.partition(":")
            if not sep or not login:
                raise BrokerConfigError(
                    f"users file {path} line {number}: expected login:passcode, got {line!r}"
                )
            passcodes[login] = passcode
        if not passcodes:
            raise BrokerConfigError(f"users file {path} names no user: add login:passcode lines")
        return cls(passcodes)

    def check(self, login: str | None, passcode: str | None) -> bool:
        """True when ``login`` exists and ``passcode`` matches it."""
        expected = self._passcodes.get(login or "")
        # compare_digest even on a miss, so timing does not reveal which logins exist.
        ok = hmac.compare_digest((expected or "").encode(), (passcode or "").encode())
        return expected is not None and ok
