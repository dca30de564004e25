"""Input a lenient parser would silently change: big integers, duplicate keys, bad
percent-encoding. Each is a 400 naming the problem, and nothing is written."""

from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import error_of

INT_MAX = 2**63 - 1
INT_MIN = -(2**63)


@pytest.mark.parametrize("number", [2**70, 2**63, 2**64 - 1, -(2**63) - 1])
def test_integers_outside_the_signed_64_bit_range_are_400(http: httpx.Client, number: int) -> None:
    body = b'{"id": "big-int", "n": ' + str(number).encode() + b"}"
    message = error_of(http.post("/api/objects", content=body), 400)
    assert f"n: integer {number} is outside the signed 64-bit range" in message
    error_of(http.put("/api/objects/big-int", content=body), 400)
    error_of(
        http.patch("/api/objects/big-int", content=b'{"n": ' + str(number).encode() + b"}"), 400
    )
    assert http.get("/api/objects/big-int").status_code == 404


def test_a_string_of_more_digits_than_an_integer_can_have_is_stored(http: httpx.Client) -> None:
    # 5,000 digits in a string: more than Python's int() converts. Not an integer, and
    # not a reason to fail (it was a 500).
    body = b'{"id": "digits", "s": "' + b"9" * 5_000 + b'"}'
    assert http.post("/api/objects", content=body).status_code == 201
    assert http.get("/api/objects/digits").json()["s"] == "9" * 5_000


def test_the_64_bit_limits_are_stored_exactly(http: httpx.Client) -> None:
    body = f'{{"id": "limits", "max": {INT_MAX}, "min": {INT_MIN}, "big": 1e30}}'.encode()
    assert http.post("/api/objects", content=body).status_code == 201
    got = http.get("/api/objects/limits")
    assert str(INT_MAX).encode() in got.content and str(INT_MIN).encode() in got.content
    assert got.json() == {"id": "limits", "max": INT_MAX, "min": INT_MIN, "big": 1e30}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"id": "dup", "a": 1, "a": 2}', "key 'a' appears twice"),
        (b'{"id": "dup", "id": "dup2"}', "key 'id' appears twice"),
        (b'{"id": "dup", "x": {"b": 1, "b": 1}}', "twice in the object at x"),
        (b'{"id": "dup", "x": [1, {"c": 1, "c": 2}]}', "twice in the object at x[1]"),
        (b'{"id": "dup", "a": 1, "\\u0061": 2}', "key 'a' appears twice"),
        (b'[{"id": "dup"}, {"id": "dup3", "k": 1, "k": 2}]', "twice in the object at [1]"),
    ],
)
def test_duplicate_keys_are_400(http: httpx.Client, body: bytes, needle: str) -> None:
    assert needle in error_of(http.post("/api/objects", content=body), 400)
    for obj_id in ["dup", "dup2", "dup3"]:
        assert http.get(f"/api/objects/{obj_id}").status_code == 404


def test_every_json_body_and_parameter_is_strict(http: httpx.Client) -> None:
    http.post("/api/objects", json={"id": "strict", "v": 1}).raise_for_status()
    error_of(http.put("/api/objects/strict", content=b'{"v": 2, "v": 3}'), 400)
    error_of(http.patch("/api/objects/strict", content=b'{"v": 2, "v": null}'), 400)
    ops = b'{"ops": [{"op": "update", "id": "strict", "patch": {"v": 2}, "patch": {"v": 3}}]}'
    error_of(http.post("/api/transaction", content=ops), 400)
    error_of(http.post("/api/transaction", content=b'{"ops": [], "ops": []}'), 400)
    message = error_of(http.get("/api/objects", params={"where": '{"v": 1, "v": 2}'}), 400)
    assert message.startswith("query parameter 'where': key 'v' appears twice")
    error_of(http.get("/api/objects", params={"where": '{"v": 36893488147419103232}'}), 400)
    assert http.get("/api/objects/strict").json() == {"id": "strict", "v": 1}


def test_ids_that_are_not_utf8_once_decoded_are_400(http: httpx.Client) -> None:
    # Decoded leniently, %FF, %FE and %EF%BF%BD would all be the id U+FFFD, so a write
    # to one would overwrite another.
    for raw in ["%FF", "%FE", "a%C3", "%C3%28", "%ED%A0%80", "%C0%AF"]:
        for method in ["GET", "PUT", "PATCH", "DELETE"]:
            body = b'{"v": 1}' if method in ("PUT", "PATCH") else None
            r = http.request(method, f"/api/objects/{raw}", content=body)
            assert "not valid UTF-8" in error_of(r, 400), (method, raw)
        error_of(http.get(f"/api/objects/{raw}/history"), 400)
    # A real U+FFFD is a valid id of its own.
    assert http.put("/api/objects/%EF%BF%BD", json={"v": "replacement"}).status_code == 200
    assert http.get("/api/objects/%EF%BF%BD").json() == {"id": "\ufffd", "v": "replacement"}
    error_of(http.get("/api/objects/%FF"), 400)
    assert http.get("/api/objects/%C3%A9").status_code == 404  # é: valid, just absent


def test_query_strings_are_decoded_strictly_too(http: httpx.Client) -> None:
    for query in ["after=%FF", "where=%7B%22a%22%3A%22%FE%22%7D", "limit=1&%FF=1"]:
        assert "not valid UTF-8" in error_of(http.get(f"/api/objects?{query}"), 400)
    assert http.get("/api/objects?after=%EF%BF%BD&limit=1").status_code == 200
