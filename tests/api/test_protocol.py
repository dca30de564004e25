"""NodeHttpProtocol on a fake transport: the timeout decisions a real socket makes hard
to reach on purpose (pipelining, blank lines during an answer), with the timer
callbacks called directly instead of waiting for them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.server import ServerState

from vesper.api.errors import ABORT, OUTCOME
from vesper.api.server import NodeHttpProtocol, ServerConfig


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class SlowApp:
    """Answers /slow once released, everything else at once; keeps the scopes."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.scopes.append(scope)
        if scope["path"] == "/slow":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"rest", "more_body": False})
            return
        body = b"ok"
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def run(test: Callable[[NodeHttpProtocol, FakeTransport, SlowApp], Awaitable[None]]) -> None:
    async def main() -> None:
        app = SlowApp()
        config = ServerConfig(
            app,  # type: ignore[arg-type]
            header_timeout=10,
            body_timeout=10,
            max_connections=2,
            metrics=None,
            http=NodeHttpProtocol,
            ws="none",
            lifespan="off",
            log_config=None,
        )
        config.load()
        state = ServerState()
        protocol = NodeHttpProtocol(config, state, {}, asyncio.get_running_loop())
        transport = FakeTransport()
        protocol.connection_made(transport)
        try:
            await test(protocol, transport, app)
        finally:
            app.release.set()
            await asyncio.gather(*state.tasks)

    asyncio.run(main())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_connection_that_sends_nothing_gets_a_408() -> None:
    async def test(protocol: NodeHttpProtocol, transport: FakeTransport, app: SlowApp) -> None:
        assert protocol._timer is not None  # armed on connecting
        protocol._head_timed_out()
        assert transport.written.startswith(b"HTTP/1.1 408 ") and transport.closed

    run(test)


def test_a_request_arriving_whole_arms_no_timer() -> None:
    async def test(protocol: NodeHttpProtocol, transport: FakeTransport, app: SlowApp) -> None:
        for _ in range(3):
            protocol.data_received(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            assert protocol._timer is None
            await settle()
        body = b'{"a": 1}'
        protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n" + body)
        assert protocol._timer is None
        await settle()
        assert transport.written.count(b"HTTP/1.1 200 ") == 4 and not transport.is_closing()
        assert app.scopes[0][ABORT] is not None

    run(test)


def test_pipelined_requests_are_all_answered() -> None:
    async def test(protocol: NodeHttpProtocol, transport: FakeTransport, app: SlowApp) -> None:
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        await settle()
        assert transport.written.count(b"HTTP/1.1 200 ") == 3
        assert [s["path"] for s in app.scopes] == ["/a", "/a", "/a"]

    run(test)


def test_blank_lines_during_an_answer_do_not_cut_it() -> None:
    async def test(protocol: NodeHttpProtocol, transport: FakeTransport, app: SlowApp) -> None:
        protocol.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        protocol.data_received(b"\r\n")  # stray bytes, no request begun
        assert protocol._timer is not None
        protocol._head_timed_out()
        assert not transport.is_closing() and b"408" not in transport.written
        app.release.set()
        await settle()
        assert transport.written.endswith(b"0\r\n\r\n")  # the answer completed

    run(test)


def test_a_stalled_pipelined_head_behind_an_answer_closes_without_a_408() -> None:
    async def test(protocol: NodeHttpProtocol, transport: FakeTransport, app: SlowApp) -> None:
        protocol.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        protocol.data_received(b"GET /next HTTP/1.1\r\nHo")  # begun, never finished
        protocol._head_timed_out()
        assert transport.aborted and b"408" not in transport.written
        assert protocol.cycle.disconnected  # the answer in flight stops at once

    run(test)


def test_a_slow_body_gets_a_408_and_the_handler_sees_the_client_gone() -> None:
    async def test(protocol: NodeHttpProtocol, transport: FakeTransport, app: SlowApp) -> None:
        received: list[dict[str, Any]] = []

        async def reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
            received.append(await receive())
            received.append(await receive())

        protocol.app = reader  # type: ignore[assignment]
        protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        assert protocol._timer is not None  # the body timer
        await settle()
        protocol._body_timed_out()
        await settle()
        assert transport.written.startswith(b"HTTP/1.1 408 ") and transport.closed
        assert [m["type"] for m in received] == ["http.request", "http.disconnect"]
        assert protocol.cycle.scope[OUTCOME] == 408  # type: ignore[typeddict-item]

    run(test)


def test_connections_past_the_limit_are_aborted_on_arrival() -> None:
    async def test(protocol: NodeHttpProtocol, transport: FakeTransport, app: SlowApp) -> None:
        config, state = protocol.config, protocol.server_state
        second = NodeHttpProtocol(config, state, {}, asyncio.get_running_loop())  # type: ignore[arg-type]
        second.connection_made(FakeTransport())
        third_transport = FakeTransport()
        third = NodeHttpProtocol(config, state, {}, asyncio.get_running_loop())  # type: ignore[arg-type]
        third.connection_made(third_transport)
        assert third_transport.aborted and third not in state.connections
        third.connection_lost(None)  # no error for a connection never taken
        assert len(state.connections) == 2

    run(test)
