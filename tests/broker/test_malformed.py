"""Hostile input over raw sockets: the offender gets ERROR and is closed, nobody else notices."""

from __future__ import annotations

import contextlib

import pytest

MAX_FRAME = 64 * 1024

MALFORMED = {
    "missing NUL": (
        b"SEND\ndestination:/queue/x\ncontent-length:3\n\nabcSEND\ndestination:/queue/x\n\n\x00",
        "malformed frame",
    ),
    "bad header line": (
        b"SEND\ndestination:/queue/x\nthis line has no colon\n\nx\x00",
        "malformed frame",
    ),
    "unknown command": (b"PUBLISH\ndestination:/queue/x\n\nx\x00", "unknown command"),
    "content-length not a number": (
        b"SEND\ndestination:/queue/x\ncontent-length:ten\n\nx\x00",
        "malformed frame",
    ),
    "content-length too short": (
        b"SEND\ndestination:/queue/x\ncontent-length:1\n\nlonger body\x00",
        "malformed frame",
    ),
    "oversize body": (
        b"SEND\ndestination:/queue/x\ncontent-length:%d\n\n" % (MAX_FRAME + 1),
        "frame too large",
    ),
    "oversize body without content-length": (
        b"SEND\ndestination:/queue/x\n\n" + b"y" * (MAX_FRAME + 10),
        "frame too large",
    ),
    "oversize headers": (b"SEND\nh:" + b"z" * (MAX_FRAME + 10), "frame too large"),
    "bare CR": (b"\rSEND\n\n\x00", "malformed frame"),
    "invalid UTF-8 header": (b"SEND\ndestination:/queue/\xff\n\nx\x00", "malformed frame"),
}


@pytest.fixture
def small_broker(start_broker):
    return start_broker(max_frame_bytes=MAX_FRAME)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_frame_gets_error_and_close(small_broker, raw, client, case) -> None:
    data, message = MALFORMED[case]
    bystander = client(small_broker.port)
    bystander.conn.subscribe("/queue/ok", id="1", headers={"receipt": "r"})
    bystander.wait_receipt("r")
    bad = raw(small_broker.port)
    bad.connect()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        bad.send(data)  # the broker may close before it has read everything we send
    frames = bad.read_until_closed()
    assert frames and frames[-1].command == "ERROR", frames
    assert frames[-1].headers["message"] == message
    # Everybody else carries on.
    bystander.send_sync("/queue/ok", f"after {case}")
    assert bystander.wait_messages(1)[0].body == f"after {case}"
    assert not bystander.rec.errors


def test_frame_of_exactly_the_limit_is_accepted(small_broker, raw) -> None:
    r = raw(small_broker.port)
    r.connect()
    head = b"SEND\ndestination:/queue/big\nreceipt:r\ncontent-length:%d\n\n"
    size = MAX_FRAME - len(head % 99999) - 1
    r.send(head % size + b"b" * size + b"\x00")
    assert r.read().command == "RECEIPT"


def test_split_frames_and_heartbeats_between_them(broker, raw) -> None:
    r = raw(broker.port)
    r.connect(**{"heart-beat": "0,0"})
    r.frame("SUBSCRIBE", {"destination": "/queue/split", "id": "1"})
    data = b"\n\r\nSEND\ndestination:/queue/split\ncontent-length:4\n\na\x00b\n\x00\n\n"
    for i in range(len(data)):  # one byte per packet
        r.send(data[i : i + 1])
    m = r.read()
    assert m.command == "MESSAGE" and m.body == b"a\x00b\n"


def test_abrupt_close_mid_frame_is_harmless(broker, raw, client) -> None:
    r = raw(broker.port)
    r.connect()
    r.send(b"SEND\ndestination:/queue/half\ncontent-length:100\n\nonly part")
    r.close()
    c = client(broker.port)
    c.send_sync("/queue/half", "whole")
    c.conn.subscribe("/queue/half", id="1")
    assert [m.body for m in c.wait_messages(1)] == ["whole"]


def test_client_gone_before_its_disconnect_receipt(broker, raw, client) -> None:
    for _ in range(50):
        r = raw(broker.port)
        r.connect()
        r.frame("DISCONNECT", {"receipt": "bye"})
        r.close()  # without reading the RECEIPT
    c = client(broker.port)
    c.send_sync("/queue/alive", "fine")
