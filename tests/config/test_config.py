import dataclasses
import os
from pathlib import Path

import pytest

from vesper.config import (
    Settings,
    StorageLocation,
    known_variables,
    load_settings,
    parse_file,
    parse_overrides,
    parse_storage_url,
)
from vesper.config.settings import DEFAULT_API_MAX_BODY_BYTES
from vesper.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REPLICATING = {
    "save_history": True,
    "replication_hosts": [("localhost", 61613)],
    "replication_channel": "orders",
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(**values: object) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping(values)
    message = str(caught.value)
    assert "\n" not in message
    return message


# Defaults


def test_defaults() -> None:
    settings = Settings()
    assert settings.branch_id == settings.trunk_id == "0A"
    assert settings.save_history is False
    assert settings.replication_hosts is None
    assert settings.channels == ()
    assert settings.send_stomp_ack is True
    assert settings.replication_broker is None
    assert settings.replication_heartbeat_ms == 1000
    assert settings.storage_url is None
    assert settings.work_dir == "vesper_work"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.api_max_body_bytes == DEFAULT_API_MAX_BODY_BYTES == 16 * 1024 * 1024
    assert settings.log_level == "info"


def test_table_defaults_match_the_dataclass() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert set(fields) == {v.name for v in known_variables()}
    for variable in known_variables():
        assert fields[variable.name] == variable.default, variable.name
        assert variable.description and variable.type and variable.example


def test_branch_id_defaults_to_trunk_id() -> None:
    assert Settings(trunk_id="T1").branch_id == "T1"
    assert Settings(trunk_id="T1", branch_id="B2").branch_id == "B2"


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


# File formats


def test_vesper_style(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "node.conf",
        "# a node\n"
        "branch_id = '0B'  # this one\n"
        "save_history = True\n"
        "replication_hosts = [\n"
        "    ('broker1', 61613),  # primary\n"
        "    ('broker2', 61614),\n"
        "]\n"
        "replication_channel = 'orders'; port = 8001\n",
    )
    settings = load_settings(path)
    assert settings.branch_id == "0B"
    assert settings.replication_hosts == (("broker1", 61613), ("broker2", 61614))
    assert settings.channels == ("orders",)
    assert settings.port == 8001


def test_vesper_style_with_py_extension_and_pathlike(tmp_path: Path) -> None:
    path = write(tmp_path, "node.py", "saveHistory = True\n")
    assert parse_file(path) == {"saveHistory": True}
    assert load_settings(os.fspath(path)).save_history is True


def test_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "node.toml",
        'branchId = "0C"\nsave_history = true\n'
        'replication_hosts = [["h", 61613]]\nreplication_channels = ["a", "b"]\n',
    )
    settings = load_settings(path)
    assert settings.branch_id == "0C"
    assert settings.replication_hosts == (("h", 61613),)
    assert settings.channels == ("a", "b")


def test_json(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "node.json",
        '{"branch_id": "0D", "saveHistory": true, "replication_hosts": "h1:1,h2:2",'
        ' "replication_channel": "c", "replication_login": null}',
    )
    settings = load_settings(path)
    assert settings.replication_hosts == (("h1", 1), ("h2", 2))
    assert settings.replication_login is None


def test_unknown_extension_with_json_content(tmp_path: Path) -> None:
    path = write(tmp_path, "node.cfg", '\n  {"port": 9000}\n')
    assert parse_file(path) == {"port": 9000}


def test_toml_spelling_in_a_vesper_style_file_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "node.cfg", "port = 9000\nsave_history = true\n")
    with pytest.raises(ConfigError) as caught:
        parse_file(path)
    assert str(caught.value) == (
        f"{path}:2: save_history: expected a literal (string, number, True/False/None, "
        "list, tuple or dict), got 'true' (write True, or name the file .toml/.json)"
    )


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "empty.conf", "# nothing\n")) == Settings()


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_bytes(b'\xef\xbb\xbf{"port": 1}')
    assert load_settings(path).port == 1


