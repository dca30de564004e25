"""Fixtures of the dashboard tests: Debian's chromium driven by Playwright, a cluster of
real ``vesper serve`` processes on an embedded broker, and screenshots kept as
artifacts (under the test's tmp_path, and in ``$VESPER_ARTIFACTS`` when set).

Playwright's own browser download (``playwright install``) does not work on these
machines; the tests launch the distribution's chromium instead and skip, saying so,
when it or the playwright package is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.api.conftest import NodeProcess, node_command
from tests.replication.harness import new_channel
from tests.ui.slow_node import APPLY_DELAY
from vesper.broker.process import BrokerProcess

TOKEN = "dashboard-test-token-0123456789"
#: Seconds of silence after which the nodes call a peer gone (default 60): small, so a
#: stopped node turns gone quickly, yet over the 5 s between an idle node's
#: announcements, or every idle peer would flicker to gone and back.
GONE_AFTER_S = 8
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
SLOW_NODE = Path(__file__).with_name("slow_node.py")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "Debian's chromium is not installed (apt-get install -y chromium)"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium per module (starting one costs ~1 s); closed with it, as
    Playwright's sync API runs an event loop in this thread while it is open."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


class Offline:
    """Aborts every request a page makes to anything but this machine, and keeps them:
    the pages must work on a node that reaches no CDN."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def __call__(self, route: Any) -> None:
        url = route.request.url
        host = urlsplit(url).hostname or ""
        if url.startswith(("data:", "blob:", "about:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (own cookies), on a laptop-sized screen, with
    the network beyond this machine blocked; JavaScript errors fail the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    offline = Offline()
    context.route("**/*", offline)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.offline = offline
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not offline.blocked, f"the page tried to reach other hosts: {offline.blocked}"


@pytest.fixture
def screenshot(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """``screenshot(page, name)``: a full-page PNG in tmp_path and in $VESPER_ARTIFACTS."""

    def take(shown: Any, name: str) -> Path:
        file_name = f"{request.node.name}-{name}.png"
        path = tmp_path / file_name
        shown.screenshot(path=str(path), full_page=True)
        artifacts = os.environ.get("VESPER_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(artifacts) / file_name)
        return path

    return take


class Cluster:
    """Replicating ``vesper serve`` nodes that want ``TOKEN``, on one channel of a broker
    this module owns (so a test can pause it)."""

    def __init__(self, folder: Path, broker: BrokerProcess) -> None:
        self.folder = folder
        self.broker = broker
        self.channel = new_channel()
        self.nodes: dict[str, NodeProcess] = {}
        self.started: list[NodeProcess] = []

    def start(self, branch: str, apply_delay_s: float | None = None) -> NodeProcess:
        """Start ``branch``; with ``apply_delay_s``, every changeset it receives costs
        that much more to apply (tests/ui/slow_node.py)."""
        config = self.folder / f"{branch}.conf"
        config.write_text(
            f"branch_id = {branch!r}\nsave_history = True\nwork_dir = 'data'\n"
            f"replication_hosts = [('{self.broker.host}', {self.broker.port})]\n"
            f"replication_channel = {self.channel!r}\n"
            f"replication_peer_gone_after = {GONE_AFTER_S}\n"
            f"api_token = {TOKEN!r}\n"
        )
        log = self.folder / f"{branch}-{len(self.started)}.log"
        command = node_command(config)
        env = None
        if apply_delay_s is not None:
            command[1:3] = [str(SLOW_NODE)]  # "-m vesper" -> the slowed entry point
            env = {APPLY_DELAY: str(apply_delay_s)}
        node = NodeProcess(command, self.folder, log, env).start()
        self.started.append(node)
        self.nodes[branch] = node
        return node

    def client(self, branch: str) -> httpx.Client:
        return self.nodes[branch].client(headers={"Authorization": f"Bearer {TOKEN}"})

    def status(self, branch: str) -> dict[str, Any]:
        with self.client(branch) as client:
            return client.get("/api/status").json()

    def stop(self, branch: str) -> None:
        assert self.nodes[branch].stop(signal.SIGTERM) == 0, self.nodes[branch].log()

    def wait(self, condition: Callable[[], bool], what: Callable[[], str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"not within {timeout} s: {what()}")
            time.sleep(0.05)

    def in_sync(self) -> bool:
        states = [self.status(b) for b in self.nodes]
        heard = all(len(s["replication"]["peers"]) == len(states) - 1 for s in states)
        return heard and all(
            (s["revision"], s["digest"], s["pending"])
            == (states[0]["revision"], states[0]["digest"], 0)
            for s in states
        )

    def describe(self) -> str:
        return "; ".join(
            f"{b}: {s['revision']} pending={s['pending']}"
            for b, s in ((b, self.status(b)) for b in self.nodes)
        )

    def kill_all(self) -> None:
        for node in self.started:
            node.kill()


@contextmanager
def three_nodes(folder: Path) -> Iterator[Cluster]:
    """N1, N2 and N3 on a broker of their own, connected and in sync; all killed at the
    end."""
    broker = BrokerProcess(
        folder / "broker", control=True, allow_anonymous=True, log_path=folder / "broker.log"
    )
    broker.start()
    made = Cluster(folder, broker)
    try:
        for branch in ("N1", "N2", "N3"):
            made.start(branch)
        made.wait(made.in_sync, made.describe, 30)
        yield made
    finally:
        made.kill_all()
        broker.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """N1, N2 and N3, connected and in sync; tests leave them so (all running)."""
    with three_nodes(tmp_path_factory.mktemp("cluster")) as made:
        yield made
