"""The store's digest against its definition: an LtHash of the canonical JSON of every
live object, per bucket and in total, kept by every commit and apply, across reopening,
rollback, and stores written by a version that did not keep it."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from tests.store.digest_reference import canonical, reference_buckets, reference_digest
from vesper.document import lthash
from vesper.errors import DocumentExists, StorageError
from vesper.store import Store, open_store
from vesper.store import digest as store_digest
from vesper.store.check import check_store

# Test vectors: computed from the definition in the tests below AND pinned here, so a
# change of the encoder (or of anything else the digest depends on) fails loudly.
EMPTY_DIGEST = "e5a00aa9991ac8a5ee3109844d84a55583bd20572ad3ffcd42792f3c36b183ad"
ONE = [{"id": "ada", "name": "Ada Lovelace", "born": 1815}]
ONE_DIGEST = "76e560c725d126c28aee81b14521dcf58391e601c83e7c372b2b1eb1a919e13b"
SEVERAL = [
    *ONE,
    {
        "id": "π",
        "r": 3.14159,
        "tiny": 1e-7,
        "huge": 1e21,
        "neg": -0.5,
        "text": "naïve café ü 日本語 😀",
    },
    {
        "id": "nested",
        "list": [1, 2.5, None, True, False, "x"],
        "obj": {"b": 1, "a": {"\ue000": 1, "\U0001f600": 2}},  # UTF-16 key order
    },
    {"id": "esc", "s": 'quote" backslash\\ tab\t nl\n nul\x00 del\x7f ls\u2028'},
]
SEVERAL_DIGEST = "be2783f4614416d45c2c5e289e417d262be17c74c356d03a1ad9bef537af1a01"
SEVERAL_BUCKETS = {
    253: ONE_DIGEST,  # "ada" alone in its bucket: the bucket digest is the store's
    38: "bcdbef9c690eb8cb46d2e911364b9341a48e368caaaf09de22dce00ad59cd854",  # π
    35: "16a83a118de36ba2fe32159cbf14b12798c91cf82b570e3322f230958c416ac0",  # nested
    23: "dffd0fb0f2dcbe0907e277de388d3a37d4d052fde41f536218900994f166c59e",  # esc
}
BIG = [{"id": "clock", "hlc": 2**62 + 1, "min": -(2**63), "max": 2**63 - 1, "edge": 2**53}]
BIG_CANONICAL = (
    b'{"edge":9007199254740992,"hlc":4611686018427387905,"id":"clock",'
    b'"max":9223372036854775807,"min":-9223372036854775808}'
)
BIG_DIGEST = "71d515a203217f58a66f4033bdb987a5d943082c927bd99dc89bda873d36a734"


def assert_matches_definition(store: Store) -> list[dict[str, Any]]:
    live = list(store.query())
    revision, digest, buckets = store.digest_buckets()
    assert revision == store.revision
    assert digest == store.digest() == reference_digest(live)
    assert store.revision_and_digest() == (revision, digest)
    assert buckets == reference_buckets(live)
    return live


# -- test vectors ------------------------------------------------------------------


def test_empty_store_is_the_sha256_of_2048_zero_bytes(store: Store) -> None:
    assert EMPTY_DIGEST == hashlib.sha256(bytes(2048)).hexdigest() == lthash.EMPTY_DIGEST
    revision, digest, buckets = store.digest_buckets()
    assert (revision, digest) == ("", EMPTY_DIGEST)
    assert buckets == [EMPTY_DIGEST] * 256
    assert_matches_definition(store)


@pytest.mark.parametrize(
    ("objects", "expected"),
    [(ONE, ONE_DIGEST), (SEVERAL, SEVERAL_DIGEST), (BIG, BIG_DIGEST)],
    ids=["one", "several", "beyond-2**53"],
)
def test_vectors(store: Store, objects: list[dict[str, Any]], expected: str) -> None:
    store.create(objects)
    live = assert_matches_definition(store)
    assert reference_digest(live) == expected
    assert store.digest() == expected


def test_bucket_vectors(store: Store) -> None:
    store.create(SEVERAL)
    buckets = store.digest_buckets()[2]
    assert {b: buckets[b] for b in SEVERAL_BUCKETS} == SEVERAL_BUCKETS
    others = set(range(256)) - set(SEVERAL_BUCKETS)
    assert {buckets[b] for b in others} == {EMPTY_DIGEST}
    assert [store_digest.bucket_of(o["id"]) for o in SEVERAL] == [253, 38, 35, 23]


def test_integers_beyond_2_53_are_their_exact_digits() -> None:
    # rfc8785 refuses them (JCS knows only doubles); a document holds any signed 64-bit
    # integer, and the digest takes it as its exact decimal digits.
    with pytest.raises(rfc8785.IntegerDomainError):
        rfc8785.dumps(BIG[0])
    assert canonical(BIG[0]) == BIG_CANONICAL
    assert store_digest.object_element(BIG[0]) == int.from_bytes(
        hashlib.shake_128(BIG_CANONICAL).digest(2048), "little"
    )


def test_floats_are_written_as_rfc8785_writes_them() -> None:
    for obj in SEVERAL:
        assert store_digest.object_element(obj) == int.from_bytes(
            hashlib.shake_128(rfc8785.dumps(obj)).digest(2048), "little"
        )


# -- the lane arithmetic -----------------------------------------------------------


def lanes(state: int) -> tuple[int, ...]:
    return struct.unpack("<1024H", lthash.to_bytes(state))


def state_of(values: list[int]) -> int:
    return int.from_bytes(struct.pack("<1024H", *values), "little")


def test_add_and_subtract_are_lane_wise_modulo_2_16() -> None:
    rng = random.Random(7)
    edges = [0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFE, 0xFFFF]
    for _ in range(50):
        a = [rng.choice(edges) if rng.random() < 0.3 else rng.randrange(65536) for _ in range(1024)]
        b = [rng.choice(edges) if rng.random() < 0.3 else rng.randrange(65536) for _ in range(1024)]
        sa, sb = state_of(a), state_of(b)
        assert lanes(lthash.add(sa, sb)) == tuple(
            (x + y) % 65536 for x, y in zip(a, b, strict=True)
        )
        assert lanes(lthash.subtract(sa, sb)) == tuple(
            (x - y) % 65536 for x, y in zip(a, b, strict=True)
        )


def test_lane_sum_folds_before_any_lane_overflows_its_slot() -> None:
    # All lanes 0xFFFF is the worst case for carries: n of them sum to -n in each lane.
    top = state_of([0xFFFF] * 1024)
    total = lthash.LaneSum()
    n = 70_000  # more than 2**16 elements: past the point where an unfolded sum breaks
    for _ in range(n):
        total.add(top)
    assert len(total) <= n
    assert lanes(total.value()) == ((-n) % 65536,) * 1024
    mixed = lthash.LaneSum()
    values = [lthash.element(str(i).encode()) for i in range(300)]
    expected = lthash.EMPTY_STATE
    for v in values:
        mixed.add(v)
        expected = lthash.add(expected, v)
    assert mixed.value() == expected


# -- kept by every write -----------------------------------------------------------


def test_creates_updates_deletes_and_transactions(store: Store) -> None:
    store.create(SEVERAL)
    assert_matches_definition(store)
    store.update("ada", {"born": 1816, "title": "Countess"})
    store.update("nested", {"obj": {"b": None, "c": [1.5]}})
    assert_matches_definition(store)
    store.replace({"r": 3}, "π")
    store.delete("esc")
    assert_matches_definition(store)
    store.transaction(
        [
            {"op": "create", "object": {"id": "t1", "v": 1}},
            {"op": "update", "id": "t1", "patch": {"v": 2}},
            {"op": "delete", "id": "ada"},
            {"op": "create", "object": {"id": "ada", "again": True}},
            {"op": "create", "object": {"id": "gone"}},
            {"op": "delete", "id": "gone"},
        ]
    )
    live = assert_matches_definition(store)
    assert {o["id"] for o in live} == {"π", "nested", "t1", "ada"}
    store.create({"id": "esc", "back": 1})  # a deleted id created again
    store.update("ada", {"again": True})  # a write that changes nothing visible
    assert_matches_definition(store)
    for obj in list(store.query()):
        store.delete(obj["id"])
    assert store.digest() == EMPTY_DIGEST
    assert store.digest_buckets()[2] == [EMPTY_DIGEST] * 256


def test_a_large_transaction(store: Store) -> None:
    docs = [{"id": f"o{i}", "n": i, "f": i / 7, "s": "é" * (i % 5)} for i in range(2000)]
    store.create(docs)
    assert_matches_definition(store)
    store.transaction(
        [{"op": "update", "id": f"o{i}", "patch": {"n": -i}} for i in range(0, 2000, 3)]
        + [{"op": "delete", "id": f"o{i}"} for i in range(1, 2000, 3)]
    )
    assert_matches_definition(store)


def test_the_memo_of_elements_stays_bounded(store: Store) -> None:
    store.create([{"id": f"m{i}", "v": i} for i in range(store_digest.MEMO_SIZE + 300)])
    for i in range(0, 600, 3):
        store.update(f"m{i}", {"v": -i})  # the first ones left the memo: computed again
    assert len(store._digest._memo) <= store_digest.MEMO_SIZE
    assert_matches_definition(store)


def sync(*nodes: Store) -> None:
    for target in nodes:
        for source in nodes:
            if source is not target:
                target.apply_many(source.changesets(since=target.revision))


def test_remote_applies_and_conflicts_converge_on_one_digest(tmp_path: Path) -> None:
    a = open_store("mem://", "A")
    b = open_store(f"sqlite:///{tmp_path}/b.db", "B")
    try:
        a.create(SEVERAL)
        sync(a, b)
        assert b.digest_buckets() == a.digest_buckets()
        # Concurrent writes: the same property, delete against update, create on both.
        a.update("ada", {"name": "A's"})
        b.update("ada", {"name": "B's"})
        a.delete("nested")
        b.update("nested", {"list": []})
        a.create({"id": "both", "from": "a"})
        b.create({"id": "both", "from": "b"})
        b.update("π", {"r": 2.5})
        assert a.digest() != b.digest()
        sync(a, b)
        assert a.revision == b.revision
        assert a.conflicts() and a.conflicts() == b.conflicts()
        assert a.digest_buckets() == b.digest_buckets()
        assert_matches_definition(a)
        assert_matches_definition(b)
    finally:
        a.close()
        b.close()


def test_random_writes_and_exchanges_on_three_stores(tmp_path: Path) -> None:
    rng = random.Random(2024)
    nodes = [
        open_store("mem://", "A"),
        open_store(f"sqlite:///{tmp_path}/b.db", "B"),
        open_store(f"sqlite:///{tmp_path}/c.db", "C"),
    ]
    values: list[Any] = [1, -2.5, "é", None, [1, {"x": 0.1}], {"k": "v"}, 2**60, True]
    try:
        for step in range(150):
            node = rng.choice(nodes)
            obj_id = f"k{rng.randrange(12)}"
            exists = node.get(obj_id) is not None
            try:
                if not exists:
                    node.create({"id": obj_id, "p": rng.choice(values)})
                elif rng.random() < 0.2:
                    node.delete(obj_id)
                elif rng.random() < 0.5:
                    node.update(obj_id, {rng.choice("pqr"): rng.choice(values)})
                else:
                    node.replace({"q": rng.choice(values)}, obj_id)
            except DocumentExists:
                pass
            if rng.random() < 0.2:
                a, b = rng.sample(nodes, 2)
                b.apply_many(a.changesets(since=b.revision))
            if step % 25 == 0:
                assert_matches_definition(node)
        sync(*nodes)
        sync(*nodes)
        assert len({n.revision for n in nodes}) == 1
        assert len({(n.digest(), tuple(n.digest_buckets()[2])) for n in nodes}) == 1
        for n in nodes:
            assert_matches_definition(n)
    finally:
        for n in nodes:
            n.close()


def test_out_of_order_changesets_count_once_released() -> None:
    a, b = open_store("mem://", "A"), open_store("mem://", "B")
    for i in range(5):
        a.create({"id": f"x{i}", "i": i})
    a.update("x0", {"i": 10})
    changesets = list(a.changesets())
    b.apply_many(changesets[3:])
    assert b.digest() == EMPTY_DIGEST  # all pending
    b.apply_many(changesets[:3])
    assert b.digest_buckets() == a.digest_buckets()
    assert_matches_definition(b)


def test_reopen_reads_the_stored_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with open_store(url, "A") as s:
        s.create(SEVERAL)
        s.delete("esc")
        before = s.digest_buckets()

    monkeypatch.setattr(store_digest, "_computed_states", no_scan)
    with open_store(url, "A") as s:
        assert s.digest_buckets() == before
        assert_matches_definition(s)


def no_scan(db: object) -> None:
    raise AssertionError("a store that kept its digest must not compute it again")


def older_version(path: Path, how: str) -> None:
    """Make the file look written (last) by a version that did not keep the digest."""
    conn = sqlite3.connect(path)
    if how == "no table":
        conn.execute("DROP TABLE digest_buckets")
    elif how == "no rows":
        conn.execute("DELETE FROM digest_buckets WHERE bucket % 2 = 0")
    else:  # it wrote an object and its state, without the mark, after this version
        conn.execute("DELETE FROM objects WHERE id = 'ada'")
        (text,) = conn.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
        conn.execute(
            "UPDATE meta SET value = json_remove(?, '$.digest_buckets') WHERE key = 'state'",
            (text,),
        )
    conn.commit()
    conn.close()


@pytest.mark.parametrize("how", ["no table", "no rows", "written without the mark"])
def test_a_store_that_did_not_keep_the_digest_computes_it_on_open(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    with open_store(f"sqlite:///{path}", "A") as s:
        s.create(SEVERAL)
    older_version(path, how)
    with open_store(f"sqlite:///{path}", "A") as s:
        live = assert_matches_definition(s)
        assert ("ada" in {o["id"] for o in live}) == (how != "written without the mark")
        s.create({"id": "later"})
        assert_matches_definition(s)
        expected = s.digest_buckets()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM digest_buckets").fetchone()[0] == 256
    conn.close()
    # Written once, with the mark: the next open reads it.
    monkeypatch.setattr(store_digest, "_computed_states", no_scan)
    with open_store(f"sqlite:///{path}", "A") as s:
        assert s.digest_buckets() == expected


# -- rollback ----------------------------------------------------------------------


def stored_blobs(store: Store) -> list[bytes]:
    return [r[0] for r in store.db.read("SELECT state FROM digest_buckets ORDER BY bucket")]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failed_commit_leaves_the_digest_unchanged(
    store: Store, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    store.create(SEVERAL)
    b = open_store("mem://", "B")
    b.create({"id": "remote", "v": 1})
    before, blobs = store.digest_buckets(), stored_blobs(store)
    real = Store._save_state

    def failing(self: Store, conn: Any) -> None:
        # "before": nothing staged yet; "after": the bucket rows are written, then fail.
        if when == "after":
            real(self, conn)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "_save_state", failing)
    with pytest.raises(StorageError):
        store.transaction(
            [
                {"op": "create", "object": {"id": "new", "v": 1}},
                {"op": "update", "id": "ada", "patch": {"born": 1}},
                {"op": "delete", "id": "esc"},
            ]
        )
    with pytest.raises(StorageError):
        store.delete("nested")
    with pytest.raises(StorageError):
        store.apply_many(b.changesets())
    monkeypatch.setattr(Store, "_save_state", real)
    assert store.digest_buckets() == before and stored_blobs(store) == blobs
    assert_matches_definition(store)
    # And the next commits start from the right state.
    store.update("ada", {"born": 2})
    store.apply_many(b.changesets())
    assert_matches_definition(store)


def test_a_refused_transaction_changes_nothing(store: Store) -> None:
    store.create(ONE)
    before = store.digest_buckets()
    with pytest.raises(DocumentExists):
        store.transaction(
            [{"op": "create", "object": {"id": "x"}}, {"op": "create", "object": {"id": "ada"}}]
        )
    assert store.digest_buckets() == before


def test_a_failed_commit_is_not_on_disk_after_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with open_store(url, "A") as s:
        s.create(SEVERAL)
        before = s.digest_buckets()

        def fail_commit(self: Store, conn: Any) -> None:
            real(self, conn)
            conn.execute("INSERT INTO meta VALUES ('branch_id', 'duplicate key')")

        real = Store._save_state
        monkeypatch.setattr(Store, "_save_state", fail_commit)
        with pytest.raises(StorageError):
            s.create({"id": "lost"})
        monkeypatch.setattr(Store, "_save_state", real)
    with open_store(url, "A") as s:
        assert s.digest_buckets() == before
        assert_matches_definition(s)


# -- readers -----------------------------------------------------------------------


def test_revision_and_digest_always_describe_one_revision(store: Store) -> None:
    expected: dict[str, str] = {store.revision: store.digest()}
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(store.revision_and_digest())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            if i % 3 == 2:
                store.delete(f"r{i - 1}")
            else:
                store.create({"id": f"r{i}", "i": i})
            pair = store.revision_and_digest()  # one writer: this is its commit
            expected[pair[0]] = pair[1]
    finally:
        done.set()
        reader.join()
    assert seen
    for revision, digest in seen:
        assert expected[revision] == digest


# -- vesper check --------------------------------------------------------------------


def test_check_finds_a_bucket_state_that_does_not_match_its_objects(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_store(f"sqlite:///{path}", "A") as s:
        s.create(SEVERAL)
    assert check_store(str(path)).sound
    conn = sqlite3.connect(path)
    conn.execute("UPDATE digest_buckets SET state = ? WHERE bucket = 38", (bytes(2048),))
    conn.commit()
    problems = check_store(str(path)).problems.items
    assert len(problems) == 1
    assert problems[0].startswith("digest_buckets: 1 bucket state does not match the objects")
    assert "(bucket 38);" in problems[0] and "delete the rows of digest_buckets" in problems[0]
    # The cure it names.
    conn.execute("DELETE FROM digest_buckets")
    conn.commit()
    conn.close()
    with open_store(f"sqlite:///{path}", "A") as s:
        assert_matches_definition(s)
    assert check_store(str(path)).sound
