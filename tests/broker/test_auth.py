"""Optional login/passcode checking from a users file."""

from __future__ import annotations

import pytest

from vesper.broker import BrokerConfigError
from vesper.broker.auth import Users


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("# login:passcode\nvesper:s3cret:with:colons\n\nother:pw\n")
    return path


def test_right_credentials_connect(start_broker, client, users_file) -> None:
    broker = start_broker(users_file=users_file)
    c = client(broker.port, login="vesper", passcode="s3cret:with:colons")
    c.send_sync("/queue/a", "in")


@pytest.mark.parametrize(
    "credentials",
    [{"login": "vesper", "passcode": "wrong"}, {"login": "nobody", "passcode": "pw"}, {}],
)
def test_wrong_or_missing_credentials_are_refused(start_broker, client, users_file, credentials):
    broker = start_broker(users_file=users_file)
    c = client(broker.port, connect=False)
    c.connect(wait=False, **credentials)
    assert c.wait_error().headers["message"] == "authentication failed"
    c.wait_disconnected()


def test_without_users_file_anyone_connects(broker, client) -> None:
    client(broker.port, login="whoever", passcode="whatever").send_sync("/queue/a", "in")


def test_bad_users_files(tmp_path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("no colon here\n")
    with pytest.raises(BrokerConfigError, match="line 1"):
        Users.load(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n")
    with pytest.raises(BrokerConfigError, match="names no user"):
        Users.load(empty)
    with pytest.raises(BrokerConfigError, match="cannot read"):
        Users.load(tmp_path / "missing.txt")
