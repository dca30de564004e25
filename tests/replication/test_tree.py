"""A three-level tree of channels, a hub killed with SIGKILL in the middle of the writes.

    channel R    leafR  h1 h2
    channel A           h1 h2  leafA  h3 h4      (h1, h2 link R and A; h3, h4 link A and A1)
    channel A1                        h3 h4  leafA1

Real ``vesper serve`` processes on one broker (the embedded one, or ``--mq``: only a
hub is killed, never the broker). Each node runs through ``bench/_timed_node.py``,
which logs every changeset the store reports as applied (``Store.apply_parsed``, the
call of every remote apply: topic, relay and catch-up alike) to a file per node,
across the node's restarts.

How a subtree heals, as the design gives it:

- Two hubs on a link (``test_a_second_hub_carries_the_subtree_while_the_first_is_dead``,
  h3 killed from outside at any moment of the writes): the second hub relays
  everything on its own, so while h3 is dead A1 goes on receiving from, and sending
  to, the rest of the tree through h4 (the test checks writes made after the kill
  crossing both ways before h3 is back). Nothing waits for h3; when it returns it is
  the one that heals, from what its durable subscriptions on A and A1 kept for it.
- One hub on a link (``test_the_only_hub_killed_between_apply_and_relay_heals_by_catch_up``):
  A1 is cut off while h3 is dead. h3 kills itself with SIGKILL at the worst moment,
  right after its store committed a batch from A and before relaying it to A1. Back,
  h3 is delivered again what it had not acknowledged, which now is a duplicate and is
  not relayed a second time, and everything published while it was dead, which it
  applies and relays. The batch it died on reaches A1 only by catch-up: h3 announces
  its revision on every channel and leafA1 fetches what it lacks from h3 (the test
  checks that leafA1 lacked it while h3 was dead and received changesets by catch-up).

Every node must end with every changeset of the tree, once. Same revision and digest
everywhere does not show it: merging a changeset a second time changes neither. So a
node's changes feed (``GET /api/changes``, one row per stored changeset) must list each
id exactly once, and its apply log must name each id at most once across all its lives
(exactly once, except for a hub killed from outside: SIGKILL may cut the last 0.1 s of
its log; the hub that kills itself flushes it first). Duplicates do reach the nodes
(two hubs relay each changeset onto a channel, a hub back from SIGKILL is delivered
again what it had not acknowledged): the tests check that they arrived, so the
once-check is not vacuous.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import NodeProcess
from tests.replication.harness import new_channel, wait_for
from vesper.history.revision import parse_revision

TIMED_NODE = Path(__file__).resolve().parents[2] / "bench" / "_timed_node.py"
APPLY_LOG = "VESPER_BENCH_APPLY_LOG"
WRITE_PAUSE_S = 0.02
"""Between two writes of one writer: about 50 writes/s each, so the writes go on across
the kill and the restart without piling up thousands of changesets on a slow machine."""
BURST = 60
"""Writes (all writers together) between two steps of a test: before the kill, while
the hub is dead, after it is back."""
SHARED_EVERY = 10
"""Every so many writes, a writer also replaces the object all writers share: concurrent
writes to one object from every level of the tree."""
DEADLINE_S = 90.0
DIE_FILE = "VESPER_TEST_DIE_FILE"
DIE_ORIGIN = "VESPER_TEST_DIE_ORIGIN"
DYING_NODE = f"""
import os, signal, sys
sys.path.insert(0, {str(TIMED_NODE.parent)!r})
import _timed_node
from vesper.store import Store

def apply_then_die(self, parsed):
    result = _timed_node._timed_apply_parsed(self, parsed)
    origin = os.environ["{DIE_ORIGIN}"] + "."
    trigger = os.environ["{DIE_FILE}"]
    if any(i.startswith(origin) for i in result.applied) and os.path.exists(trigger):
        os.unlink(trigger)
        _timed_node.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return result

