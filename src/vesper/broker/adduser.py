"""``vesper broker adduser FILE NAME``: add a user to a users file (or replace one).

``tomllib`` only reads TOML, so the file is written here, by hand, with TOML's string
escaping. A new user is appended, so the rest of the file (comments included) stays as
it was; ``--replace`` rewrites the whole file from what it holds, without comments.
Either way the file is replaced atomically, created with mode 0600 (it holds passcode
hashes) and an existing file keeps its mode.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import stat
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from vesper.broker.errors import BrokerConfigError
from vesper.broker.passcodes import PasscodeHash
from vesper.broker.permissions import RIGHTS, compile_patterns
from vesper.broker.users import check_login, read_users_file

HEADER = (
    "# Users of the Vesper STOMP broker (vesper broker --users FILE); see docs/broker.md.\n"
    "# Written by `vesper broker adduser`: passcodes are scrypt hashes, never plain text.\n"
)
NEW_FILE_MODE = 0o600

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string, quotes included."""
    out = []
    for c in value:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def render_user(name: str, entry: dict[str, Any]) -> str:
    """One ``[users."NAME"]`` table."""
    lines = [f"[users.{toml_string(name)}]", f"passcode = {toml_string(entry['passcode'])}"]
    for right in RIGHTS:
        patterns = ", ".join(toml_string(p) for p in entry.get(right, []))
        lines.append(f"{right} = [{patterns}]")
    return "\n".join(lines) + "\n"


def add_user(
    path: Path,
    name: str,
    passcode: str,
    read: Iterable[str] = (),
    write: Iterable[str] = (),
    admin: Iterable[str] = (),
    replace: bool = False,
) -> bool:
    """Add (or with ``replace``, overwrite) one user; True when the file was created."""
    check_login(name)
    if not passcode:
        raise BrokerConfigError("the passcode is empty: give one of at least one character")
    if any(c in passcode for c in "\n\r\0"):
        raise BrokerConfigError("a passcode cannot contain a line break or NUL (STOMP headers)")
    entry: dict[str, Any] = {"passcode": str(PasscodeHash.make(passcode))}
    for right, patterns in (("read", read), ("write", write), ("admin", admin)):
        entry[right] = list(patterns)
        compile_patterns(entry[right], f"--{right}: ")
    path = Path(path)
    exists = path.exists()
    if not exists:
        _write(path, HEADER + "\n" + render_user(name, entry), NEW_FILE_MODE)
        return True
    users = read_users_file(path)  # refuses a file that is not a users file
    mode = stat.S_IMODE(path.stat().st_mode)
    if name in users and not replace:
        raise BrokerConfigError(
            f"user {name!r} already exists in {path}: pass --replace to change its"
            " passcode and permissions"
        )
    if name in users:
        users[name] = entry
        text = HEADER + "".join("\n" + render_user(n, e) for n, e in users.items())
    else:
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text += "\n"
        text += "\n" + render_user(name, entry)
    _write(path, text, mode)
    return False


def _write(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically; the new file never exists with a wider mode."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="users file (TOML); created if absent")
    parser.add_argument("name", help="login of the user")
    parser.add_argument(
        "--passcode-stdin",
        action="store_true",
        help="read the passcode from the first line of standard input (default: prompt)",
    )
    for right, what in (
        ("read", "SUBSCRIBE to"),
        ("write", "SEND to"),
        ("admin", "administer (delete others' durable subscriptions, /vesper-control/)"),
    ):
        parser.add_argument(
            f"--{right}",
            action="append",
            default=[],
            metavar="PATTERN",
            help=f"destinations the user may {what}; repeatable (e.g. /topic/orders.*)",
        )
    parser.add_argument(
        "--replace", action="store_true", help="overwrite the user if it already exists"
    )


def read_passcode(from_stdin: bool, stdin: TextIO | None = None) -> str:
    """The passcode from a pipe (first line), or typed twice at a prompt."""
    if from_stdin:
        line = (stdin or sys.stdin).readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("passcode: ")
    if getpass.getpass("passcode again: ") != first:
        raise BrokerConfigError("the two passcodes differ: run adduser again")
    return first


def run(args: argparse.Namespace) -> int:
    try:
        passcode = read_passcode(args.passcode_stdin)
        created = add_user(
            args.file, args.name, passcode, args.read, args.write, args.admin, args.replace
        )
    except BrokerConfigError as exc:
        print(f"vesper broker adduser: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vesper broker adduser: cannot write {args.file}: {exc}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("vesper broker adduser: no passcode given", file=sys.stderr)
        return 2
    verb = "created" if created else "updated"
    print(f"{verb} {args.file}: user {args.name!r}", file=sys.stderr)
    return 0
