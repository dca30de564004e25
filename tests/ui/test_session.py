"""The dashboard's session cookie, attacked: forged and foreign cookies, expired and
ended sessions, a cookie used to write (CSRF), wrong tokens at login and their rate
limit, oversized and malformed logins.

The app runs in process (httpx's ASGI transport), so a test can move the sessions'
clock; the browser tests (test_dashboard.py) log in through a real server.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from vesper.api import create_app
from vesper.api.auth import DASHBOARD_OPEN, MAX_SESSIONS, Sessions
from vesper.api.dashboard import ASSETS, LOGIN_BURST, LoginLimiter
from vesper.api.middleware import RequestGuard
from vesper.config import Settings
from vesper.node import Node

WRITE = "write-token-0123456789abcdef"
READ = "read-token-0123456789abcdefg"
COOKIE = "vesper_session_N1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Api:
    """Requests to the app in process, each from the client address given; no cookie
    jar: every cookie a test sends it names itself."""

    def __init__(self, app: RequestGuard) -> None:
        self.app = app

    def request(
        self,
        method: str,
        path: str,
        *,
        session: str | None = None,
        token: str | None = None,
        address: str = "127.0.0.1",
        scheme: str = "http",
        **kwargs: Any,
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if session is not None:
            headers["cookie"] = f"{COOKIE}={session}"
        if token is not None:
            headers["authorization"] = f"Bearer {token}"

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
            async with httpx.AsyncClient(
                transport=transport, base_url=f"{scheme}://127.0.0.1"
            ) as client:
                return await client.request(method, path, headers=headers, **kwargs)

        # In a thread of its own: Playwright's sync API keeps an event loop running in
        # this one while a browser is open.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, send()).result()

    def login(self, token: str = WRITE, **kwargs: Any) -> httpx.Response:
        return self.request("POST", "/ui/session", json={"token": token}, **kwargs)

    def session(self, token: str = WRITE) -> str:
        """A new session's id, from the Set-Cookie of a successful login."""
        response = self.login(token)
        assert response.status_code == 200, response.text
        return cookie_of(response)[0]


def cookie_of(response: httpx.Response) -> tuple[str, set[str]]:
    """The session cookie's value and its attributes (lowercased)."""
    header = response.headers["set-cookie"]
    name_value, *attributes = [part.strip() for part in header.split(";")]
    name, _, value = name_value.partition("=")
    assert name == COOKIE, header
    return value, {a.lower() for a in attributes}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(clock: Clock) -> Iterator[Api]:
    """A node that wants tokens, whose sessions follow ``clock``."""
    settings = Settings(
        branch_id="N1", storage_url="mem://", save_history=True, api_token=WRITE,
        api_read_token=READ,
    )  # fmt: skip
    node = Node(settings).start()
    app = create_app(node)
    assert app.auth is not None
    app.auth.sessions = Sessions(clock=clock)
    try:
        yield Api(app)
    finally:
        node.close()


def test_login_sets_an_http_only_strict_cookie_that_is_not_the_token(api: Api) -> None:
    for token in (WRITE, READ):  # a read token is enough to watch
        response = api.login(token)
        assert response.status_code == 200 and response.json()["session"] is True
        value, attributes = cookie_of(response)
        assert token not in value and len(value) >= 43  # 256 random bits
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        assert "secure" not in attributes  # plain HTTP: the browser would drop it
        assert response.headers["cache-control"] == "no-store"
    assert api.session() != api.session()
    # Over HTTPS the cookie is Secure: never sent over plain HTTP afterwards.
    _, attributes = cookie_of(api.login(scheme="https"))
    assert "secure" in attributes