# File errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*nope\.conf"):
        load_settings(path)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        parse_file(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "node.conf"
    path.write_bytes(b"host = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_file(path)


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("node.conf", "port = 1\nhost = 'x\n", r"node\.conf:2: invalid syntax"),
        ("node.toml", "port = 1\nport = \n", r"node\.toml: invalid TOML: .*line 2"),
        ("node.json", '{"port": 1,\n "host": }', r"node\.json:2: invalid JSON"),
        ("node.json", "[1, 2]", r"node\.json: expected a JSON object"),
        ("node.json", '{"port": 1, "port": 2}', r"node\.json: 'port' appears twice"),
        ("node.conf", "port = 1\nport = 2\n", r"node\.conf:2: port is already set on line 1"),
        ("node.conf", "a\x00 = 1\n", r"node\.conf"),
    ],
)
def test_unparsable_files(tmp_path: Path, name: str, text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse_file(write(tmp_path, name, text))


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("port = 1\nimport os\n", 2),
        ("from os import system\n", 1),
        ("port = int('1')\n", 1),
        ("port = 1\n\nsettings.port = 1\n", 3),
        ("port = 1\nport += 1\n", 2),
        ("port = host = 1\n", 1),
        ("port, host = 1, 'h'\n", 1),
        ("port: int = 1\n", 1),
        ("'a docstring'\n", 1),
        ("def f():\n    pass\n", 1),
        ("port = 1\nsave_history = true\n", 2),
        ("[section]\nport = 1\n", 1),
        ("work_dir = some_name\n", 1),
    ],
)
def test_vesper_style_rejects_anything_but_literal_assignments(
    tmp_path: Path, text: str, line: int
) -> None:
    path = write(tmp_path, "node.conf", text)
    with pytest.raises(ConfigError, match=rf"node\.conf:{line}: "):
        load_settings(path)


def test_malicious_vesper_style_file_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for text in (
        "__import__('os').system('touch X')\n",
        "port = __import__('os').system('touch X')\n",
        "port = (lambda: __import__('os').system('touch X'))()\n",
    ):
        path = write(tmp_path, "evil.conf", text)
        with pytest.raises(ConfigError, match=r"evil\.conf:1: .*__import__"):
            load_settings(path)
    assert not (tmp_path / "X").exists()


# Aliases and unknown names


@pytest.mark.parametrize(
    ("alias", "name", "value"),
    [("branchId", "branch_id", "0B"), ("saveHistory", "save_history", True)],
)
def test_aliases(tmp_path: Path, alias: str, name: str, value: object) -> None:
    assert getattr(Settings.from_mapping({alias: value}), name) == value
    assert getattr(load_settings(overrides={alias: value}), name) == value
    assert getattr(load_settings(overrides=[f"--{alias}={value}"]), name) == value
    path = write(tmp_path, "node.conf", f"{alias} = {value!r}\n")
    assert getattr(load_settings(path), name) == value
    assert any(alias in v.aliases for v in known_variables() if v.name == name)


def test_name_and_alias_together_is_an_error(tmp_path: Path) -> None:
    message = error_of(branch_id="a", branchId="b")
    assert message == "branch_id: given twice, as 'branch_id' and 'branchId'; keep one"
    path = write(tmp_path, "node.conf", "save_history = True\nsaveHistory = True\n")
    with pytest.raises(ConfigError, match=r"node\.conf: save_history: given twice"):
        load_settings(path)
    with pytest.raises(ConfigError, match="given twice"):
        load_settings(overrides=["--branch_id=a", "--branchId=b"])


def test_override_alias_replaces_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "node.conf", "branch_id = 'fromfile'\n")
    assert load_settings(path, ["--branchId=override"]).branch_id == "override"


@pytest.mark.parametrize(
    ("given", "suggested"),
    [
        ("replication_host", "replication_hosts"),
        ("savehistory", "saveHistory"),
        ("Port", "port"),
        ("replication_chanel", "replication_channel"),
        ("workdir", "work_dir"),
    ],
)
def test_unknown_name_suggests_the_closest(given: str, suggested: str) -> None:
    assert error_of(**{given: 1}) == (
        f"unknown configuration variable {given!r} (did you mean {suggested!r}?)"
    )


def test_unknown_name_without_a_close_match() -> None:
    assert error_of(frobnicate=1) == "unknown configuration variable 'frobnicate'"


def test_unknown_name_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node.conf", "replication_host = 'h:1'\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == (
        f"{path}: unknown configuration variable 'replication_host' "
        "(did you mean 'replication_hosts'?)"
    )


def test_unknown_name_in_overrides() -> None:
    with pytest.raises(ConfigError, match=r"'prot' \(did you mean 'port'\?\)"):
        load_settings(overrides=["--prot=1"])


