"""The frame parser and serializer, without a network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vesper.broker.errors import ProtocolError
from vesper.broker.frames import FrameParser, encode_frame, escape, unescape


def parser(version: str = "1.2", max_frame: int = 1 << 20, max_header: int = 4096) -> FrameParser:
    p = FrameParser(max_frame, max_header, 100)
    p.version = version
    return p


def feed_all(p: FrameParser, data: bytes, step: int) -> list:
    frames = []
    for i in range(0, len(data), step):
        frames.extend(p.feed(data[i : i + step]))
    return frames


def test_frame_split_at_every_byte_parses_the_same() -> None:
    data = (
        b"\n\nSEND\ndestination:/queue/a\nx:1\nx:2\n\nhello\x00\n"
        b"SEND\r\ndestination:/queue/b\r\ncontent-length:5\r\n\r\na\x00b\x00c\x00\r\n"
        b"DISCONNECT\nreceipt:9\n\n\x00"
    )
    whole = parser().feed(data)
    for step in range(1, 12):
        frames = feed_all(parser(), data, step)
        assert [(f.command, f.headers, f.body) for f in frames] == [
            (f.command, f.headers, f.body) for f in whole
        ]
    assert [f.command for f in whole] == ["SEND", "SEND", "DISCONNECT"]
    assert whole[0].headers == {"destination": "/queue/a", "x": "1"}  # first value wins
    assert whole[0].body == b"hello"
    assert whole[1].body == b"a\x00b\x00c"  # content-length carries NUL bytes
    assert whole[1].headers["destination"] == "/queue/b"  # CRLF stripped


def test_escapes_are_decoded_after_connect_but_not_in_connect() -> None:
    p = parser("1.2")
    (f,) = p.feed(b"SEND\ndestination:/queue/a\nk\\cey:a\\nb\\\\c\\rd\\ce\\q\n\n\x00")
    assert f.headers["k:ey"] == "a\nb\\c\rd:e\\q"  # unknown \q kept verbatim
    (c,) = p.feed(b"CONNECT\nlogin:a\\nb\n\n\x00")
    assert c.headers["login"] == "a\\nb"
    p10 = parser("1.0")
    (f10,) = p10.feed(b"SEND\ndestination:/queue/a\nk:a\\nb\n\n\x00")
    assert f10.headers["k"] == "a\\nb"


def test_escape_round_trip() -> None:
    value = "a:b\nc\\d\re"
    assert unescape(escape(value, "1.2")) == value
    assert escape(value, "1.1") == "a\\cb\\nc\\\\d\re"
    assert escape(value, "1.0") == value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SEND\ndestination:/queue/a\ncontent-length:3\n\nabcd\x00", "malformed frame"),
        (b"SEND\ndestination:/queue/a\nno-colon-here\n\nx\x00", "malformed frame"),
        (b"FROB\n\n\x00", "unknown command"),
        (b"SEND\ndestination:/q\ncontent-length:abc\n\nx\x00", "malformed frame"),
        (b"SEND\ndestination:/q\ncontent-length:-1\n\nx\x00", "malformed frame"),
        (b"SEND\ndestination:/q\ncontent-length:99999999\n\n", "frame too large"),
        (b"SEND\n" + b"h:" + b"x" * 5000 + b"\n\n\x00", "frame too large"),
        (b"SEND\r\rx\n\n\x00", "unknown command"),
        (b"\rX", "malformed frame"),
        (b"SEND\n\xff\xfe:1\n\n\x00", "malformed frame"),
    ],
)
def test_malformed_input_raises(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parser().feed(data)
    assert info.value.message == message


def test_body_without_content_length_is_bounded() -> None:
    p = parser(max_frame=1000)
    p.feed(b"SEND\ndestination:/q\n\n" + b"x" * 900)
    with pytest.raises(ProtocolError, match="too large"):
        p.feed(b"x" * 200)


def test_frames_before_an_error_are_kept() -> None:
    with pytest.raises(ProtocolError) as info:
        parser().feed(b"SEND\ndestination:/q\n\nok\x00BOGUS\n\n\x00")
    assert [f.body for f in info.value.frames] == [b"ok"]  # type: ignore[attr-defined]


def test_encode_frame_escapes_except_connected() -> None:
    assert encode_frame("RECEIPT", [("receipt-id", "a:b")], version="1.2") == (
        b"RECEIPT\nreceipt-id:a\\cb\n\n\x00"
    )
    assert encode_frame("CONNECTED", [("server", "a:b")]) == b"CONNECTED\nserver:a:b\n\n\x00"
    assert encode_frame("ERROR", [], b"x\x00y") == b"ERROR\ncontent-length:3\n\nx\x00y\x00"


header_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)


@given(
    frames=st.lists(
        st.tuples(
            st.sampled_from(["SEND", "ACK", "SUBSCRIBE"]),
            st.dictionaries(header_text.filter(bool), header_text, max_size=4),
            st.binary(max_size=50),
        ),
        min_size=1,
        max_size=5,
    ),
    step=st.integers(1, 64),
)
def test_encoded_frames_parse_back_in_any_chunking(frames: list, step: int) -> None:
    data = b"".join(
        encode_frame(cmd, [(k, v) for k, v in headers.items() if k != "content-length"], body)
        for cmd, headers, body in frames
    )
    parsed = feed_all(parser(), data, step)
    assert [(f.command, f.body) for f in parsed] == [(c, b) for c, _, b in frames]
    for f, (_, headers, body) in zip(parsed, frames, strict=True):
        expected = {k: v for k, v in headers.items() if k != "content-length"}
        if body:
            expected["content-length"] = str(len(body))
        assert f.headers == expected
