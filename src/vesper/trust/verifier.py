"""Authenticity of what arrives: every changeset and control message passes here before
anything acts on it, whichever path it came by (topic, hub relay, catch-up, bootstrap).

A changeset is authentic when its origin's trusted key signed it, or when it is chained
(``prev``) to a later authentic changeset of the same origin, that is: the signature
covers the hash of its predecessor, which covers its own predecessor, and so on. So a
message of many changesets of one origin costs one signature check (about 100-140 us)
instead of one per changeset.

The receiver hands over a whole receive batch (``batch``): the chains are followed
across all its messages, so a backlog of thousands of small messages costs a check
every ``CHECKPOINT`` changesets of an origin rather than one per message. A run the
batch does not cover that way (a forgery, an unsigned tail) is checked exactly as in
its message alone, against that message's own budget, so nothing a message would be
accepted for alone is lost by travelling in a batch with forged ones.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vesper.history.changeset import Changeset
from vesper.history.revision import is_valid_branch_id
from vesper.trust.keyring import Keyring
from vesper.trust.keys import parse_public_key, verify
from vesper.trust.signing import SIGNATURE_FIELDS, signing_bytes

UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
MAX_KEY_CACHE = 10_000
MAX_FAILED_CHECKS = 3
"""Signature checks that may fail in one message before the rest of it is refused
unchecked: a forged message must not cost one verification (~100 us) per changeset."""
MAX_CHECKS = 600
"""Signature checks one message may cost at most (one per chain run: a catch-up batch
holds at most 500 changesets); the rest of a message with more runs is refused."""
CHECKPOINT = 64
"""A batch keeps a verified signature at least every this many changesets of an origin
where the messages carry one: the store serves catch-up from what it kept, and an
answer batch ends on a signed changeset of each origin (growing at most four times to
reach one), so signatures must not grow sparser than an origin's own messages (at most
100 changesets each) made them."""

_Node = tuple[str, int, str | None]
"""(origin, counter, content hash): one changeset, whichever message carries it."""


@dataclass(frozen=True, slots=True)
class Refusal:
    changeset: Changeset
    reason: str
    """A short code: unsigned, bad_signature, untrusted_key, key_mismatch, ..."""
    detail: str


class Verifier:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._keys: dict[str, Ed25519PublicKey] = {}

    def batch(self, messages: list[list[Changeset]]) -> list[tuple[list[Changeset], list[Refusal]]]:
        """``changesets`` for each of many messages, checked together: a run is also
        accepted, without a check of its own, when a covered run of another message of
        the batch names its last changeset as ``prev``.

        The runs of origins with a trusted key are taken newest first, so the newest
        signature of a chain covers it through every message it spans (those of an
        origin not pinned yet are checked in arrival order, as alone). A covered run's
        own signature is checked as well when the signature kept above would otherwise
        lie more than ``CHECKPOINT`` changesets from the next one. A run that is not
        covered that way is checked exactly as in its message alone, against its
        message's budget: a forged message spends its own budget, never that of the
        genuine ones beside it, and a message without forgeries keeps at least what it
        would be accepted for alone.
        """
        goods: list[dict[int, Changeset]] = [{} for _ in messages]
        refusals: list[list[Refusal]] = [[] for _ in messages]
        budgets = [[MAX_CHECKS, MAX_FAILED_CHECKS] for _ in messages]
        runs = [(m, run) for m, given in enumerate(messages) for run in _runs(given)]
        # Taken in arrival order, one message after another as alone: the runs of an
        # origin with no key yet (under trust on first use the first valid key is
        # pinned, and a forgery arriving later in the batch must not win the pin by
        # its higher counter), and those of a message with more runs than checks (the
        # order decides which are checked).
        known: dict[str, bool] = {}
        crowded = {m for m, n in Counter(m for m, _ in runs).items() if n > MAX_CHECKS}
        in_order, newest_first = [], []
        for m, run in runs:
            origin = run[0].origin
            if origin not in known:
                known[origin] = self.keyring.known(origin)
            (newest_first if known[origin] and m not in crowded else in_order).append((m, run))
        for m, run in in_order:
            covered = self._cover(run, refusals[m], budgets[m])
            if covered:
                _accept(run, covered, True, goods[m])
        newest_first.sort(key=lambda item: item[1][-1].counter, reverse=True)
        chained: set[_Node] = set()
        """The predecessors of covered runs: covered too, by the same signature."""
        kept_at: dict[str, int] = {}
        """Each origin's lowest counter whose signature is kept so far."""
        for m, run in newest_first:
            first, last = run[0], run[-1]
            if (last.origin, last.counter, last.hash) in chained:
                covered = len(run)
                verified = (
                    last.signed
                    and kept_at.get(last.origin, last.counter) - (first.counter - 1) > CHECKPOINT
                    and self._check_budgeted(last, budgets[m])
                )
            else:
                covered = self._cover(run, refusals[m], budgets[m])
                verified = covered > 0
            if not covered:
                continue
            _accept(run, covered, verified, goods[m])
            chained.add((first.origin, first.counter - 1, first.prev))
            if verified:
                at = run[covered - 1].counter
                kept_at[last.origin] = min(kept_at.get(last.origin, at), at)
        return [
            ([good[id(cs)] for cs in given if id(cs) in good], refused)
            for given, good, refused in zip(messages, goods, refusals, strict=True)
        ]

    def _check_budgeted(self, cs: Changeset, budget: list[int]) -> bool:
        """Whether the signature of a changeset already covered verifies (only whether
        it is kept depends on it), spending ``budget`` as ``_cover`` does."""
        if budget[0] <= 0 or budget[1] <= 0:
            return False
        budget[0] -= 1
        if self._check(cs) is None:
            return True
        budget[1] -= 1
        return False

    def changesets(self, given: list[Changeset]) -> tuple[list[Changeset], list[Refusal]]:
        """Split one message's changesets into the authentic ones (in the given order)
        and the refused ones."""
        good: dict[int, Changeset] = {}
        refused: list[Refusal] = []
        budget = [MAX_CHECKS, MAX_FAILED_CHECKS]  # checks left, failures left
        for run in _runs(given):
            covered = self._cover(run, refused, budget)
            if covered:
                _accept(run, covered, True, good)
        return [good[id(cs)] for cs in given if id(cs) in good], refused

    def _cover(
        self,
        run: list[Changeset],
        refused: list[Refusal],
        budget: list[int],
    ) -> int:
        """How many of the run, from its start, a valid signature covers: the last
        signed changeset that verifies covers itself and all before it. Those after it
        are refused. Normally the run's last changeset is signed: one check."""
        end, last_reason = 0, BAD_SIGNATURE
        tried: set[int] = set()
        for i in range(len(run) - 1, -1, -1):
            if not run[i].signed:
                continue
            if budget[0] <= 0 or budget[1] <= 0:
                break
            budget[0] -= 1
            problem = self._check(run[i])
            if problem is None:
                end = i + 1
                break
            budget[1] -= 1
            tried.add(i)
            last_reason = problem[0]
            refused.append(Refusal(run[i], *problem))
        for i in range(end, len(run)):
            if i in tried:
                continue
            cs = run[i]
            reason = (
                (UNSIGNED, f"changeset {cs.id} carries no signature")
                if not cs.signed
                else (
                    last_reason,
                    f"changeset {cs.id}: not checked (later ones of its chain failed, or "
                    "its message used up its signature checks)",
                )
            )
            refused.append(Refusal(cs, *reason))
        return end

    def _check(self, cs: Changeset) -> tuple[str, str] | None:
        body = cs.body
        if "sig" not in body or "key" not in body:
            return UNSIGNED, f"changeset {cs.id} carries no signature"
        # A key already known to be wrong for the origin is refused before the
        # (costly) signature check.
        reason = self.keyring.refuses(cs.origin, body["key"])
        if reason is not None:
            return reason, f"changeset {cs.id} is signed by {body['key']}, {_explain(reason)}"
        problem = self._signature(body, body["key"], body["sig"])
        if problem is not None:
            return problem[0], f"changeset {cs.id}: {problem[1]}"
        reason = self.keyring.check(cs.origin, body["key"])
        if reason is not None:
            return reason, f"changeset {cs.id} is signed by {body['key']}, {_explain(reason)}"
        return None

    def control(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        """None if an announcement or request is signed by a trusted key of the branch
        it names, else (reason, detail)."""
        branch = body.get("branch")
        if not isinstance(branch, str) or not is_valid_branch_id(branch):
            return "malformed", f"branch {str(branch)[:80]!r} is not a valid branch id"
        key, sig = body.get("key"), body.get("sig")
        if not isinstance(key, str) or not isinstance(sig, str):
            return UNSIGNED, f"message from {branch} carries no signature"
        reason = self.keyring.refuses(branch, key)
        if reason is not None:
            return reason, f"message from {branch} is signed by {key}, {_explain(reason)}"
        problem = self._signature(body, key, sig)
        if problem is not None:
            return problem[0], f"message from {branch}: {problem[1]}"
        # Control traffic pins nothing: only a branch that writes changesets gets a key
        # pinned, so invented peers announcing themselves cost no row in the store.
        reason = self.keyring.check(branch, key, pin=False)
        if reason is not None:
            return reason, f"message from {branch} is signed by {key}, {_explain(reason)}"
        return None

    def _signature(self, body: Mapping[str, Any], key: str, sig: str) -> tuple[str, str] | None:
        public = self._keys.get(key)
        if public is None:
            try:
                public = parse_public_key(key)
            except ValueError as exc:
                return BAD_SIGNATURE, str(exc)
            if len(self._keys) >= MAX_KEY_CACHE:
                self._keys.clear()
            self._keys[key] = public
        try:
            data = signing_bytes(body)
        except (TypeError, ValueError) as exc:
            return "malformed", f"cannot be encoded canonically ({exc})"
        if not verify(public, sig, data):
            return BAD_SIGNATURE, f"the signature does not verify under {key}"
        return None


def _runs(given: list[Changeset]) -> list[list[Changeset]]:
    """Each origin's changesets of one message in runs of consecutive counters, each
    one's ``prev`` naming the one before it."""
    by_origin: dict[str, list[Changeset]] = {}
    for cs in given:
        by_origin.setdefault(cs.origin, []).append(cs)
    runs: list[list[Changeset]] = []
    for group in by_origin.values():
        group.sort(key=lambda cs: cs.counter)
        run = [group[0]]
        for cs in group[1:]:
            last = run[-1]
            if last.counter + 1 == cs.counter and cs.prev == last.hash:
                run.append(cs)
            else:
                runs.append(run)
                run = [cs]
        runs.append(run)
    return runs


def _accept(run: list[Changeset], covered: int, verified: bool, good: dict[int, Changeset]) -> None:
    """Record the first ``covered`` of a run as authentic. Their own signature fields
    were not checked, except the last one's if ``verified``: the others are dropped
    rather than stored and served (a forger could have put junk there)."""
    for cs in run[: covered - 1]:
        good[id(cs)] = _unsigned(cs) if cs.signed else cs
    cs = run[covered - 1]
    good[id(cs)] = cs if verified or not cs.signed else _unsigned(cs)


def _unsigned(cs: Changeset) -> Changeset:
    body = {k: v for k, v in cs.body.items() if k not in SIGNATURE_FIELDS}
    return dataclasses.replace(cs, body=body)


def _explain(reason: str) -> str:
    return {
        "untrusted_key": "which replication_trusted_keys does not list for that branch",
        "key_mismatch": "but another key is pinned for that branch",
        "too_many_branches": "a new branch past the limit of branches pinned on first use",
    }.get(reason, reason)