# Validation of each variable


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("branch_id", "", "1 to 64 characters of A-Z a-z 0-9 _ -"),
        ("branch_id", "a b", "1 to 64 characters"),
        ("branch_id", "x" * 65, "1 to 64 characters"),
        ("branch_id", 12, "1 to 64 characters"),
        ("trunk_id", "0.A", "1 to 64 characters"),
        ("trunk_id", None, "1 to 64 characters"),
        ("save_history", "yes", "True or False"),
        ("save_history", 1, "True or False"),
        ("replication_hosts", 61613, "a list of (host, port) pairs"),
        ("replication_hosts", "localhost", "'host:port'"),
        ("replication_hosts", "localhost:0", "port from 1 to 65535"),
        ("replication_hosts", "localhost:65536", "port from 1 to 65535"),
        ("replication_hosts", "localhost:http", "'host:port'"),
        ("replication_hosts", ":61613", "'host:port'"),
        ("replication_hosts", [("localhost", "61613")], "(host, port) pair"),
        ("replication_hosts", [("localhost", True)], "(host, port) pair"),
        ("replication_hosts", [("localhost", 1, 2)], "(host, port) pair"),
        ("replication_hosts", [("bad host", 1)], "(host, port) pair"),
        ("replication_hosts", [(1, 1)], "(host, port) pair"),
        ("replication_hosts", ("localhost", 99999), "(host, port) pair"),
        ("replication_hosts", ("localhost", "x"), "'host:port'"),
        ("replication_channel", "", "a non-empty channel name of A-Z a-z 0-9 _ . -"),
        ("replication_channel", "a/b", "channel name"),
        ("replication_channel", 7, "channel name"),
        ("replication_channels", "a", "a list of channel names or None"),
        ("replication_channels", ["a", "b c"], "channel name"),
        ("replication_channels", ["a", "a"], "distinct channels"),
        ("send_stomp_ack", "false", "True or False"),
        ("send_stomp_ack", None, "True or False"),
        (
            "replication_broker",
            "kafka",
            "one of 'activemq', 'rabbitmq', 'vesper', 'coilmq' or None",
        ),
        ("replication_broker", 1, "one of 'activemq'"),
        ("replication_queue_type", "stream", "one of 'classic', 'quorum'"),
        ("replication_login", 5, "a string or None"),
        ("replication_heartbeat_ms", -1, "an integer >= 0"),
        ("replication_heartbeat_ms", 1.5, "an integer >= 0"),
        ("replication_heartbeat_ms", False, "an integer >= 0"),
        ("replication_key_file", 5, "a string or None"),
        ("replication_trusted_keys", "0A", "a mapping of branch id"),
        ("replication_trusted_keys", ["0A"], "a mapping of branch id"),
        ("replication_peer_expiry", 0, "an integer >= 1"),
        ("replication_max_pending", 0, "an integer >= 1"),
        ("storage_url", "postgres://x", "'sqlite:///relative.db', 'sqlite:////abs/path.db'"),
        ("storage_url", "sqlite://x.db", "'sqlite:///relative.db'"),
        ("storage_url", "sqlite:///", "'sqlite:///relative.db'"),
        ("storage_url", "sqlite:////var/lib/", "'sqlite:///relative.db'"),
        ("storage_url", "mem:///x", "'mem://'"),
        ("storage_url", "sqlite:///a.db?synchronous=off", "'?synchronous=normal|full'"),
        ("storage_url", "sqlite:///a.db?mode=ro", "'?synchronous=normal|full'"),
        ("storage_url", "sqlite:///a.db?synchronous", "'?synchronous=normal|full'"),
        (
            "storage_url",
            "sqlite:///a.db?synchronous=full&synchronous=full",
            "'?synchronous=normal|full'",
        ),
        ("storage_url", 1, "'mem://'"),
        ("work_dir", "", "a non-empty string"),
        ("work_dir", None, "a non-empty string"),
        ("host", " ", "a non-empty string"),
        ("host", 127, "a non-empty string"),
        ("port", "abc", "an integer from 0 to 65535"),
        ("port", -1, "an integer from 0 to 65535"),
        ("port", 65536, "an integer from 0 to 65535"),
        ("port", True, "an integer from 0 to 65535"),
        ("port", "8000", "an integer from 0 to 65535"),
        ("api_max_body_bytes", 0, "an integer >= 1"),
        ("api_max_body_bytes", 1e6, "an integer >= 1"),
        ("replication_hosts", "stomp+tcp://h:1", "'stomp+ssl://host:port'"),
        ("replication_tls", "yes", "True or False"),
        ("replication_tls_ca", 5, "a string or None"),
        ("replication_tls_cert", 5, "a string or None"),
        ("replication_tls_key", 5, "a string or None"),
        ("replication_tls_verify", None, "True or False"),
        ("api_metrics_public", 1, "True or False"),
        ("api_allow_anonymous", "true", "True or False"),
        ("api_tls_cert", 5, "a string or None"),
        ("api_tls_key", 5, "a string or None"),
        ("api_header_timeout", 0, "a number of seconds > 0"),
        ("api_body_timeout", -1, "a number of seconds > 0"),
        ("api_idle_timeout", True, "a number of seconds > 0"),
        ("api_max_connections", 0, "an integer >= 1"),
        ("api_feed_buffer_bytes", 0, "an integer >= 1"),
        ("indexes", ["a..b"], "a list of property paths"),
        ("replication_peer_gone_after", 0, "an integer >= 1"),
        ("replication_ready_timeout", -5, "an integer >= 1"),
        ("replication_message_ttl", -1, "an integer >= 0"),
        ("replication_message_ttl", "7d", "an integer >= 0"),
        ("log_format", "xml", "one of 'text', 'json'"),
        ("log_level", "trace", "one of 'debug', 'info', 'warning', 'error'"),
        ("log_level", None, "one of 'debug'"),
    ],
)
def test_invalid_values(name: str, value: object, expected: str) -> None:
    message = error_of(**{name: value})
    assert message.startswith(f"{name}: expected "), message
    assert expected in message
    items = [value, *value] if isinstance(value, list | tuple) else [value]
    assert any(message.endswith(f"got {item!r}") for item in items) or "twice" in message