_timed_node.install(os.environ["{APPLY_LOG}"])
Store.apply_parsed = apply_then_die
sys.exit(_timed_node.main(sys.argv[1:]))
"""
"""``bench/_timed_node.py`` that kills itself with SIGKILL right after its store
applied changesets of ``$VESPER_TEST_DIE_ORIGIN`` once ``$VESPER_TEST_DIE_FILE``
exists: the apply committed, nothing relayed or acknowledged yet. It removes the file
first, so the next life lives on; the apply log is flushed first, so it is complete."""

TWO_HUBS = {
    "leafR": ("R",),
    "h1": ("R", "A"),
    "h2": ("R", "A"),
    "leafA": ("A",),
    "h3": ("A", "A1"),
    "h4": ("A", "A1"),
    "leafA1": ("A1",),
}
ONE_HUB = {b: c for b, c in TWO_HUBS.items() if b != "h4"}


class Tree:
    """``vesper serve`` processes of one tree of channels; the channel names of the
    layout get a prefix unique to the test."""

    def __init__(
        self,
        folder: Path,
        broker: tuple[str, int],
        layout: dict[str, tuple[str, ...]],
        dying: dict[str, str],
    ) -> None:
        self.folder = folder
        self.broker = broker
        prefix = new_channel()
        self.channels = {b: [f"{prefix}-{c}" for c in chans] for b, chans in layout.items()}
        self.nodes: dict[str, NodeProcess] = {}
        self.lives: Counter[str] = Counter()
        self.commits: Counter[str] = Counter()
        self._commits_lock = threading.Lock()
        self.dying = dying
        """Branches that run ``DYING_NODE``, and the origin whose apply kills them."""

    def start(self, *branches: str) -> None:
        """Start ``branches`` side by side; return once each is connected."""
        launched = [self._launch(b) for b in branches]
        for node in launched:
            node.ready()
        for branch in branches:
            wait_for(
                lambda b=branch: self.status(b)["replication"]["connected"],
                what=f"{branch} connected to the broker",
            )

    def _launch(self, branch: str) -> NodeProcess:
        folder = self.folder / branch
        folder.mkdir(exist_ok=True)
        config = folder / "node.conf"
        config.write_text(
            f"branch_id = {branch!r}\nsave_history = True\nwork_dir = 'data'\n"
            f"replication_hosts = [{self.broker!r}]\n"
            f"replication_channels = {self.channels[branch]!r}\n"
        )
        # A new log per life: the URL (a new free port) is read from it.
        log = folder / f"node-{self.lives[branch]}.log"
        self.lives[branch] += 1
        env = {APPLY_LOG: str(self.apply_log(branch))}
        entry = [str(TIMED_NODE)]
        if branch in self.dying:
            entry = ["-c", DYING_NODE]
            env |= {DIE_FILE: str(self.die_file(branch)), DIE_ORIGIN: self.dying[branch]}
        command = [sys.executable, *entry, "serve", str(config), "--port=0"]
        node = NodeProcess(command, folder, log, env)
        self.nodes[branch] = node
        return node.launch()

    def apply_log(self, branch: str) -> Path:
        return self.folder / branch / "applied.log"

    def die_file(self, branch: str) -> Path:
        return self.folder / branch / "die-now"

    def kill(self, branch: str) -> None:
        assert self.nodes[branch].stop(signal.SIGKILL) == -signal.SIGKILL

    def stop_all(self) -> None:
        """SIGTERM to every node at once; each must exit cleanly (and so flush its log)."""
        running = [n for n in self.nodes.values() if n.proc and n.proc.poll() is None]
        for node in running:
            node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for branch, node in self.nodes.items():
            if node in running:
                assert node.wait() == 0, f"{branch} did not stop cleanly:\n{node.log()}"

    def kill_all(self) -> None:
        for node in self.nodes.values():
            node.kill()

    def get(self, branch: str, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.nodes[branch].url}{path}", params=params, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def status(self, branch: str) -> dict[str, Any]:
        return self.get(branch, "/api/status")  # type: ignore[no-any-return]

    def has(self, branch: str, object_id: str) -> bool:
        url = f"{self.nodes[branch].url}/api/objects/{object_id}"
        return httpx.get(url, timeout=30).status_code == 200

    def write(self, client: httpx.Client, branch: str, method: str, path: str, doc: dict) -> None:
        """One write, one commit, so one changeset of ``branch``: counted once answered."""
        client.request(method, path, json=doc).raise_for_status()
        with self._commits_lock:
            self.commits[branch] += 1

    def expected(self) -> set[str]:
        """Every changeset id the writes made: ``<branch>.<counter>``, counters from 1."""
        return {f"{b}.{n}" for b, count in self.commits.items() for n in range(1, count + 1)}

    def wait_converged(self) -> None:
        """Every node has exactly the writes answered, with one digest and nothing
        pending."""
        want = dict(self.commits)

        def states() -> list[tuple[dict[str, int], str, int]]:
            out = []
            for branch in self.nodes:
                s = self.status(branch)
                out.append((parse_revision(s["revision"]), s["digest"], s["pending"]))
            return out

        def done() -> bool:
            seen = states()
            return all(s == (want, seen[0][1], 0) for s in seen)

        wait_for(
            done,
            DEADLINE_S,
            lambda: (
                "convergence on "
                + str(want)
                + ": "
                + "; ".join(
                    f"{b}={s[0]} pending={s[2]}" for b, s in zip(self.nodes, states(), strict=True)
                )
            ),
        )

    def feed_ids(self, branch: str) -> list[str]:
        """The changeset ids of the node's whole changes feed, in its order."""
        ids: list[str] = []
        since = 0
        while True:
            page = self.get(branch, "/api/changes", since=since, limit=10_000)
            ids.extend(entry["id"] for entry in page["results"])
            since = page["last_seq"]
            if not page["more"]:
                return ids

    def applied(self, branch: str) -> Counter[str]:
        """How many times the node's store reported each changeset applied, over all
        the node's lives."""
        lines = self.apply_log(branch).read_text().splitlines()
        return Counter(line.split(" ")[1] for line in lines if not line.startswith("#"))

    def check_each_changeset_once(self, killed: set[str]) -> None:
        everything = self.expected()
        for branch in self.nodes:
            feed = self.feed_ids(branch)
            twice = sorted(i for i, n in Counter(feed).items() if n > 1)
            assert not twice, f"{branch}'s changes feed lists {twice[:5]} more than once"
            assert set(feed) == everything, f"{branch}'s feed: {len(feed)} of {len(everything)}"
        # The nodes must have exited for their logs to be complete.
        self.stop_all()
        for branch in self.nodes:
            applied = self.applied(branch)
            twice = sorted(i for i, n in applied.items() if n > 1)
            assert not twice, f"{branch} applied {twice[:5]} more than once"
            foreign = {i for i in everything if not i.startswith(f"{branch}.")}
            if branch in killed:
                assert set(applied) <= foreign, f"{branch} applied unknown changesets"
            else:
                assert set(applied) == foreign, (
                    f"{branch} applied {len(applied)} of {len(foreign)} other nodes' changesets"
                )


