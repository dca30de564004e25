"""The dashboard in a real browser (Debian's chromium through Playwright) against three
real ``vesper serve`` nodes that replicate through an embedded broker and want a token.

Every wait is for a condition with a deadline (Playwright's ``expect``), never a sleep.
Each test leaves the three nodes running and in sync for the next. Screenshots go to
the test's tmp_path and to ``$VESPER_ARTIFACTS`` when set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import stomp

from tests.ui.conftest import CHROMIUM, GONE_AFTER_S, NO_CHROMIUM, TOKEN, Cluster
from vesper.api.openapi import openapi_document
from vesper.replication import wire

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)
expect = sync_api.expect
if CHROMIUM is None:  # before the cluster starts: it would be for nothing
    pytest.skip(NO_CHROMIUM, allow_module_level=True)

Screenshot = Callable[[Any, str], Path]
#: Seconds the page may take to show what the nodes report (it polls every 1.5 s).
SHOWN_S = 15.0


def ms(seconds: float) -> float:
    return seconds * 1000


def log_in(page: Any, url: str, token: str = TOKEN) -> None:
    page.goto(f"{url}/ui")
    expect(page.locator("#login")).to_be_visible(timeout=ms(SHOWN_S))
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")


def open_dashboard(page: Any, cluster: Cluster) -> None:
    log_in(page, cluster.nodes["N1"].url)
    expect(page.locator("#login")).to_be_hidden(timeout=ms(SHOWN_S))
    expect(page.locator("#node-name")).to_have_text("N1", timeout=ms(SHOWN_S))


def peer(page: Any, name: str) -> Any:
    return page.locator(f'#peers tr[data-peer="{name}"]')


def fetch_status(page: Any, path: str, method: str = "GET") -> int:
    """What the page's own fetch (with its cookie, without a token) gets."""
    return page.evaluate(
        "async ([path, method]) => (await fetch(path, {method, body: method === 'GET' ? "
        'undefined : \'{"id": "from-the-page"}\'})).status',
        [path, method],
    )