def test_exact_message_names_variable_value_and_expectation() -> None:
    assert error_of(port="abc") == "port: expected an integer from 0 to 65535, got 'abc'"


def test_every_variable_has_a_validation_test() -> None:
    tested = {"replication_passcode"}  # its own test below: the value must not be shown
    source = Path(__file__).read_text(encoding="utf-8")
    tested |= {v.name for v in known_variables() if f'("{v.name}", ' in source}
    assert tested == {v.name for v in known_variables()}


def test_long_values_are_shortened_in_messages() -> None:
    message = error_of(host=["x" * 500])
    assert len(message) < 200 and message.endswith("...")


def test_passcode_is_never_shown() -> None:
    message = error_of(replication_passcode=123456789)
    assert message == "replication_passcode: expected a string or None, got a value of type int"
    settings = Settings(replication_login="u", replication_passcode="hunter2")
    assert "hunter2" not in repr(settings)
    assert settings.replication_passcode == "hunter2"


# Accepted forms and normalisation


@pytest.mark.parametrize(
    "hosts",
    [
        [("a", 1), ("b", 65535)],
        [["a", 1], ["b", 65535]],
        (("a", 1), ("b", 65535)),
        ["a:1", "b:65535"],
        "a:1,b:65535",
        " a:1 , b:65535 ",
        "a:1,b:65535,",
    ],
)
def test_replication_hosts_forms(hosts: object) -> None:
    settings = Settings.from_mapping({**REPLICATING, "replication_hosts": hosts})
    assert settings.replication_hosts == (("a", 1), ("b", 65535))


def test_replication_hosts_single_pair() -> None:
    for pair in (("h", 1), ["h", 1]):
        settings = Settings.from_mapping({**REPLICATING, "replication_hosts": pair})
        assert settings.replication_hosts == (("h", 1),)


def test_replication_hosts_ipv6_and_empty() -> None:
    settings = Settings.from_mapping({**REPLICATING, "replication_hosts": "[::1]:61613"})
    assert settings.replication_hosts == (("::1", 61613),)
    for empty in (None, [], "", " "):
        assert Settings(replication_hosts=empty).replication_hosts is None  # type: ignore[arg-type]


def test_channels_property() -> None:
    assert Settings.from_mapping(REPLICATING).channels == ("orders",)
    hub = {**REPLICATING, "replication_channel": None, "replication_channels": ["a", "b"]}
    settings = Settings.from_mapping(hub)
    assert settings.channels == ("a", "b")
    assert settings.replication_channels == ("a", "b")
    assert Settings(replication_channels=[]).replication_channels is None  # type: ignore[arg-type]


def test_choices_ignore_case() -> None:
    settings = Settings.from_mapping({"log_level": "DEBUG", "replication_broker": "RabbitMQ"})
    assert (settings.log_level, settings.replication_broker) == ("debug", "rabbitmq")