class Writers:
    """A thread per node writing objects of its own, and every ``SHARED_EVERY`` writes
    replacing the shared object, until stopped."""

    def __init__(self, tree: Tree, branches: list[str]) -> None:
        self.tree = tree
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._write, args=(b,), name=f"writer-{b}") for b in branches
        ]

    def _write(self, branch: str) -> None:
        try:
            with httpx.Client(base_url=self.tree.nodes[branch].url, timeout=30) as client:
                i = 0
                while not self.stop.is_set():
                    self.tree.write(client, branch, "POST", "/api/objects", {"id": f"{branch}-{i}"})
                    if i % SHARED_EVERY == 0:
                        self.tree.write(client, branch, "PUT", "/api/objects/shared", {"by": i})
                    i += 1
                    self.stop.wait(WRITE_PAUSE_S)
        except Exception as exc:
            self.errors.append(f"{branch}: {type(exc).__name__}: {exc}")

    def total(self) -> int:
        assert not self.errors, self.errors
        return sum(self.tree.commits.values())

    def more(self, n: int, what: str) -> None:
        """Wait until the writers have made ``n`` more writes."""
        target = self.total() + n
        wait_for(lambda: self.total() >= target, DEADLINE_S, what)

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        assert not self.errors, self.errors


@pytest.fixture
def tree(tmp_path: Path, shared_broker: tuple[str, int]) -> Iterator[Callable[..., Tree]]:
    made: list[Tree] = []

    def make(layout: dict[str, tuple[str, ...]], dying: dict[str, str] | None = None) -> Tree:
        made.append(Tree(tmp_path, shared_broker, layout, dying or {}))
        made[-1].start(*layout)
        return made[-1]

    yield make
    for t in made:
        t.kill_all()


