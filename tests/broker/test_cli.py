"""``python -m vesper.broker`` (the same add_arguments/run as ``vesper broker``)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.broker.clients import wait_until
from vesper.broker import BrokerProcess
from vesper.broker.cli import add_arguments, config_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_and_every_option(tmp_path) -> None:
    config = config_from_args(parse("--allow-anonymous"))
    assert (config.host, config.port, config.data_dir) == ("127.0.0.1", 61613, None)
    assert config.max_memory == 256 * 1024 * 1024 and config.durable_expiry == 30 * 86400
    assert config.max_subscriptions_per_connection == 1000 and config.users is None
    argv = (
        f"--host 0.0.0.0 --port 0 --data-dir {tmp_path} --users {tmp_path / 'u'}"
        " --allow-anonymous --tls-cert c.pem --tls-key k.pem --tls-ca ca.pem"
        " --max-frame-bytes 1000 --max-pending-bytes 2000 --prefetch 7 --control"
        " --max-memory 64MiB --max-subscriptions-per-connection 5 --durable-expiry 12h"
        " --drop 0.1 --duplicate 0.2 --delay-ms 50 --paused --fault-seed 3"
    )
    config = config_from_args(parse(*argv.split()))
    assert config.data_dir == tmp_path and config.max_frame_bytes == 1000
    assert config.max_pending_bytes == 2000 and config.default_prefetch == 7 and config.control
    assert config.users == tmp_path / "u" and config.allow_anonymous
    assert (config.tls_cert, config.tls_key, config.tls_ca) == (
        Path("c.pem"),
        Path("k.pem"),
        Path("ca.pem"),
    )
    assert config.max_memory == 64 * 1024 * 1024 and config.durable_expiry == 43200
    assert config.max_subscriptions_per_connection == 5
    f = config.faults
    settings = (f.drop, f.duplicate, f.delay, f.delay_ms, f.paused, f.seed)
    assert settings == (0.1, 0.2, 1.0, 50, True, 3)


def test_logs_real_port_and_stops_cleanly_on_sigterm_and_sigint(tmp_path, client) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        broker = BrokerProcess(
            log_path=tmp_path / f"{sig}.log", control=False, allow_anonymous=True
        ).start()
        try:
            line = f"vesper broker listening on stomp://127.0.0.1:{broker.port}"
            assert line in broker.log_text()
            c = client(broker.port)
            c.send_sync("/queue/x", "up")
            broker._proc.send_signal(sig)
            assert broker._proc.wait(30) == 0
        finally:
            broker.kill()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            [],
            "pass --users FILE (make one with `vesper broker adduser FILE NAME`) or"
            " --allow-anonymous",
        ),
        (["--allow-anonymous", "--drop", "2"], "fault fraction drop=2.0 must be within 0..1"),
        (["--allow-anonymous", "--max-frame-bytes", "0"], "max_frame_bytes must be positive"),
        (["--users", "/nonexistent/users"], "cannot read users file /nonexistent/users"),
        (["--allow-anonymous", "--max-memory", "lots"], "--max-memory 'lots' is not a size"),
        (["--allow-anonymous", "--durable-expiry", "-1"], "is not a duration"),
        (
            ["--allow-anonymous", "--tls-cert", "/nonexistent.pem", "--tls-key", "/k.pem"],
            "does not exist",
        ),
    ],
)
def test_bad_settings_exit_2_with_one_line(argv, expected) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vesper.broker", "--port", "0", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr


def test_port_in_use_exits_1(broker) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vesper.broker", "--allow-anonymous", "--port", str(broker.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr


def test_broker_process_restart_keeps_the_port(broker_process) -> None:
    broker = broker_process()
    port = broker.port
    broker.restart()
    assert broker.port == port
    assert broker.stop() == 0
    wait_until(lambda: not broker.running, what="stopped")


def test_every_option_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "broker.md").read_text()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions = list(parser._actions)
    for action in parser._actions:  # and those of the adduser subcommand
        for sub in getattr(action, "choices", None) or {}:
            if isinstance(action.choices, dict):
                actions.extend(action.choices[sub]._actions)
    options = [o for a in actions for o in a.option_strings if o.startswith("--")]
    assert "--passcode-stdin" in options
    missing = [o for o in options if f"`{o}" not in docs and o != "--help"]
    assert not missing


def test_one_data_folder_one_broker(broker_process, tmp_path) -> None:
    broker_process(tmp_path / "data")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vesper.broker",
            "--allow-anonymous",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "is in use by another broker" in proc.stderr