def test_zero_values_are_accepted() -> None:
    settings = Settings(port=0, replication_heartbeat_ms=0)
    assert (settings.port, settings.replication_heartbeat_ms) == (0, 0)


# Storage URL


def test_effective_storage_url() -> None:
    assert Settings().effective_storage_url == "sqlite:///vesper_work/0A.db"
    settings = Settings(branch_id="0B", work_dir="/var/lib/vesper/")
    assert settings.effective_storage_url == "sqlite:////var/lib/vesper/0B.db"
    assert Settings(storage_url="mem://").effective_storage_url == "mem://"
    url = "sqlite:///n.db?synchronous=normal"
    assert Settings(storage_url=url).effective_storage_url == url


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("mem://", StorageLocation(None)),
        ("sqlite:///node.db", StorageLocation("node.db")),
        ("sqlite:///data/node.db", StorageLocation("data/node.db")),
        ("sqlite:////abs/node.db", StorageLocation("/abs/node.db")),
        ("sqlite:///n.db?synchronous=full", StorageLocation("n.db", "full")),
        ("sqlite:////n.db?synchronous=normal", StorageLocation("/n.db", "normal")),
    ],
)
def test_parse_storage_url(url: str, location: StorageLocation) -> None:
    assert parse_storage_url(url) == location
    assert Settings(storage_url=url).storage_url == url


# Cross-field rules


def test_replication_needs_save_history() -> None:
    message = error_of(**{**REPLICATING, "save_history": False})
    assert "save_history is False" in message
    assert "set save_history = True" in message


def test_replication_needs_a_channel() -> None:
    message = error_of(**{**REPLICATING, "replication_channel": None})
    assert "replication_hosts is set without a channel" in message
    assert "replication_channel" in message


def test_a_channel_needs_hosts() -> None:
    for channel in ({"replication_channel": "c"}, {"replication_channels": ["a"]}):
        message = error_of(save_history=True, **channel)
        assert "replication_hosts is not" in message


def test_channel_and_channels_together_is_an_error() -> None:
    message = error_of(**REPLICATING, replication_channels=["a"])
    assert "both set" in message


# Overrides


def test_parse_overrides_values() -> None:
    assert parse_overrides(
        [
            "--port=8001",
            "--save_history=True",
            "--send_stomp_ack=false",
            "--replication_login=null",
            "--replication_hosts=[('h', 61613)]",
            "--log_level=debug",
            "--work_dir=/tmp/node dir",
            "--storage_url=sqlite:///n.db?synchronous=full",
            "--host=0.0.0.0",
            '--replication_channels=["a", "b"]',
            "--api_max_body_bytes=1_000",
            "--unknown=x=y",
        ]
    ) == {
        "port": 8001,
        "save_history": True,
        "send_stomp_ack": False,
        "replication_login": None,
        "replication_hosts": [("h", 61613)],
        "log_level": "debug",
        "work_dir": "/tmp/node dir",
        "storage_url": "sqlite:///n.db?synchronous=full",
        "host": "0.0.0.0",
        "replication_channels": ["a", "b"],
        "api_max_body_bytes": 1000,
        "unknown": "x=y",
    }


def test_overrides_keep_numbers_as_text_for_string_variables() -> None:
    assert parse_overrides(
        ["--branch_id=12", "--branchId=01", "--replication_passcode=1234", "--trunk_id=True"]
    ) == {"branch_id": "12", "branchId": "01", "replication_passcode": "1234", "trunk_id": "True"}
    assert parse_overrides(["--branch_id='0B'", "--replication_login=None"]) == {
        "branch_id": "0B",
        "replication_login": None,
    }


def test_overrides_later_wins_and_empty_value() -> None:
    assert parse_overrides(["--port=1", "--port=2", "--replication_hosts="]) == {
        "port": 2,
        "replication_hosts": "",
    }


def test_a_string_that_is_not_a_bool_stays_invalid() -> None:
    with pytest.raises(ConfigError, match="save_history: expected True or False, got 'yes'"):
        load_settings(overrides=["--save_history=yes"])


