"""Logins: scrypt passcode hashes in a TOML users file, checked off the event loop."""

from __future__ import annotations

import statistics
import time

import pytest

from tests.broker.clients import make_users
from vesper.broker import BrokerConfig, BrokerConfigError, BrokerThread
from vesper.broker.passcodes import PasscodeHash
from vesper.broker.users import Users

EVERYTHING = {"read": ["/**"], "write": ["/**"]}


@pytest.fixture
def users_file(tmp_path):
    return make_users(
        tmp_path / "users.toml",
        {
            "vesper": {"passcode": "s3cret:with:colons", **EVERYTHING},
            "other": {"passcode": "pw", **EVERYTHING},
        },
    )


def test_hash_string_carries_its_parameters_and_verifies() -> None:
    h = PasscodeHash.make("right", n=1024, r=8, p=1)
    text = str(h)
    assert text.startswith("scrypt$n=1024,r=8,p=1$")
    again = PasscodeHash.parse(text)
    assert again == h
    assert again.verify("right")
    assert not again.verify("wrong")
    assert not again.verify("")
    assert PasscodeHash.make("right", n=1024).salt != h.salt  # a fresh salt each time


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plain-text-passcode", "is not scrypt"),
        ("bcrypt$n=1,r=1,p=1$AAAA$AAAA", "is not scrypt"),
        ("scrypt$n=16384,r=8$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "cannot be read"),
        ("scrypt$n=1000,r=8,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "out of range"),
        ("scrypt$n=1048576,r=8,p=64$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "out of range"),
        ("scrypt$n=16384,r=8,p=1$!!$AAAA", "cannot be read"),
        ("scrypt$n=16384,r=8,p=1$AAAA$AAAA", "too short"),
    ],
)
def test_bad_hash_strings_are_refused(text, message) -> None:
    with pytest.raises(BrokerConfigError, match=message):
        PasscodeHash.parse(text)


def test_authenticate_known_unknown_and_wrong(users_file) -> None:
    users = Users.load(users_file)
    assert users.authenticate("vesper", "s3cret:with:colons").name == "vesper"
    assert users.authenticate("vesper", "s3cret") is None
    assert users.authenticate("vesper", None) is None
    assert users.authenticate("nobody", "pw") is None
    assert users.authenticate(None, None) is None
    assert users.authenticate("other", "s3cret:with:colons") is None  # not the other's


def test_unknown_login_costs_as_much_as_a_wrong_passcode(users_file) -> None:
    """A refusal must not tell whether the login exists: both run one scrypt."""
    users = Users.load(users_file)

    def timing(login: str) -> float:
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            users.authenticate(login, "wrong")
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    known, unknown = timing("vesper"), timing("no-such-user")
    assert 0.5 < unknown / known < 2.0, (known, unknown)
    assert known > 0.005  # a real key derivation, not a dictionary lookup


def test_right_credentials_connect(start_broker, client, users_file) -> None:
    broker = start_broker(users=users_file)
    c = client(broker.port, login="vesper", passcode="s3cret:with:colons")
    c.send_sync("/queue/a", "in")


@pytest.mark.parametrize(
    "credentials",
    [
        {"login": "vesper", "passcode": "wrong"},
        {"login": "nobody", "passcode": "pw"},
        {"login": "vesper"},
        {},
    ],
)
def test_wrong_or_missing_credentials_are_refused(
    start_broker, client, users_file, credentials, caplog
):
    broker = start_broker(users=users_file)
    c = client(broker.port, connect=False)
    c.connect(wait=False, **credentials)
    assert c.wait_error().headers["message"] == "authentication failed"
    c.wait_disconnected()
    assert any(r.levelname == "WARNING" and "refused" in r.getMessage() for r in caplog.records)


def test_frames_pipelined_behind_connect_wait_for_the_check(start_broker, raw, users_file):
    """A hostile client sends SEND right behind a bad CONNECT: it must never be routed."""
    broker = start_broker(users=users_file)
    bad = raw(broker.port)
    bad.send(
        b"CONNECT\naccept-version:1.2\nlogin:vesper\npasscode:wrong\n\n\x00"
        b"SEND\ndestination:/queue/sneak\nreceipt:r\n\nsneaked\x00"
    )
    frames = bad.read_until_closed()
    assert [f.command for f in frames] == ["ERROR"]
    assert "/queue/sneak" not in broker.stats()["queues"]
    good = raw(broker.port)
    good.send(
        b"CONNECT\naccept-version:1.2\nlogin:other\npasscode:pw\n\n\x00"
        b"SEND\ndestination:/queue/fine\nreceipt:r\n\nok\x00"
    )
    assert good.read().command == "CONNECTED"
    assert good.read().headers["receipt-id"] == "r"
    assert broker.stats()["queues"]["/queue/fine"] == 1


def test_logins_do_not_block_other_clients(start_broker, client, raw, users_file) -> None:
    """scrypt runs on worker threads: a flood of CONNECTs leaves the loop free."""
    broker = start_broker(users=users_file)
    c = client(broker.port, login="other", passcode="pw")
    flood = [raw(broker.port, timeout=60) for _ in range(40)]
    start = time.monotonic()
    for r in flood:
        r.frame("CONNECT", {"accept-version": "1.2", "login": "vesper", "passcode": "bad"})
    c.send_sync("/queue/meanwhile", "served")
    served = time.monotonic() - start
    for r in flood:
        assert r.read_until_closed()[-1].headers["message"] == "authentication failed"
    refused_all = time.monotonic() - start  # 40 checks on two threads: about a second
    assert served < refused_all / 2, (served, refused_all)


def test_no_users_and_no_anonymous_is_refused() -> None:
    with pytest.raises(BrokerConfigError, match=r"--users FILE .* or --allow-anonymous"):
        BrokerConfig(port=0)


def test_anonymous_clients_need_allow_anonymous(start_broker, client, users_file) -> None:
    strict = start_broker(users=users_file)
    c = client(strict.port, connect=False)
    c.connect(wait=False)
    assert c.wait_error().headers["message"] == "authentication failed"
    both = start_broker(users=users_file, allow_anonymous=True)
    client(both.port).send_sync("/queue/a", "anonymous is in")
    logged = client(both.port, connect=False)
    logged.connect(wait=False, login="vesper", passcode="wrong")
    assert logged.wait_error().headers["message"] == "authentication failed"


def test_allow_anonymous_only_accepts_anyone(start_broker, client) -> None:
    broker = start_broker(allow_anonymous=True)
    client(broker.port, login="whoever", passcode="whatever").send_sync("/queue/a", "in")


def test_allow_anonymous_on_a_public_address_warns(caplog) -> None:
    with BrokerThread(BrokerConfig(host="0.0.0.0", port=0, allow_anonymous=True)):
        pass
    assert any(
        r.levelname == "WARNING" and "--allow-anonymous on 0.0.0.0" in r.getMessage()
        for r in caplog.records
    )


def test_loopback_anonymous_does_not_warn(broker, caplog) -> None:
    assert not [r for r in caplog.records if "--allow-anonymous on" in r.getMessage()]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not toml [", "is not valid TOML"),
        ("[other]\nx = 1\n", "unknown top-level key 'other'"),
        ("# nobody\n", "names no user"),
        ('[users.a]\nread = ["/topic/a"]\n', "needs passcode"),
        ('[users.a]\npasscode = "x"\n', "is not scrypt"),
        ('[users.a]\npasscode = "{h}"\nreed = []\n', "unknown key 'reed'"),
        ('[users.a]\npasscode = "{h}"\nread = "/topic/a"\n', "read must be a list"),
        ('[users.a]\npasscode = "{h}"\nwrite = ["topic/a"]\n', "must be a string starting with /"),
        ('[users.""]\npasscode = "{h}"\n', "1 to 256 characters"),
    ],
)
def test_bad_users_files(tmp_path, content, message) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(content.replace("{h}", str(PasscodeHash.make("x", n=1024))))
    with pytest.raises(BrokerConfigError, match=message) as info:
        Users.load(bad)
    assert str(bad) in str(info.value)


def test_missing_users_file_names_the_fix(tmp_path) -> None:
    with pytest.raises(BrokerConfigError, match=r"does not exist .*adduser"):
        Users.load(tmp_path / "missing.toml")


def test_a_users_file_others_can_read_is_warned_about(users_file, caplog) -> None:
    users_file.chmod(0o644)
    Users.load(users_file)
    assert any("readable by others (mode 0644)" in r.getMessage() for r in caplog.records)
