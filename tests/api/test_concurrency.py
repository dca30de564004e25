"""Optimistic concurrency over HTTP: ETags, If-Match, If-None-Match, transactions'
``if_version`` and idempotency keys, including the requests that try to get past them."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.api.conftest import BASIC_CONFIG, NodeProcess, StartNode


def etag_of(client: httpx.Client, obj_id: str) -> str:
    answer = client.get(f"/api/objects/{obj_id}")
    assert answer.status_code == 200, answer.text
    return answer.headers["etag"]


def test_reads_carry_the_etag_that_writes_answer_and_304_when_current(http: httpx.Client) -> None:
    created = http.post("/api/objects", json={"id": "cc-etag", "n": 1})
    assert etag_of(http, "cc-etag") == created.headers["etag"]
    patched = http.patch("/api/objects/cc-etag", json={"n": 2})
    tag = etag_of(http, "cc-etag")
    assert tag == patched.headers["etag"] != created.headers["etag"]
    assert http.get("/api/objects/cc-etag", headers={"If-None-Match": tag}).status_code == 304
    assert http.get("/api/objects/cc-etag", headers={"If-None-Match": "*"}).status_code == 304
    stale = created.headers["etag"]
    assert http.get("/api/objects/cc-etag", headers={"If-None-Match": stale}).status_code == 200


def test_racing_read_modify_writes_exactly_one_wins_each_round(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "cc-race", "count": 0})
    url = http.base_url
    for round_ in range(30):
        tag = etag_of(http, "cc-race")
        barrier = threading.Barrier(2)
        statuses: list[int] = []

        def writer(
            name: str,
            tag: str = tag,
            barrier: threading.Barrier = barrier,
            statuses: list[int] = statuses,
        ) -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                barrier.wait()
                answer = client.patch(
                    "/api/objects/cc-race", json={"by": name}, headers={"If-Match": tag}
                )
                statuses.append(answer.status_code)

        threads = [threading.Thread(target=writer, args=(n,)) for n in ("x", "y")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses) == [200, 412], (round_, statuses)


def test_if_match_guards_put_patch_and_delete(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "cc-guard", "v": 1})
    old = etag_of(http, "cc-guard")
    http.put("/api/objects/cc-guard", json={"v": 2})
    for method, body in (("PUT", {"v": 3}), ("PATCH", {"v": 3}), ("DELETE", None)):
        answer = http.request(method, "/api/objects/cc-guard", json=body, headers={"If-Match": old})
        assert answer.status_code == 412, (method, answer.text)
        assert "changed since it was read" in answer.json()["error"]
    assert http.get("/api/objects/cc-guard").json() == {"id": "cc-guard", "v": 2}
    current = etag_of(http, "cc-guard")
    assert http.delete("/api/objects/cc-guard", headers={"If-Match": current}).status_code == 200
    # Deleted: no version matches any more, not even the last one.
    answer = http.put("/api/objects/cc-guard", json={"v": 4}, headers={"If-Match": current})
    assert answer.status_code == 412 and "does not exist" in answer.json()["error"]


def test_if_none_match_star_creates_only(http: httpx.Client) -> None:
    first = http.put("/api/objects/cc-new", json={"v": 1}, headers={"If-None-Match": "*"})
    assert first.status_code == 200
    again = http.put("/api/objects/cc-new", json={"v": 2}, headers={"If-None-Match": "*"})
    assert again.status_code == 412
    assert http.get("/api/objects/cc-new").json() == {"id": "cc-new", "v": 1}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-Match": "*"}, 400),
        ({"If-Match": '"a", "b"'}, 400),
        ({"If-Match": "no-quotes"}, 400),
        ({"If-Match": '"' + "g" * 32 + '"'}, 400),
        ({"If-Match": 'W/"' + "0" * 32 + '"'}, 412),  # weak never matches a write
        ({"If-Match": '"' + "0" * 32 + '"'}, 412),
        ({"If-None-Match": '"' + "0" * 32 + '"'}, 400),  # a write takes only *
        ({"If-Match": '"' + "0" * 32 + '"', "If-None-Match": "*"}, 400),
    ],
)
def test_malformed_or_forged_conditions_never_write(
    http: httpx.Client, headers: dict[str, str], status: int
) -> None:
    http.put("/api/objects/cc-forge", json={"v": 1})
    before = http.get("/api/status").json()["revision"]
    answer = http.put("/api/objects/cc-forge", json={"v": 2}, headers=headers)
    assert answer.status_code == status, answer.text
    assert http.get("/api/status").json()["revision"] == before


def test_transaction_if_version_is_all_or_nothing(http: httpx.Client) -> None:
    http.post("/api/objects", json=[{"id": "cc-t1"}, {"id": "cc-t2"}])
    v1 = etag_of(http, "cc-t1").strip('"')
    stale = etag_of(http, "cc-t2").strip('"')
    http.patch("/api/objects/cc-t2", json={"moved": True})
    before = http.get("/api/status").json()["revision"]
    answer = http.post(
        "/api/transaction",
        json={
            "ops": [
                {"op": "update", "id": "cc-t1", "patch": {"x": 1}, "if_version": v1},
                {"op": "delete", "id": "cc-t2", "if_version": stale},
            ]
        },
    )
    assert answer.status_code == 412, answer.text
    assert http.get("/api/status").json()["revision"] == before
    assert http.get("/api/objects/cc-t1").json() == {"id": "cc-t1"}
    # null on a replace: create only.
    created = http.post(
        "/api/transaction",
        json={"ops": [{"op": "replace", "object": {"id": "cc-t3"}, "if_version": None}]},
    )
    assert created.status_code == 200
    refused = http.post(
        "/api/transaction",
        json={"ops": [{"op": "replace", "object": {"id": "cc-t3"}, "if_version": None}]},
    )
    assert refused.status_code == 412
    for bad in (
        {"op": "create", "object": {"id": "cc-t4"}, "if_version": v1},
        {"op": "delete", "id": "cc-t1", "if_version": None},
        {"op": "delete", "id": "cc-t1", "if_version": 5},
    ):
        assert http.post("/api/transaction", json={"ops": [bad]}).status_code == 400, bad


def test_an_idempotency_key_makes_a_retry_answer_without_creating_twice(
    start_node: StartNode,
) -> None:
    node: NodeProcess = start_node(BASIC_CONFIG)
    key = {"Idempotency-Key": "order-7f3a"}
    with node.client() as client:
        # The client generates no id: a plain retry would make a second object.
        first = client.post("/api/objects", json={"item": "book"}, headers=key)
        assert first.status_code == 201
        again = client.post("/api/objects", json={"item": "book"}, headers=key)
        assert again.status_code == 201 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        other = client.post("/api/objects", json={"item": "pen"}, headers=key)
        assert other.status_code == 422 and "another request" in other.json()["error"]
        tx_key = {"Idempotency-Key": "tx-1"}
        ops = {"ops": [{"op": "create", "object": {"n": 1}}]}
        assert client.post("/api/transaction", json=ops, headers=tx_key).status_code == 200
        assert client.post("/api/transaction", json=ops, headers=tx_key).status_code == 200
        for bad in (b"", b"x" * 256, "caf\u00e9".encode(), b"a\tb"):
            answer = client.post(
                "/api/objects", content=b'{"n": 2}', headers={"Idempotency-Key": bad}
            )
            assert answer.status_code == 400, bad
        assert client.get("/api/status").json()["objects"] == 2
    # Kept durably: a retry after the node restarted still finds the first answer.
    assert node.stop() == 0
    node = start_node(BASIC_CONFIG)
    with node.client() as client:
        again = client.post("/api/objects", json={"item": "book"}, headers=key)
        assert again.json() == first.json()
        assert client.get("/api/status").json()["objects"] == 2
