"""Run the broker from synchronous code: in a thread, or as a subprocess.

``BrokerThread`` is the cheap choice for tests of one process. ``BrokerProcess`` runs
``python -m vesper.broker`` so a test can SIGKILL or restart the broker, and steers
its faults through the control channel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from vesper.broker.config import BrokerConfig
from vesper.broker.control import DISCONNECT, FAULTS, broker_status, send_control
from vesper.broker.errors import BrokerStartError
from vesper.broker.faults import Faults
from vesper.broker.server import Broker

T = TypeVar("T")

READY_RE = re.compile(rb"vesper broker listening on (stomp(?:\+ssl)?)://\[?([^\]\s]*?)\]?:(\d+)\s")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class BrokerThread:
    """A broker on its own event loop in a daemon thread."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        # The default is for tests: a free loopback port, anonymous clients welcome.
        self.broker = Broker(config or BrokerConfig(port=0, allow_anonymous=True))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> BrokerThread:
        """Return once the broker listens; raise BrokerStartError if it cannot."""
        self._thread = threading.Thread(target=self._run, name="vesper-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BrokerStartError(f"broker thread did not start within {timeout:g} s")
        if self._error is not None:
            self._thread.join()
            raise BrokerStartError(f"broker failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            try:
                loop.run_until_complete(self.broker.start())
            except BaseException as exc:
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self.broker.stop())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def faults(self) -> Faults:
        return self.broker.faults

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the broker's loop and return its result."""
        assert self._loop is not None
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:
                result.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return result.result(timeout)

    def stats(self) -> dict[str, Any]:
        """Connections and mailbox depths (see ``Broker.stats``)."""
        return self.call(self.broker.stats)

    def disconnect_clients(self, client_id: str | None = None) -> int:
        """Drop every client connection (or those of one client-id)."""
        return self.call(lambda: self.broker.disconnect_clients(client_id))

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Close every connection, flush the store and end the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"broker thread did not stop within {timeout:g} s")

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _path(value: Path | str | None) -> Path | None:
    return Path(value) if value is not None else None


class BrokerProcess:
    """``python -m vesper.broker`` as a child process, with its log kept in a file.

    It needs ``users`` or ``allow_anonymous``, like the broker itself. The control
    helpers (``set_faults`` ...) log in as ``control_login`` when there are users; over
    TLS they trust ``tls_cert`` itself unless ``control_ssl`` says otherwise (pass one
    with a client certificate when ``tls_ca`` requires it).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control: bool = True,
        allow_anonymous: bool = False,
        users: Path | str | None = None,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        tls_ca: Path | str | None = None,
        control_login: tuple[str, str] | None = None,
        control_ssl: ssl.SSLContext | None = None,
        args: Sequence[str] = (),
        log_path: Path | str | None = None,
    ) -> None:
        self.data_dir = _path(data_dir)
        self.host = host
        self.port = port
        """Listening port; chosen by the first start when 0, then kept across restarts."""
        self.control = control
        self.allow_anonymous = allow_anonymous
        self.users = _path(users)
        self.tls_cert = _path(tls_cert)
        self.tls_key = _path(tls_key)
        self.tls_ca = _path(tls_ca)
        self.control_login = control_login
        self.control_ssl = control_ssl
        self.scheme = "stomp+ssl" if self.tls_cert is not None else "stomp"
        """From the ready line: ``stomp`` or ``stomp+ssl``."""
        self.args = list(args)
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="vesper-broker-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vesper.broker", "--host", self.host]
        cmd += ["--port", str(self.port)]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        if self.control:
            cmd.append("--control")
        if self.allow_anonymous:
            cmd.append("--allow-anonymous")
        for option, value in (
            ("--users", self.users),
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-ca", self.tls_ca),
        ):
            if value is not None:
                cmd += [option, str(value)]
        return cmd + self.args

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> BrokerProcess:
        """Start and wait until the broker listens; raise BrokerStartError with its log."""
        if self.running:
            raise BrokerStartError("broker process is already running")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                match = READY_RE.search(log.read())
            if match:
                self.scheme = match.group(1).decode()
                self.port = int(match.group(3))
                return self
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"broker exited with status {self._proc.returncode}:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerStartError(
                    f"broker not listening after {timeout:g} s:\n{self.log_text()}"
                )
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; returns the exit status (0 for a clean stop)."""
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise TimeoutError(
                    f"broker ignored SIGTERM for {timeout:g} s:\n{self.log_text()}"
                ) from None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: the broker gets no chance to flush anything."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = START_TIMEOUT_S) -> BrokerProcess:
        """Stop (if running) and start again on the same port and data folder."""
        self.stop()
        return self.start(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _control_options(self) -> dict[str, Any]:
        login, passcode = self.control_login or (None, None)
        context = self.control_ssl
        if context is None and self.tls_cert is not None:
            # Our own child on a known address: trust exactly its certificate.
            context = ssl.create_default_context(cafile=str(self.tls_cert))
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return {"login": login, "passcode": passcode, "ssl_context": context}

    def _control(self, request: dict[str, Any], destination: str = FAULTS) -> None:
        send_control(self.host, self.port, request, destination, **self._control_options())

    def set_faults(self, **settings: Any) -> None:
        """Change fault injection, e.g. ``set_faults(drop=0.1, duplicate=0.1)``."""
        self._control(settings)

    def reset_faults(self) -> None:
        self._control({"reset": True})

    def pause(self) -> None:
        self._control({"paused": True})

    def resume(self) -> None:
        self._control({"paused": False})

    def disconnect_clients(self, client_id: str | None = None) -> None:
        """Drop every client connection (or those of one client-id)."""
        request = {"client_id": client_id} if client_id else {}
        self._control(request, DISCONNECT)

    def status(self) -> dict[str, Any]:
        """``Broker.stats()`` of the child, from ``/vesper-control/status``."""
        return broker_status(self.host, self.port, **self._control_options())

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.running:
            with contextlib.suppress(TimeoutError):
                self.stop()