def test_a_session_reads_and_never_writes(api: Api) -> None:
    session = api.session()
    assert api.request("GET", "/api/status", session=session).status_code == 200
    assert api.request("HEAD", "/api/objects", session=session).status_code == 200
    assert api.request("GET", "/docs", session=session).status_code == 200
    assert api.request("GET", "/ui/settings", session=session).json()["branch_id"] == "N1"
    for method, path in [
        ("POST", "/api/objects"),
        ("PUT", "/api/objects/csrf"),
        ("PATCH", "/api/objects/csrf"),
        ("DELETE", "/api/objects/csrf"),
        ("POST", "/api/transaction"),
        ("OPTIONS", "/api/objects"),
    ]:
        response = api.request(method, path, session=session, json={"id": "csrf"})
        assert response.status_code == 403, (method, response.text)
        assert "insufficient_scope" in response.headers["www-authenticate"]
        assert "bearer token" in response.json()["error"]
    assert api.request("GET", "/api/objects/csrf", token=WRITE).status_code == 404
    # A dead session writing is refused the same way: the answer tells nothing about
    # which ids are live.
    assert api.request("POST", "/api/objects", session="forged", json={}).status_code == 403
    # With a bearer token the cookie is beside the point: the token decides.
    response = api.request("POST", "/api/objects", session=session, token=WRITE, json={"id": "t"})
    assert response.status_code == 201
    response = api.request("POST", "/api/objects", session=session, token=READ, json={"id": "r"})
    assert response.status_code == 403


def test_forged_and_foreign_cookies_are_refused(api: Api) -> None:
    real = api.session()
    for forged in ["forged", real[:-1] + ("A" if real[-1] != "A" else "B"), WRITE, READ, "a" * 43]:
        response = api.request("GET", "/api/status", session=forged)
        assert response.status_code == 401, forged
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert "log in again" in response.json()["error"]
    # Another node's cookie (same host, other port) with an id unknown here.
    foreign = {"cookie": f"vesper_session_N2={real}x"}
    assert api.request("GET", "/api/status", headers=foreign).status_code == 401
    # ... beside this node's own, it does not spoil it.
    both = {"cookie": f"vesper_session_N2=unknown; {COOKIE}={real}; theme=dark"}
    assert api.request("GET", "/api/status", headers=both).status_code == 200
    # Other cookies are no credential at all; an empty session cookie is none either.
    for cookie in ("theme=dark", f"{COOKIE}=", f"session={real}"):
        response = api.request("GET", "/api/status", headers={"cookie": cookie})
        assert response.status_code == 401 and "bearer token" in response.json()["error"]


