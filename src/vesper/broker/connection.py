"""One client connection: reading frames, buffered writing, flow control, heart-beats,
and the connection's side of the memory budget and of slow-consumer handling.

What each command does lives in ``handlers``; this module is the plumbing around it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from vesper.broker.config import CONNECT_TIMEOUT_S, HEARTBEAT_GRACE
from vesper.broker.errors import AccessDenied, ProtocolError
from vesper.broker.frames import Frame, FrameParser, encode_frame
from vesper.broker.handlers import HANDLERS
from vesper.broker.units import format_size
from vesper.broker.users import ANONYMOUS_USER, User

if TYPE_CHECKING:
    from vesper.broker.server import Broker
    from vesper.broker.subscription import Subscription

log = logging.getLogger("vesper.broker")

#: Bytes of frames gathered in one event-loop turn before deliveries to this client
#: stop until the transport takes them.
OUT_HIGH_WATER_BYTES = 256 * 1024
#: The transport's own buffer; above it asyncio calls pause_writing (a slow reader).
TRANSPORT_HIGH_WATER_BYTES = 1024 * 1024
#: Heart-beats are sent after this fraction of the negotiated interval of silence.
HEARTBEAT_EARLY = 0.75
#: After ERROR or DISCONNECT, how long the broker waits for the client to close.
CLOSE_GRACE_S = 5.0
#: Blocks reading while a CONNECT's passcode is being checked.
_AUTHENTICATING = "authenticating"


class StompConnection(asyncio.Protocol):
    """Server side of one STOMP connection."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = broker.loop
        cfg = broker.config
        self.parser = FrameParser(cfg.max_frame_bytes, cfg.max_header_bytes, cfg.max_headers)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.version = "1.0"
        self.connected = False
        #: No more frames are processed (after ERROR, DISCONNECT or a lost socket).
        self.closing = False
        self.client_id: str | None = None
        self.user: User = ANONYMOUS_USER
        """Who the client is; set by CONNECT."""
        self.session = ""
        #: Bytes of an unfinished frame in the parser, as counted by the memory budget.
        self.partial = 0
        #: Frames that arrived while CONNECT was being checked; None when not checking.
        self._held: list[Frame] | None = None
        #: Ids of this connection's subscriptions to /vesper-control/status.
        self.status_subscriptions: set[str] = set()
        self.subscriptions: dict[str, Subscription] = {}
        self.subs_by_num: dict[str, Subscription] = {}
        self.sub_count = 0
        self.transactions: dict[str, list[Frame]] = {}
        #: False while deliveries to this client must wait (its buffers are full).
        self.writable = True
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_pending = False
        self._write_paused = False
        self._shut = False  # FIN sent: nothing more is written
        self._blockers: set[object] = set()
        self._rx = 0
        self._last_write = 0.0
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER_BYTES)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.broker.connections.add(self)
        self._timers["connect"] = self.loop.call_later(CONNECT_TIMEOUT_S, self._connect_timeout)

    def data_received(self, data: bytes) -> None:
        self._rx += 1
        if self.closing:
            return
        error = None
        parser = self.parser
        try:
            frames = parser.feed(data)
        except ProtocolError as exc:
            frames, error = exc.frames, exc  # type: ignore[attr-defined]
        if parser.buffered != self.partial:
            # May close this connection, or others, if unfinished frames break the budget.
            self.broker.budget.set_partial(self, parser.buffered)
        for frame in frames:
            if self.closing:
                return
            if self._held is not None:
                self._held.append(frame)
            else:
                self._handle(frame)
        if error is not None and not self.closing:
            self.fail(error)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.writable = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for sub in list(self.subscriptions.values()):
            self.end_subscription(sub)
        self.transactions.clear()
        self.status_subscriptions.clear()
        self._held = None
        self._drop_partial()
        self.broker.budget.forget(self)
        if self.client_id is not None and self.broker.client_ids.get(self.client_id) is self:
            del self.broker.client_ids[self.client_id]
        self.broker.connections.discard(self)
        self._out.clear()
        self.transport = None
        log.debug("connection %s closed (%s)", self.peer, exc or "clean")

    def pause_writing(self) -> None:
        self._write_paused = True
        self.writable = False

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_writable()

    # -- frames ------------------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        command = frame.command
        try:
            if not self.connected and command not in ("CONNECT", "STOMP"):
                raise ProtocolError("not connected", f"{command} before CONNECT")
            HANDLERS[command](self, frame)
        except ProtocolError as exc:
            self.fail(exc, frame)
            return
        except Exception:
            log.exception("broker: internal error handling %s from %s", command, self.peer)
            self.fail(ProtocolError("internal error", f"the broker failed on {command}"), frame)
            return
        receipt = frame.headers.get("receipt")
        if receipt is not None and command not in ("CONNECT", "STOMP", "DISCONNECT"):
            self.send_receipt(receipt)

    def end_subscription(self, sub: Subscription) -> None:
        """Detach a subscription: unacked messages go back to a queue or durable
        subscription; a plain topic subscription's mailbox is discarded."""
        self.subscriptions.pop(sub.id, None)
        self.subs_by_num.pop(str(sub.num), None)
        sub.close()
        if sub.mailbox.kind == "subscription":
            self.broker.router.release(sub.mailbox)

    def describe(self) -> str:
        """Who this is, for log lines: address, user and client-id."""
        text = f"{self.peer} (user {self.user.label}"
        if self.client_id is not None:
            text += f", client-id {self.client_id!r}"
        return text + ")"

    def _drop_partial(self) -> None:
        self.parser.discard()
        if self.partial:
            self.broker.budget.set_partial(self, 0)

    def evict_for_memory(self, used: int, limit: int) -> None:
        """Called by the budget: this connection's unfinished frame is the largest."""
        size = self.partial
        log.warning(
            "broker: memory budget: %s in use of --max-memory %s; closing %s, whose"
            " unfinished frame holds %s",
            format_size(used),
            format_size(limit),
            self.describe(),
            format_size(size),
        )
        self.fail(  # the WARNING above says it all: the ERROR line stays at INFO
            ProtocolError(
                "memory budget exceeded",
                f"the broker has {format_size(used)} in use of its --max-memory"
                f" {format_size(limit)}; this connection's unfinished frame of {size} bytes"
                " was the largest. Send smaller frames or retry later.",
            )
        )

    def slow_consumer(self, sub: Subscription) -> None:
        """Disconnect a consumer whose plain topic subscription is over its limit."""
        if self.closing:
            return
        held = sub.mailbox.held_bytes
        log.warning(
            "broker: slow consumer %s: subscription %r on %s holds %s it has not taken"
            " (limit --max-pending-bytes %s); disconnecting it",
            self.describe(),
            sub.id,
            sub.mailbox.destination,
            format_size(held),
            format_size(sub.mailbox.limit_bytes),
        )
        # Free its messages now rather than when the socket is finally closed.
        for s in list(self.subscriptions.values()):
            self.end_subscription(s)
        self.fail(  # the WARNING above says it all: the ERROR line stays at INFO
            ProtocolError(
                "slow consumer",
                f"subscription {sub.id!r} on {sub.mailbox.destination} fell"
                f" {held} bytes behind; read faster (or use a durable subscription on a"
                " broker with --data-dir, which keeps the backlog on disk)",
            )
        )

    # -- CONNECT checked off the loop ----------------------------------------------------

    def hold_frames(self) -> None:
        """Stop reading and keep later frames until :meth:`release_frames`."""
        self._held = []
        self.block_on(_AUTHENTICATING)

    def release_frames(self) -> None:
        """Handle the frames that arrived during the check, then read again."""
        held, self._held = self._held, None
        self.unblock(_AUTHENTICATING)
        for frame in held or ():
            if self.closing:
                return
            self._handle(frame)

    def send_receipt(self, receipt: str) -> None:
        """RECEIPT once every write submitted before it is committed to the store."""
        data = encode_frame("RECEIPT", [("receipt-id", receipt)], version=self.version)
        self.broker.store.after_writes(lambda: self.write(data))

    def fail(self, exc: ProtocolError, frame: Frame | None = None) -> None:
        """Send ERROR and close this connection; others are untouched."""
        if isinstance(exc, AccessDenied):
            log.warning("broker: refused %s: %s", self.describe(), exc.detail)
        else:
            log.log(
                exc.log_level,
                "broker: ERROR to %s: %s (%s)",
                self.describe(),
                exc.message,
                exc.detail,
            )
        self._held = None
        self._drop_partial()
        headers = [("message", exc.message), ("content-type", "text/plain")]
        receipt = frame.headers.get("receipt") if frame is not None else None
        if receipt is not None:
            headers.append(("receipt-id", receipt))
        self.write(encode_frame("ERROR", headers, exc.detail.encode(), self.version))
        self.close()

    def close(self) -> None:
        """Flush what is buffered, send FIN, and close once the client closes too.

        Closing at once could make the kernel answer the client's unread input with a
        reset that destroys the ERROR frame before the client reads it.
        """
        self.closing = True
        self.writable = False
        transport = self.transport
        if transport is None or transport.is_closing() or self._shut:
            return
        self._flush()
        self._shut = True
        try:
            if transport.can_write_eof():
                transport.write_eof()
                transport.resume_reading()  # input is now discarded; we wait for its end
            else:
                transport.close()
        except OSError:  # the client is already gone
            transport.abort()
            return
        # A client that never closes (or never reads) does not keep its socket.
        self._timers["close"] = self.loop.call_later(CLOSE_GRACE_S, transport.abort)

    def _connect_timeout(self) -> None:
        if not self.connected and not self.closing:
            self.fail(ProtocolError("connect timeout", f"no CONNECT in {CONNECT_TIMEOUT_S:g} s"))

    # -- writing -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.write_parts([data], len(data))

    def write_parts(self, parts: list[bytes], size: int) -> None:
        """Queue bytes; they go out in one transport write at the end of this loop turn."""
        if self.transport is None or self._shut:
            return
        self._out.extend(parts)
        self._out_bytes += size
        if self._out_bytes >= OUT_HIGH_WATER_BYTES:
            self.writable = False
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        out = self._out
        transport = self.transport
        if not out or transport is None or transport.is_closing() or self._shut:
            return
        self._out = []
        self._out_bytes = 0
        self._last_write = self.loop.time()
        transport.write(b"".join(out))
        if not self.closing:
            self._update_writable()

    def _update_writable(self) -> None:
        was = self.writable
        self.writable = (
            not self._write_paused and self._out_bytes < OUT_HIGH_WATER_BYTES and not self.closing
        )
        if self.writable and not was:
            for sub in list(self.subscriptions.values()):
                sub.mailbox.dispatch()

    # -- flow control of publishers ----------------------------------------------------

    @property
    def blocked(self) -> bool:
        """True while flow control has stopped reading from this client."""
        return bool(self._blockers) and self._blockers != {_AUTHENTICATING}

    def block_on(self, blocker: object) -> bool:
        """Stop reading from this client until ``blocker`` calls :meth:`unblock`;
        False if it was already blocked by it."""
        if self.transport is None or blocker in self._blockers:
            return False
        self._blockers.add(blocker)
        if len(self._blockers) == 1:
            self.transport.pause_reading()
        return True

    def unblock(self, blocker: object) -> None:
        self._blockers.discard(blocker)
        if not self._blockers and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # -- heart-beats -------------------------------------------------------------------

    def start_heartbeats(self, send_ms: int, expect_ms: int) -> None:
        """Send an EOL after ``send_ms`` of silence; drop the client after
        ``expect_ms * HEARTBEAT_GRACE`` without a byte from it."""
        if send_ms:
            self._timers["beat"] = self.loop.call_later(send_ms / 1000, self._beat, send_ms / 1000)
        if expect_ms:
            window = expect_ms * HEARTBEAT_GRACE / 1000
            # Checked twice per window, so silence is caught within 1.5 windows.
            self._timers["alive"] = self.loop.call_later(
                window / 2, self._check_alive, window, self._rx, 0.0
            )

    def _beat(self, interval: float) -> None:
        if self.closing:
            return
        # Beat a little early: the client times out after interval x its own grace,
        # and stomp.py's grace is only 1.5.
        period = interval * HEARTBEAT_EARLY
        now = self.loop.time()
        due = self._last_write + period
        if now >= due:
            self.write(b"\n")
            due = now + period
        self._timers["beat"] = self.loop.call_later(due - now, self._beat, interval)

    def _check_alive(self, window: float, seen: int, silent: float) -> None:
        if self.closing:
            return
        silent = silent + window / 2 if self._rx == seen else 0.0
        if silent >= window:
            log.info("broker: %s sent nothing for %.1f s, closing (heart-beat)", self.peer, silent)
            if self.transport is not None:
                self.transport.abort()
            return
        self._timers["alive"] = self.loop.call_later(
            window / 2, self._check_alive, window, self._rx, silent
        )