def test_a_second_hub_carries_the_subtree_while_the_first_is_dead(
    tree: Callable[..., Tree],
) -> None:
    t = tree(TWO_HUBS)
    with Writers(t, ["leafR", "h1", "leafA", "leafA1"]) as writers:
        writers.more(BURST, "writes under way")
        t.kill("h3")
        writers.more(BURST, "writes while h3 is dead")
        with httpx.Client(base_url=t.nodes["leafR"].url, timeout=30) as client:
            t.write(client, "leafR", "PUT", "/api/objects/while-h3-dead-R", {})
        with httpx.Client(base_url=t.nodes["leafA1"].url, timeout=30) as client:
            t.write(client, "leafA1", "PUT", "/api/objects/while-h3-dead-A1", {})
        wait_for(lambda: t.has("leafA1", "while-h3-dead-R"), what="R's write on A1 through h4")
        wait_for(lambda: t.has("leafR", "while-h3-dead-A1"), what="A1's write on R through h4")
        t.start("h3")
        writers.more(BURST, "writes after h3 is back")
    t.wait_converged()
    # The hubs relayed every changeset of R to A1 twice (h3's share before it died or
    # once it was back), so leafA1 did drop duplicates.
    received = t.status("leafA1")["replication"]["changesets_received"]
    assert received > len(t.expected()) - t.commits["leafA1"], received
    t.check_each_changeset_once(killed={"h3"})


def test_the_only_hub_killed_between_apply_and_relay_heals_by_catch_up(
    tree: Callable[..., Tree],
) -> None:
    t = tree(ONE_HUB, dying={"h3": "leafA"})
    with Writers(t, ["leafR", "leafA", "leafA1"]) as writers:
        writers.more(BURST, "writes under way")
        t.die_file("h3").touch()
        assert t.nodes["h3"].wait() == -signal.SIGKILL
        # The last apply of h3's log is the batch it died on; its changesets of leafA
        # could reach A1 only through h3, which relayed none of them.
        lines = [ln.split(" ") for ln in t.apply_log("h3").read_text().splitlines()]
        fatal = [
            int(cs_id.rpartition(".")[2])
            for stamp, cs_id, *_ in lines
            if stamp == lines[-1][0] and cs_id.startswith("leafA.")
        ]
        assert fatal, lines[-5:]
        held = parse_revision(t.status("leafA1")["revision"]).get("leafA", 0)
        assert held < min(fatal), (held, fatal)
        writers.more(BURST, "writes while A1 is cut off")
        t.start("h3")
        writers.more(BURST, "writes after h3 is back")
    t.wait_converged()
    # The counter follows the last batch's commit, which the data shows first.
    wait_for(lambda: t.status("leafA1")["replication"]["catchup_changesets_received"] > 0)
    # Two hubs link R and A: leafA dropped duplicates of R's changesets.
    received = t.status("leafA")["replication"]["changesets_received"]
    assert received > len(t.expected()) - t.commits["leafA"], received
    # h3 flushed its apply log before it died: it is complete.
    t.check_each_changeset_once(killed=set())