@pytest.mark.parametrize(
    ("arg", "pattern"),
    [
        ("--save_history", r"'--save_history' has no value: write --save_history=<value>"),
        ("port=1", r"expected an override '--name=value', got 'port=1'"),
        ("-port=1", "expected an override"),
        ("--=1", "has no name"),
    ],
)
def test_bad_override_syntax(arg: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse_overrides([arg])


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "node.conf",
        "port = 1\nhost = 'h'\napi_allow_anonymous = True\n" + _replicating_lines(),
    )
    settings = load_settings(path, ["--port=2", "--replication_hosts=b1:1,b2:2"])
    assert (settings.port, settings.host) == (2, "h")
    assert settings.replication_hosts == (("b1", 1), ("b2", 2))
    assert load_settings(path, {"port": 3}).port == 3


def test_overrides_can_turn_replication_off(tmp_path: Path) -> None:
    path = write(tmp_path, "node.conf", _replicating_lines())
    settings = load_settings(path, ["--replication_hosts=", "--replication_channel=None"])
    assert settings.replication_hosts is None and settings.channels == ()


def test_a_single_string_is_not_a_list_of_overrides() -> None:
    with pytest.raises(TypeError):
        load_settings(overrides="--port=1")


def _replicating_lines() -> str:
    return "save_history = True\nreplication_hosts = 'h:1'\nreplication_channel = 'c'\n"


# Documentation


def test_docs_mention_every_variable_and_alias() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    for variable in known_variables():
        assert f"| `{variable.name}` |" in docs, variable.name
        for alias in variable.aliases:
            assert f"`{alias}`" in docs, alias


def test_trusted_keys_must_be_public_keys_as_keygen_prints_them() -> None:
    from vesper.trust.keys import NodeKey

    good = NodeKey.generate().public
    message = error_of(replication_trusted_keys={"0A": [good, "ed25519:AAAA"]})
    assert message.startswith("replication_trusted_keys: '0A' has 'ed25519:AAAA'"), message
    settings = Settings(replication_trusted_keys={"0A": good, "0B": [good]})
    assert settings.replication_trusted_keys == {"0A": (good,), "0B": (good,)}


# Access: TLS hosts and API tokens


def test_stomp_ssl_entries_use_tls_and_plain_ones_do_not() -> None:
    settings = Settings(
        save_history=True,
        replication_hosts="stomp+ssl://b1:61614,stomp://b2:61613,b3:61613",
        replication_channel="c",
    )
    assert settings.replication_hosts == (("b1", 61614), ("b2", 61613), ("b3", 61613))
    assert [settings.broker_tls(h) for h in settings.replication_hosts] == [True, False, False]
    every = Settings(
        save_history=True, replication_hosts="b1:1", replication_channel="c", replication_tls=True
    )
    assert every.broker_tls(("b1", 1))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "example.com", "::"])
def test_a_host_other_than_loopback_needs_a_token(host: str) -> None:
    message = error_of(host=host)
    assert "api_token is not set" in message and "api_allow_anonymous" in message
    assert Settings(host=host, api_token="t" * 16).api_token == ("t" * 16,)
    assert Settings(host=host, api_allow_anonymous=True).api_token is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_serves_without_a_token(host: str) -> None:
    assert Settings(host=host).api_token is None


def test_token_rules_across_variables() -> None:
    assert "api_read_token is set without api_token" in error_of(api_read_token="r" * 16)
    shared = error_of(api_token=["a" * 16, "b" * 16], api_read_token="b" * 16)
    assert "share a token" in shared and "b" * 16 not in shared
    assert "api_tls_cert is set without api_tls_key" in error_of(api_tls_cert="c.pem")
    assert "replication_tls_key is set without replication_tls_cert" in error_of(
        replication_tls_key="k.pem"
    )


def test_tokens_are_never_shown() -> None:
    secret = "s3cret-token-0123456789"
    settings = Settings(api_token=[secret], api_read_token="r" * 20)
    assert secret not in repr(settings) and "r" * 20 not in repr(settings)
    message = error_of(api_token=[secret, "short"])
    assert secret not in message and "short" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("api_token", "short"),
        ("api_token", "x" * 15 + " "),
        ("api_token", "with space inside it"),
        ("api_token", 12345678901234567),
        ("api_token", {"a": "b" * 16}),
        ("api_read_token", ["é" * 20]),
    ],
)
def test_bad_tokens_are_refused_without_showing_them(name: str, value: object) -> None:
    # A valid api_token beside a bad api_read_token, so the rule across the two stays quiet.
    others = {"api_token": "t" * 16} if name != "api_token" else {}
    message = error_of(**{name: value}, **others)
    assert message.startswith(f"{name}: expected a token of at least 16 printable ASCII")
    assert "got a value of type" in message and str(value) not in message