def test_login_shows_every_peer_in_sync_and_the_session_only_reads(
    cluster: Cluster, page: Any, screenshot: Screenshot
) -> None:
    log_in(page, cluster.nodes["N1"].url, token="not-the-token-0123456789")
    expect(page.locator("#login-error")).to_contain_text("not valid", timeout=ms(SHOWN_S))
    screenshot(page, "login-refused")

    page.fill("#token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login")).to_be_hidden(timeout=ms(SHOWN_S))
    for name in ("N2", "N3"):
        expect(peer(page, name)).to_have_attribute("data-state", "in_sync", timeout=ms(SHOWN_S))
    expect(page.locator('#node [data-field="branch_id"]')).to_have_text("N1")
    expect(page.locator('#node [data-field="public_key"]')).to_contain_text("ed25519:")
    expect(page.locator('#node [data-field="broker"]')).to_contain_text(
        f"{cluster.broker.host}:{cluster.broker.port}"
    )
    # The picture: one channel, this node and both peers in it.
    expect(page.locator("#topology rect.channel")).to_have_count(1)
    expect(page.locator("#topology g.topo-node")).to_have_count(3)
    expect(page.locator('#topology g.topo-node[data-node="N1"] circle.self-ring')).to_have_count(1)
    screenshot(page, "in-sync")

    # The cookie: HttpOnly, SameSite=Strict, not Secure over plain HTTP, never the token.
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["vesper_session_N1"], cookies
    cookie = cookies[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert TOKEN not in cookie["value"] and len(cookie["value"]) >= 43
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts

    # The session reads, and never writes.
    assert fetch_status(page, "/api/status") == 200
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        path = "/api/objects" if method == "POST" else "/api/objects/from-the-page"
        assert fetch_status(page, path, method) == 403, method
    with cluster.client("N1") as client:
        assert client.get("/api/objects/from-the-page").status_code == 404

    page.click("#logout")
    expect(page.locator("#login")).to_be_visible(timeout=ms(SHOWN_S))
    assert fetch_status(page, "/api/status") == 401
    assert page.context.cookies() == []


def test_docs_list_every_operation_with_the_network_blocked(
    cluster: Cluster, page: Any, screenshot: Screenshot
) -> None:
    open_dashboard(page, cluster)  # the node wants a token: the session opens /docs
    page.goto(f"{cluster.nodes['N1'].url}/docs")
    document = openapi_document()
    operations = [
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    ]
    expect(page.locator("section.operation[data-method]")).to_have_count(len(operations))
    for method, path in operations:
        section = page.locator(f'section.operation[data-method="{method}"][data-path="{path}"]')
        expect(section).to_be_visible()
        expect(section.locator("h3")).to_contain_text(path)
    expect(page.locator("#schema-Status")).to_contain_text("replication")
    screenshot(page, "docs")


def test_stopped_node_turns_gone_then_catches_up(
    cluster: Cluster, page: Any, screenshot: Screenshot
) -> None:
    open_dashboard(page, cluster)
    expect(peer(page, "N3")).to_have_attribute("data-state", "in_sync", timeout=ms(SHOWN_S))

    cluster.stop("N3")
    expect(peer(page, "N3")).to_have_attribute(
        "data-state", "gone", timeout=ms(GONE_AFTER_S + SHOWN_S)
    )
    expect(page.locator('#topology g.topo-node[data-node="N3"]')).to_have_attribute(
        "data-state", "gone"
    )
    missed = 600
    with cluster.client("N1") as client:
        for i in range(missed):
            client.post("/api/objects", json={"id": f"missed-{i}", "i": i}).raise_for_status()
    expect(peer(page, "N3").locator('[data-field="behind_us"]')).to_contain_text(
        f"{missed}", timeout=ms(SHOWN_S)
    )
    expect(page.locator("#chart polyline.commits")).to_have_count(1)
    screenshot(page, "gone-and-behind")

    # Back, applying 20 ms slower per changeset, 25 per transaction: about 12 s of
    # catch-up to watch, eight polls of the page.
    cluster.start("N3", apply_delay_s=0.02)
    progress = page.locator('[data-progress="to-N3"]')
    expect(progress).to_be_visible(timeout=ms(SHOWN_S))
    expect(progress).to_contain_text(f"of {missed} changesets")
    expect(peer(page, "N3")).to_have_attribute("data-state", "catching_up")
    screenshot(page, "catching-up")
    bar = progress.locator('[role="progressbar"]')
    first = int(bar.get_attribute("aria-valuenow") or 0)
    deadline = time.monotonic() + 30
    while True:
        expect(progress).to_be_visible()  # gone before it moved: nothing was watched
        now = int(bar.get_attribute("aria-valuenow") or 0)
        if now > first:
            break
        assert time.monotonic() < deadline, f"the progress bar stayed at {first}"
        page.wait_for_timeout(100)
    expect(peer(page, "N3")).to_have_attribute("data-state", "in_sync", timeout=ms(30))
    expect(peer(page, "N3").locator('[data-field="behind_us"]')).to_have_text("0")
    expect(progress).to_have_count(0)
    screenshot(page, "caught-up")
    cluster.wait(cluster.in_sync, cluster.describe, 30)


def test_concurrent_writes_show_as_a_conflict(
    cluster: Cluster, page: Any, screenshot: Screenshot
) -> None:
    open_dashboard(page, cluster)
    with cluster.client("N1") as one, cluster.client("N2") as two:
        one.post("/api/objects", json={"id": "paint", "color": "red"}).raise_for_status()
        cluster.wait(
            lambda: two.get("/api/objects/paint").status_code == 200,
            lambda: "paint on N2",
            SHOWN_S,
        )
        # Paused, the broker delivers nothing: each node commits without the other's.
        cluster.broker.pause()
        try:
            one.patch("/api/objects/paint", json={"color": "blue"}).raise_for_status()
            two.patch("/api/objects/paint", json={"color": "green"}).raise_for_status()
        finally:
            cluster.broker.resume()
    row = page.locator('#conflicts tr[data-id="paint"][data-property="color"]')
    expect(row).to_be_visible(timeout=ms(SHOWN_S))
    expect(row).to_contain_text('"blue"')
    expect(row).to_contain_text('"green"')
    screenshot(page, "conflict")
    cluster.wait(cluster.in_sync, cluster.describe, 30)


def test_a_hostile_quarantined_message_is_shown_as_text(
    cluster: Cluster, page: Any, screenshot: Screenshot
) -> None:
    open_dashboard(page, cluster)
    payload = '<img src="/x" onerror="window.pwned = 1"><script>window.pwned = 2</script>'
    sender = stomp.Connection12([(cluster.broker.host, cluster.broker.port)], heartbeats=(0, 0))
    sender.connect(wait=True)
    try:
        sender.send(
            wire.topic(cluster.channel),
            payload,
            content_type=wire.JSON,
            headers={wire.CLIENTID: "N9", wire.TYPE: wire.CHANGESETS, "persistent": "true"},
        )
    finally:
        sender.disconnect()
    row = page.locator("#quarantine tbody tr").filter(has_text="N9")
    expect(row.first).to_be_visible(timeout=ms(SHOWN_S))
    row.first.locator("summary").click()
    expect(row.first.locator("pre")).to_contain_text(payload)
    screenshot(page, "quarantine")
    assert page.locator("#quarantine img, #quarantine script").count() == 0
    assert page.evaluate("window.pwned") is None
    expect(page.locator("#quarantine-summary")).to_contain_text("since start")


def synthetic_status() -> dict[str, Any]:
    """A hub on three channels whose peers include another hub and a node of an older
    version (no state, ``lag``/``seconds_since_seen``)."""
    heard = {"last_heard": "2026-01-05T10:00:00Z", "seconds_since_heard": 1.0}
    return {
        "branch_id": "H1",
        "public_key": "ed25519:" + "A" * 43,
        "revision": "A1.40,H1.7",
        "digest": "0" * 64,
        "objects": 12,
        "pending": 0,
        "outbox": 0,
        "replication": {
            "enabled": True,
            "connected": "127.0.0.1:61613",
            "channel": "top",
            "channels": ["top", "site1", "site2"],
            "broker": "vesper/0.1.0",
            "apply_backlog": 3,
            "peers": {
                "H2": {"revision": "A1.40,H1.7", "state": "in_sync", "behind_us": 0,
                       "ahead_of_us": 0, "channels": ["top", "site2"], **heard},
                "A1": {"revision": "A1.90", "state": "catching_up", "behind_us": 7,
                       "ahead_of_us": 50, "channel": "site1", **heard},
                "T1": {"revision": "A1.40,H1.7", "state": "diverged", "behind_us": 0,
                       "ahead_of_us": 0, "channel": "top", **heard},
                "OLD": {"revision": "H1.7", "lag": 0, "last_seen": "2026-01-05T09:00:00Z",
                        "seconds_since_seen": 3600.0, "channel": "site2"},
            },
            "catchup": {"peer": "A1", "received": 50, "expected": 200, "seconds": 5.0},
            "quarantined": {},
            "forks": 0,
        },
    }  # fmt: skip


def test_topology_draws_hubs_and_an_older_status_still_shows(
    cluster: Cluster, page: Any, screenshot: Screenshot
) -> None:
    body = orjson.dumps(synthetic_status())
    page.route(
        "**/api/status",
        lambda route: route.fulfill(status=200, content_type="application/json", body=body),
    )
    # No login: the answer to /api/status is this one, whoever asks.
    page.goto(f"{cluster.nodes['N1'].url}/ui")
    expect(page.locator("#node-name")).to_have_text("H1", timeout=ms(SHOWN_S))
    expect(page.locator("#topology rect.channel")).to_have_count(3)
    expect(page.locator("#topology g.topo-node")).to_have_count(5)
    expect(page.locator("#topology text.hub-label")).to_have_count(2)  # H1 and H2
    # The older peer has no state: judged gone from seconds_since_seen.
    expect(peer(page, "OLD")).to_have_attribute("data-state", "gone")
    expect(peer(page, "OLD").locator(".state")).to_have_class("state derived")
    expect(peer(page, "T1")).to_have_attribute("data-state", "diverged")
    expect(peer(page, "A1").locator('[data-field="ahead_of_us"]')).to_contain_text("50")
    expect(page.locator('[data-progress="self"]')).to_contain_text("50 of 200 changesets")
    expect(page.locator('[data-progress="self"]')).to_contain_text("10.0/s")
    screenshot(page, "hubs")
