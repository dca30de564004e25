"""Logs: one format for node and broker, uvicorn's lines under vesper's names, and one
line per broker retry with its reason (the conflict lines are tested with the apply
worker, in tests/replication/test_units.py)."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.replication.harness import wait_for
from vesper import logformat
from vesper.replication.service import ReplicationConfig, ReplicationService
from vesper.store import open_store
from vesper.trust.keys import NodeKey

TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "
)
DEADLINE_S = 30.0


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger and uvicorn's filters back as pytest had them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    filters = {n: logging.getLogger(n).filters[:] for n in logformat.UVICORN_NAMES}
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, kept in filters.items():
            logging.getLogger(name).filters[:] = kept


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("vesper.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    made.created = 1_764_590_400.25  # 2025-12-01T12:00:00.250Z
    made.__dict__.update(extra)
    return made


# -- the formats ---------------------------------------------------------------------


def test_text_and_json_carry_the_same_fields() -> None:
    rec = record("peer %s is %d behind", "B", 7, peer="B", behind_us=7, note="two words")
    text = logformat.TextFormatter().format(rec)
    assert text == (
        "2025-12-01T12:00:00.250Z WARNING vesper.test: peer B is 7 behind "
        'peer=B behind_us=7 note="two words"'
    )
    line = logformat.JsonFormatter().format(rec)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2025-12-01T12:00:00.250Z",
        "level": "WARNING",
        "logger": "vesper.test",
        "message": "peer B is 7 behind",
        "peer": "B",
        "behind_us": 7,
        "note": "two words",
    }


def test_a_traceback_is_one_json_field_and_follows_a_text_line() -> None:
    rec = record("failed", exc=True)
    line = logformat.JsonFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc"]
    text = logformat.TextFormatter().format(rec)
    first, rest = text.split("\n", 1)
    assert first == "2025-12-01T12:00:00.250Z WARNING vesper.test: failed"
    assert rest.startswith("Traceback") and rest.endswith("ValueError: boom")


def test_uvicorn_lines_take_vesper_names_and_its_chatter_is_debug(root_logging: None) -> None:
    out = io.StringIO()
    logformat.configure("info", "json", out)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    logging.getLogger("vesper.serve").info("vesper node N1 serving http://127.0.0.1:1")
    logging.getLogger("uvicorn.error").info("Shutting down")  # says why a stop waits
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(entry["logger"], entry["level"]) for entry in lines] == [
        ("vesper.http", "WARNING"),
        ("vesper.serve", "INFO"),
        ("vesper.http", "INFO"),
    ]
    logformat.configure("debug", "text", out := io.StringIO())
    logging.getLogger("uvicorn.error").info("Waiting for application startup.")
    assert TEXT_LINE.match(out.getvalue())
    assert " DEBUG vesper.http: Waiting for application startup." in out.getvalue()


# -- vesper serve and vesper broker --------------------------------------------------


def read_until(path: Path, pattern: str, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{pattern!r} not in the log:\n{path.read_text(errors='replace')}")


def run_until_stopped(args: list[str], cwd: Path, ready: str) -> list[str]:
    """Start, wait for ``ready`` in the log, SIGTERM, and return the log's lines."""
    log_path = cwd / "process.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        read_until(log_path, ready, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log_path.read_text().splitlines()


def serve_args(*overrides: str) -> list[str]:
    config = ["--branch_id=L1", "--save_history=True", "--work_dir=data", "--port=0"]
    return [sys.executable, "-m", "vesper", "serve", *config, *overrides]


def test_a_node_logs_json_lines_and_nothing_under_uvicorn(tmp_path: Path) -> None:
    lines = run_until_stopped(serve_args("--log_format=json"), tmp_path, r"serving http")
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
        assert not entry["logger"].startswith("uvicorn"), entry
    messages = [entry["message"] for entry in entries]
    assert any(m.startswith("vesper node L1 serving http://") for m in messages), messages
    assert "vesper node L1 stopped" in messages
    assert not any("Started server process" in m for m in messages), messages


def test_a_node_logs_text_lines_and_nothing_under_uvicorn(tmp_path: Path) -> None:
    lines = run_until_stopped(serve_args(), tmp_path, r"serving http")
    assert lines and all(TEXT_LINE.match(line) for line in lines), lines
    assert not any("uvicorn" in line or "Application startup" in line for line in lines), lines


def test_the_broker_logs_the_same_json_lines(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "vesper.broker", "--port", "0", "--allow-anonymous"]
    lines = run_until_stopped([*args, "--log-format", "json"], tmp_path, r"listening on stomp")
    entries = [json.loads(line) for line in lines]
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    messages = [(e["logger"], e["message"]) for e in entries]
    assert ("vesper.broker", "vesper broker stopped") in messages, messages
    text = run_until_stopped(args, tmp_path, r"listening on stomp")
    assert all(TEXT_LINE.match(line) for line in text), text


# -- replication ---------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_each_broker_retry_is_one_line_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    ports = closed_port(), closed_port()
    store = open_store("mem://", "R1", save_history=True, outbox=True)
    hosts = tuple(("127.0.0.1", port) for port in ports)
    service = ReplicationService(
        store, ReplicationConfig("R1", hosts, ("c",), key=NodeKey.generate())
    )

    def retries() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "cannot replicate" in r.getMessage()]

    service.start()
    try:
        wait_for(lambda: len(retries()) >= 6, DEADLINE_S, "three rounds of two brokers")
    finally:
        service.stop()
        store.close()
    for retry in retries():
        message = retry.getMessage()
        assert retry.levelno == logging.WARNING
        assert re.match(r"cannot replicate through 127\.0\.0\.1:(\d+): ", message), message
        assert "Connection refused" in message, message
    # A round tries both brokers: the second line of each says when the next round is.
    rounds = [r.getMessage() for r in retries()][:6]
    assert [bool(re.search(r"; next attempt in \d+\.\d s$", m)) for m in rounds] == [
        False, True, False, True, False, True
    ]  # fmt: skip
    # stomp.py's own line for each attempt is DEBUG now, so at INFO it is not written.
    assert not [r for r in caplog.records if r.name == "stomp.py"]
    assert service.last_error and "Connection refused" in service.last_error
