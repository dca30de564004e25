"""Messages as the broker holds them, and their encoding as MESSAGE frames."""

from __future__ import annotations

import time
from collections.abc import Callable

from vesper.broker.errors import ProtocolError
from vesper.broker.frames import Frame, escape, unescape

#: SEND headers the broker consumes or sets itself instead of forwarding them.
_NOT_FORWARDED = frozenset(
    {
        "destination",
        "receipt",
        "transaction",
        "content-length",
        "message-id",
        "subscription",
        "ack",
        "redelivered",
    }
)
_VERSION_INDEX = {"1.0": 0, "1.1": 1, "1.2": 2}
#: Rough bookkeeping cost of one message in memory, counted in pending-byte limits.
_OVERHEAD_BYTES = 200
#: Rough cost of one forwarded header, for the same limits.
_HEADER_BYTES = 40
#: Publishers repeat the same few header sets; sharing them saves memory per message.
_SHARED_MAX = 1024
_shared_headers: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
_blobs: dict[tuple[tuple[str, str], ...], bytes] = {}


_encoded_cache: dict[tuple[object, str], bytes] = {}


def _cached(key: tuple[object, str], make: Callable[[], str]) -> bytes:
    block = _encoded_cache.get(key)
    if block is None:
        if len(_encoded_cache) >= _SHARED_MAX:
            _encoded_cache.clear()
        block = _encoded_cache[key] = make().encode()
    return block


def _encoded_headers(headers: tuple[tuple[str, str], ...], version: str) -> bytes:
    """``key:value`` lines, escaped for ``version``, each ending in a newline."""
    return _cached(
        (headers, version),
        lambda: "".join(f"{escape(k, version)}:{escape(v, version)}\n" for k, v in headers),
    )


def _encoded_value(value: str, version: str) -> bytes:
    return _cached((value, version), lambda: escape(value, version))


def _share(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    shared = _shared_headers.get(headers)
    if shared is None:
        if len(_shared_headers) >= _SHARED_MAX:
            _shared_headers.clear()
        shared = _shared_headers[headers] = headers
    return shared


class Message:
    """One published message; shared, never changed, by every queue that holds it."""

    __slots__ = ("_heads", "body", "destination", "expires", "headers", "message_id", "size")

    def __init__(
        self,
        message_id: str,
        destination: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        expires: int = 0,
    ) -> None:
        self.message_id = message_id
        self.destination = destination
        self.headers = headers
        """User headers forwarded to subscribers, in the order the publisher sent them."""
        self.body = body
        self.expires = expires
        """Unix time in milliseconds after which it is dropped undelivered; 0 = never."""
        # An estimate is enough for the limits, and cheaper than summing header lengths.
        self.size = len(body) + _OVERHEAD_BYTES + _HEADER_BYTES * len(headers)
        self._heads: list[bytes | None] | None = None

    @classmethod
    def from_send(cls, frame: Frame, message_id: str) -> Message:
        headers = tuple((k, v) for k, v in frame.headers.items() if k not in _NOT_FORWARDED)
        return cls(
            message_id,
            frame.headers["destination"],
            _share(headers),
            frame.body,
            expiry_of(frame.headers),
        )

    def expired(self, now_ms: int) -> bool:
        return 0 < self.expires <= now_ms

    def head(self, version: str) -> bytes:
        """Headers common to every delivery, up to and including the blank line."""
        i = _VERSION_INDEX[version]
        heads = self._heads
        if heads is None:
            heads = self._heads = [None, None, None]
        head = heads[i]
        if head is None:
            # message-id needs no escaping: the broker makes it from [A-Za-z0-9-].
            head = heads[i] = b"message-id:%s\ndestination:%s\n%scontent-length:%d\n\n" % (
                self.message_id.encode(),
                _encoded_value(self.destination, version),
                _encoded_headers(self.headers, version),
                len(self.body),
            )
        return head

    def headers_blob(self) -> bytes:
        """The forwarded headers as stored by the SQLite store: STOMP 1.2 header lines."""
        blob = _blobs.get(self.headers)
        if blob is None:
            if len(_blobs) >= _SHARED_MAX:
                _blobs.clear()
            lines = (f"{escape(k, '1.2')}:{escape(v, '1.2')}" for k, v in self.headers)
            blob = _blobs[self.headers] = "\n".join(lines).encode()
        return blob

    @staticmethod
    def headers_from_blob(blob: bytes) -> tuple[tuple[str, str], ...]:
        if not blob:
            return ()
        pairs = (line.partition(":") for line in blob.decode().split("\n"))
        return _share(tuple((unescape(k), unescape(v)) for k, _, v in pairs))


def expiry_of(headers: dict[str, str], now_ms: int | None = None) -> int:
    """When a SEND's message expires, in Unix milliseconds (0 = never).

    Both conventions publishers use are understood: ActiveMQ's ``expires``, an
    absolute time from the publisher's clock (0 = never), and RabbitMQ's
    ``expiration``, milliseconds from arrival, which no clock skew affects. With both,
    the earlier wins.
    """
    found = []
    for name in ("expires", "expiration"):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise ProtocolError(
                f"invalid {name}", f"{name} must be a whole number of milliseconds, not {raw!r}"
            )
        if name == "expiration":
            value += time.time_ns() // 1_000_000 if now_ms is None else now_ms
        if value:
            found.append(value)
    return min(found, default=0)


class Entry:
    """A message's place in one queue or subscription."""

    __slots__ = ("key", "message", "redelivered")

    def __init__(self, key: int, message: Message, redelivered: bool = False) -> None:
        self.key = key
        """Unique per broker (the SQLite row id when stored); orders the queue."""
        self.message = message
        self.redelivered = redelivered
        """True once delivered without being acknowledged (sent as ``redelivered:true``)."""
