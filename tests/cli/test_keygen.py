"""``vesper keygen`` and the key file a node reads."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vesper.errors import ConfigError
from vesper.trust.keys import NodeKey, parse_public_key


def keygen(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "vesper.cli.main", "keygen", *args],
        cwd=cwd,
        capture_output=True,
        timeout=60,
    )


def test_keygen_writes_a_private_key_file_of_mode_0600_and_prints_the_public_key(
    tmp_path: Path,
) -> None:
    done = keygen("--out", "n1.key", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "n1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public = done.stderr.decode().strip().removeprefix("public key: ")
    parse_public_key(public)
    key, created = NodeKey.load_or_create(path, create=False)
    assert key.public == public and not created


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    (tmp_path / "n1.key").write_bytes(b"precious")
    done = keygen("--out", "n1.key", cwd=tmp_path)
    assert done.returncode == 2 and b"never overwrites" in done.stderr
    assert (tmp_path / "n1.key").read_bytes() == b"precious"


def test_keygen_to_stdout_leaves_only_the_private_key_there(tmp_path: Path) -> None:
    done = keygen(cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert b"public key: ed25519:" in done.stderr


def test_a_node_key_is_made_once_with_mode_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "work" / "N1.key"
    first, created = NodeKey.load_or_create(path, create=True)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created = NodeKey.load_or_create(path, create=True)
    assert not created and again.public == first.public


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n1.key"
    NodeKey.load_or_create(path, create=True)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        NodeKey.load_or_create(path, create=True)


def test_a_configured_key_file_must_exist_and_hold_an_ed25519_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vesper keygen"):
        NodeKey.load_or_create(tmp_path / "missing.key", create=False)
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key")
    os.chmod(bad, 0o600)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        NodeKey.load_or_create(bad, create=False)
