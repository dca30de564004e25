"""``vesper broker adduser``: the TOML users file it writes, and what it refuses."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import tomllib

import pytest

from vesper.broker import BrokerConfigError
from vesper.broker.adduser import add_user, read_passcode, toml_string
from vesper.broker.users import Users
from vesper.cli.main import main as vesper_main


def adduser(*argv: str, passcode: str = "s3cret\n") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vesper.broker", "adduser", *argv, "--passcode-stdin"],
        input=passcode,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_round_trip_through_the_cli(tmp_path, start_broker, client) -> None:
    path = tmp_path / "users.toml"
    done = adduser(
        str(path), "node-a", "--read", "/topic/orders", "--read", "/topic/orders.*",
        "--write", "/topic/orders",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "created" in done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = tomllib.loads(path.read_text())["users"]["node-a"]
    assert entry["read"] == ["/topic/orders", "/topic/orders.*"]
    assert entry["write"] == ["/topic/orders"] and entry["admin"] == []
    assert entry["passcode"].startswith("scrypt$n=16384,r=8,p=1$")
    assert "s3cret" not in path.read_text()
    broker = start_broker(users=path)
    c = client(broker.port, login="node-a", passcode="s3cret")
    c.send_sync("/topic/orders", "allowed")


def test_duplicate_is_refused_and_replace_overwrites(tmp_path) -> None:
    path = tmp_path / "users.toml"
    assert adduser(str(path), "a", "--read", "/topic/x").returncode == 0
    again = adduser(str(path), "a", passcode="other\n")
    assert again.returncode == 2
    assert "user 'a' already exists" in again.stderr and "--replace" in again.stderr
    users = Users.load(path)
    assert users.authenticate("a", "s3cret") is not None  # untouched
    replaced = adduser(str(path), "a", "--replace", "--write", "/queue/y", passcode="other\n")
    assert replaced.returncode == 0, replaced.stderr
    users = Users.load(path)
    assert users.authenticate("a", "s3cret") is None
    user = users.authenticate("a", "other")
    assert user.may("write", "/queue/y") and not user.may("read", "/topic/x")


def test_adding_keeps_the_rest_of_the_file_and_its_mode(tmp_path) -> None:
    path = tmp_path / "users.toml"
    add_user(path, "first", "pw1", read=["/topic/a"])
    path.write_text("# my own comment\n" + path.read_text())
    path.chmod(0o640)
    add_user(path, "second", "pw2")
    text = path.read_text()
    assert text.startswith("# my own comment\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    users = Users.load(path)
    assert users.authenticate("first", "pw1") and users.authenticate("second", "pw2")


@pytest.mark.parametrize(
    "name",
    ['quote"d', "back\\slash", "unicodé-ß-日本", "tab\tname".replace("\t", " "), "a.b=c [d]"],
)
def test_names_are_escaped_for_toml(tmp_path, name) -> None:
    path = tmp_path / "users.toml"
    add_user(path, name, 'pass"with\\odd', read=['/topic/"odd"\\name'])
    users = Users.load(path)
    user = users.authenticate(name, 'pass"with\\odd')
    assert user is not None and user.name == name
    assert user.may("read", '/topic/"odd"\\name')


def test_toml_string_escapes_control_characters() -> None:
    value = 'a"b\\c\nd\te\x01\x7f'
    assert tomllib.loads(f"v = {toml_string(value)}")["v"] == value


@pytest.mark.parametrize(
    ("name", "passcode", "patterns", "message"),
    [
        ("", "pw", [], "1 to 256 characters"),
        ("new\nline", "pw", [], "without control characters"),
        ("a", "", [], "passcode is empty"),
        ("a", "line\nbreak", [], "line break"),
        ("a", "pw", ["topic/no-slash"], "must be a string starting with /"),
    ],
)
def test_bad_input_is_refused(tmp_path, name, passcode, patterns, message) -> None:
    path = tmp_path / "users.toml"
    with pytest.raises(BrokerConfigError, match=message):
        add_user(path, name, passcode, read=patterns)
    assert not path.exists()


def test_a_file_that_is_not_a_users_file_is_not_touched(tmp_path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("[database]\nurl = 'x'\n")
    with pytest.raises(BrokerConfigError, match="unknown top-level key 'database'"):
        add_user(path, "a", "pw")
    assert path.read_text() == "[database]\nurl = 'x'\n"


def test_prompt_asks_twice(monkeypatch) -> None:
    answers = iter(["typed", "typed"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert read_passcode(False) == "typed"
    answers = iter(["one", "two"])
    with pytest.raises(BrokerConfigError, match="the two passcodes differ"):
        read_passcode(False)
    assert read_passcode(True, io.StringIO("piped\nignored\n")) == "piped"


def test_vesper_broker_adduser_dispatches_through_the_main_cli(tmp_path, monkeypatch):
    path = tmp_path / "users.toml"
    monkeypatch.setattr("sys.stdin", io.StringIO("via-main\n"))
    status = vesper_main(
        ["broker", "adduser", str(path), "m", "--passcode-stdin", "--admin", "/**"]
    )
    assert status == 0
    assert Users.load(path).authenticate("m", "via-main").may("admin", "/vesper-control/x")