def test_sessions_end_when_idle_at_their_lifetime_and_on_logout(api: Api, clock: Clock) -> None:
    sessions = api.app.auth.sessions  # type: ignore[union-attr]
    idle = api.session()
    busy = api.session()
    # Used every few minutes, a session outlives the idle limit...
    for _ in range(int(sessions.idle_s // 600) + 2):
        clock.now += 600
        assert api.request("GET", "/api/status", session=busy).status_code == 200
    # ... which the unused one did not.
    assert api.request("GET", "/api/status", session=idle).status_code == 401
    # Past its lifetime, however busy, it is over.
    clock.now += sessions.lifetime_s
    assert api.request("GET", "/api/status", session=busy).status_code == 401

    session = api.session()
    assert api.request("GET", "/ui/session", session=session).json()["session"] is True
    response = api.request("DELETE", "/ui/session", session=session)
    assert response.status_code == 200 and response.json() == {"session": False}
    value, attributes = cookie_of(response)
    assert value in ("", '""') and "max-age=0" in attributes
    # A copy of the cookie kept by an attacker is worth nothing after logout.
    assert api.request("GET", "/api/status", session=session).status_code == 401
    answer = api.request("GET", "/ui/session", session=session).json()
    assert answer == {"tokens_required": True, "session": False, "expires_in": None}


def test_sessions_are_bounded(clock: Clock) -> None:
    sessions = Sessions(max_sessions=3, clock=clock)
    ids = [sessions.create() for _ in range(3)]
    clock.now += 1
    assert sessions.valid(ids[0].encode())  # used: now the most recent
    newest = sessions.create()
    assert len(sessions) == 3
    assert not sessions.valid(ids[1].encode())  # the least recently used one went
    assert all(sessions.valid(i.encode()) for i in (ids[0], ids[2], newest))
    assert MAX_SESSIONS >= 100


def test_wrong_tokens_at_login_are_401_then_rate_limited(api: Api) -> None:
    attacker = "127.0.0.9"
    for i in range(LOGIN_BURST):
        response = api.login(f"guess-{i}-0123456789abcdef", address=attacker)
        assert response.status_code == 401
        assert response.json() == {"error": "the token is not valid"}
        assert "set-cookie" not in response.headers
    response = api.login("guess-again-0123456789abcdef", address=attacker)
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    # Locked out, even the right token is not looked at: the login is no oracle.
    response = api.login(WRITE, address=attacker)
    assert response.status_code == 429 and "set-cookie" not in response.headers
    # Other addresses are not locked out by it, and bearer tokens still work.
    assert api.login(WRITE, address="127.0.0.10").status_code == 200
    assert api.request("GET", "/api/status", token=READ, address=attacker).status_code == 200
    metrics = api.request("GET", "/metrics", token=READ).text
    assert re.search(r'vesper_http_auth_failures_total\{reason="invalid_token"\} [5-9]', metrics)


def test_the_limiter_refills_and_stays_bounded(clock: Clock) -> None:
    limiter = LoginLimiter(burst=2, refill_s=10, memory=3, clock=clock)
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(10)
    clock.now += 4
    assert limiter.retry_after("a") == pytest.approx(6)
    clock.now += 6
    assert limiter.retry_after("a") == 0
    # A flood of addresses cannot grow the map: past ``memory`` they share one bucket.
    for address in ("b", "c", "d", "e", "f"):
        limiter.failed(address)
        limiter.failed(address)
    assert len(limiter._buckets) <= 3 + 1
    assert limiter.retry_after("zzz") > 0  # shares the flood's empty bucket


def test_malformed_and_oversized_logins(api: Api) -> None:
    cases = [
        ({"content": b"not json"}, 400),
        ({"json": {"password": WRITE}}, 400),
        ({"json": {"token": 12345}}, 400),
        ({"json": ["token", WRITE]}, 400),
        ({"content": b'{"token": "' + b"x" * 5000 + b'"}'}, 413),
        ({"json": {"token": "tökën-with-umlauts-0123456789"}}, 401),
    ]
    for kwargs, status in cases:
        response = api.request("POST", "/ui/session", address="127.0.0.20", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        assert "set-cookie" not in response.headers
    # A plain HTML form works too.
    response = api.request("POST", "/ui/session", data={"token": f"  {READ} "})
    assert response.status_code == 200 and cookie_of(response)[0]
    assert api.request("POST", "/ui/session?x=1", json={"token": WRITE}).status_code == 400


def test_dashboard_files_are_open_and_nothing_else_is(api: Api) -> None:
    assert {"/", "/ui", "/ui/session"} | {f"/ui/{name}" for name in ASSETS} <= DASHBOARD_OPEN
    for path in ("/", "/ui", "/ui/dashboard.js", "/ui/vesper.css"):
        response = api.request("GET", path)
        assert response.status_code == 200, path
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        etag = response.headers["etag"]
        assert api.request("GET", path, headers={"if-none-match": etag}).status_code == 304
    assert api.request("GET", "/ui/session").json()["tokens_required"] is True
    # Nothing the pages load names another host (the SVG namespace is a name, not a load).
    for path in ("/", "/ui", "/ui/dashboard.js", "/ui/vesper.css"):
        text = api.request("GET", path).text.replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path
    # No probing which other files or pages exist, and no data without a credential.
    for path in ("/ui/settings", "/ui/dashboard.html", "/ui/..%2Fauth.py", "/docs", "/api/status"):
        assert api.request("GET", path).status_code == 401, path
    assert api.request("GET", "/ui/nope", token=READ).status_code == 404


def test_a_node_without_tokens_needs_no_login() -> None:
    node = Node(Settings(branch_id="N1", storage_url="mem://", save_history=True)).start()
    try:
        api = Api(create_app(node))
        assert api.request("GET", "/ui/session").json() == {
            "tokens_required": False,
            "session": False,
            "expires_in": None,
        }
        assert api.login().status_code == 409
        assert api.request("GET", "/ui/settings").status_code == 200
    finally:
        node.close()
