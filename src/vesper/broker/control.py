"""The control channel: steer a broker running in another process through STOMP itself.

A SEND to ``/vesper-control/faults`` with a JSON object body changes fault injection
(keys ``drop``, ``duplicate``, ``delay``, ``delay_ms``, ``paused``, ``reset``); a SEND
to ``/vesper-control/disconnect`` (body ``{}`` or ``{"client_id": "..."}``) drops
client connections, the sender's excepted. Accepted only when the broker runs with
``--control``; otherwise the sender gets ERROR. Ask for a receipt to know the change
is in force.

``/vesper-control/status`` is read-only and always there: SUBSCRIBE to it (with
``ack:auto``) and the broker sends one MESSAGE with ``Broker.stats()`` as JSON, and
another after each SEND to it. Every ``/vesper-control/`` destination needs the admin
right on it (anonymous clients of ``--allow-anonymous`` have every right).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from vesper.broker.errors import BrokerConfigError, ControlError, ProtocolError
from vesper.broker.frames import encode_frame

if TYPE_CHECKING:
    from vesper.broker.connection import StompConnection

CONTROL_PREFIX = "/vesper-control/"
FAULTS = CONTROL_PREFIX + "faults"
DISCONNECT = CONTROL_PREFIX + "disconnect"
STATUS = CONTROL_PREFIX + "status"

_FRACTIONS = ("drop", "duplicate", "delay")


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ProtocolError("bad control request", f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("bad control request", "body must be a JSON object")
    return body


def _faults_change(body: dict[str, Any]) -> dict[str, Any]:
    change: dict[str, Any] = {}
    for key, value in body.items():
        if key in _FRACTIONS:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif key == "delay_ms":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif key in ("paused", "reset"):
            ok = isinstance(value, bool)
        else:
            raise ProtocolError(
                "bad control request",
                f"unknown fault setting {key!r}: use drop, duplicate, delay, delay_ms,"
                " paused or reset",
            )
        if not ok:
            raise ProtocolError("bad control request", f"{key}={value!r} has the wrong type")
        change[key] = value
    return change


def handle_control(conn: StompConnection, frame: Any) -> None:
    """Apply one control SEND (called by the SEND handler)."""
    broker = conn.broker
    destination = frame.headers["destination"]
    if destination == STATUS:
        if not conn.status_subscriptions:
            raise ProtocolError(
                "not subscribed", f"SUBSCRIBE to {STATUS} (ack:auto) to receive the status"
            )
        for sub_id in sorted(conn.status_subscriptions):
            send_status(conn, sub_id)
        return
    if not broker.config.control:
        raise ProtocolError(
            "control channel disabled", "start the broker with --control to use /vesper-control/"
        )
    body = _body(frame.body)
    if destination == FAULTS:
        change = _faults_change(body)
        try:
            if change.pop("reset", False):
                broker.faults.reset()
            if change:
                broker.faults.set(**change)
        except BrokerConfigError as exc:
            raise ProtocolError("bad control request", str(exc)) from None
    elif destination == DISCONNECT:
        broker.disconnect_clients(body.get("client_id"), keep=conn)
    else:
        raise ProtocolError(
            "unknown control destination",
            f"{destination!r}: use {FAULTS}, {DISCONNECT} or {STATUS}",
        )


def send_status(conn: StompConnection, sub_id: str) -> None:
    """One MESSAGE with the broker's stats as JSON, on a status subscription."""
    broker = conn.broker
    body = json.dumps(broker.stats(), sort_keys=True).encode()
    headers = [
        ("subscription", sub_id),
        ("message-id", broker.new_message_id()),
        ("destination", STATUS),
        ("content-type", "application/json"),
    ]
    conn.write(encode_frame("MESSAGE", headers, body, conn.version))


def _open(
    host: str,
    port: int,
    timeout: float,
    login: str | None,
    passcode: str | None,
    ssl_context: ssl.SSLContext | None,
) -> tuple[socket.socket, float]:
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
        headers = [("accept-version", "1.2"), ("host", "/")]
        if login is not None:
            headers += [("login", login), ("passcode", passcode or "")]
        sock.sendall(encode_frame("CONNECT", headers))
        _expect(sock, b"CONNECTED", deadline)
    except BaseException:
        sock.close()
        raise
    return sock, deadline


def send_control(
    host: str,
    port: int,
    request: dict[str, Any],
    destination: str = FAULTS,
    timeout: float = 10.0,
    *,
    login: str | None = None,
    passcode: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Send one control request and wait for the broker's RECEIPT (blocking).

    Raises ControlError with the broker's message when it answers ERROR.
    """
    sock, deadline = _open(host, port, timeout, login, passcode, ssl_context)
    with sock:
        sock.sendall(
            encode_frame(
                "SEND",
                [("destination", destination), ("receipt", "control")],
                json.dumps(request).encode(),
            )
        )
        _expect(sock, b"RECEIPT", deadline)
        sock.sendall(encode_frame("DISCONNECT", []))


def broker_status(
    host: str,
    port: int,
    timeout: float = 10.0,
    *,
    login: str | None = None,
    passcode: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """``Broker.stats()`` of a running broker, read from ``/vesper-control/status``."""
    sock, deadline = _open(host, port, timeout, login, passcode, ssl_context)
    with sock:
        sock.sendall(encode_frame("SUBSCRIBE", [("destination", STATUS), ("id", "status")]))
        frame = _expect(sock, b"MESSAGE", deadline)
        sock.sendall(encode_frame("DISCONNECT", []))
    _, _, body = frame.partition(b"\n\n")
    try:
        status = json.loads(body.rstrip(b"\x00"))
    except ValueError as exc:
        raise ControlError(f"broker status is not JSON: {exc}") from None
    if not isinstance(status, dict):
        raise ControlError("broker status is not a JSON object")
    return status


def _expect(sock: socket.socket, command: bytes, deadline: float) -> bytes:
    data = b""
    while b"\x00" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise ControlError(f"broker did not answer with {command.decode()} in time") from None
        except OSError as exc:
            raise ControlError(f"broker closed the control connection: {exc}") from None
        if not chunk:
            raise ControlError("broker closed the control connection")
        data += chunk
    frame = data.lstrip(b"\r\n")
    if not frame.startswith(command):
        raise ControlError(f"broker refused the control request: {frame.decode(errors='replace')}")
    return frame[: frame.index(b"\x00") + 1]
