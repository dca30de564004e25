"""``GET /api/digest`` on a real ``vesper serve``, and the digest in announcements."""

from __future__ import annotations

import time

import httpx
import orjson

from tests.api.conftest import BASIC_CONFIG, StartNode
from tests.api.helpers import error_of
from tests.replication.harness import wait_for
from tests.replication.memory_transport import MemoryBroker, MemoryNode
from tests.store.digest_reference import reference_buckets, reference_digest
from vesper.replication import wire
from vesper.trust.signing import sign

EMPTY_DIGEST = "e5a00aa9991ac8a5ee3109844d84a55583bd20572ad3ffcd42792f3c36b183ad"


def test_digest_matches_the_listing_and_the_status(http: httpx.Client) -> None:
    http.post(
        "/api/objects",
        json=[{"id": "d1", "é": "ü", "n": 1.5, "big": 2**62}, {"id": "d0"}, {"id": "d/2"}],
    ).raise_for_status()
    http.patch("/api/objects/d1", json={"n": 2}).raise_for_status()
    http.delete("/api/objects/d%2F2").raise_for_status()
    r = http.get("/api/digest")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answer = r.json()
    assert list(answer) == ["digest", "revision", "buckets"]
    listing = http.get("/api/objects").json()
    assert answer["revision"] == listing["revision"]
    assert answer["digest"] == reference_digest(listing["results"])
    assert answer["buckets"] == reference_buckets(listing["results"])
    assert len(answer["buckets"]) == 256
    status = http.get("/api/status").json()
    assert (status["revision"], status["digest"]) == (answer["revision"], answer["digest"])
    # Every write moves it, and it stays the definition's.
    http.delete("/api/objects/d0").raise_for_status()
    after = http.get("/api/digest").json()
    assert after["digest"] != answer["digest"] and after["revision"] != answer["revision"]
    listing = http.get("/api/objects").json()
    assert after["digest"] == reference_digest(listing["results"])


def test_digest_takes_no_parameters_and_no_writes(http: httpx.Client) -> None:
    error_of(http.get("/api/digest?bucket=1"), 400)
    error_of(http.post("/api/digest", json={}), 405)


def test_digest_needs_a_token_when_tokens_are_set(start_node: StartNode) -> None:
    read, write = "read-token-0123456789abcdefg", "write-token-0123456789abcdef"
    node = start_node(BASIC_CONFIG + f"api_token = {write!r}\napi_read_token = {read!r}\n")
    with node.client() as client:
        assert client.get("/api/digest").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/api/digest", headers=wrong).status_code == 401
        answer = client.get("/api/digest", headers={"Authorization": f"Bearer {read}"}).json()
    assert answer == {"digest": EMPTY_DIGEST, "revision": "", "buckets": [EMPTY_DIGEST] * 256}


# -- announcements -----------------------------------------------------------------


def test_announcements_carry_the_digest_and_a_divergence_shows() -> None:
    broker = MemoryBroker()
    a = MemoryNode(broker, "A").start()
    b = MemoryNode(broker, "B").start()
    try:
        a.store.create([{"id": "x", "n": 1}, {"id": "y", "s": "é"}])
        revision, digest = a.store.revision_and_digest()

        def a_as_b_sees_it() -> dict[str, object]:
            return b.status()["peers"].get("A", {})

        wait_for(
            lambda: b.store.revision == revision and a_as_b_sees_it().get("revision") == revision,
            20,
            "B has A's writes and A's announcement of them",
        )
        assert b.store.digest() == digest
        assert a_as_b_sees_it()["digest"] == digest
        assert a_as_b_sees_it()["diverged"] is False
        a.service.stop()  # from here on only the announcement below speaks for A
        forged = {
            "type": "announce",
            "branch": "A",
            "revision": revision,
            "digest": "0" * 64,  # same revision, other objects: signed by A's own key
            "time_ms": int(time.time() * 1000) + 1,
        }
        broker.publish(
            wire.sync_topic("c"),
            {wire.CLIENTID: "A", wire.TYPE: wire.ANNOUNCE},
            orjson.dumps(sign(forged, a.key)),
        )
        wait_for(lambda: a_as_b_sees_it().get("diverged") is True, 10, "B sees the divergence")
        assert a_as_b_sees_it()["digest"] == "0" * 64
    finally:
        b.stop()
        a.service.stop()
        a.store.close()
