"""Authenticity of what arrives: every changeset and control message passes here before
anything acts on it, whichever path it came by (topic, hub relay, catch-up, bootstrap).

A changeset is authentic when its origin's trusted key signed it, or when it is chained
(``prev``) to a later changeset of the same origin, in the same message, that is: the
signature covers the hash of its predecessor, which covers its own predecessor, and so
on. So a message of many changesets of one origin costs one signature check (about
100 us) instead of one per changeset, while each changeset still carries its own
signature and stays verifiable alone when relayed or served in catch-up.
"""

from __future__ import annotations

import dataclasses
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

    def changesets(self, given: list[Changeset]) -> tuple[list[Changeset], list[Refusal]]:
        """Split one message's changesets into the authentic ones (in the given order)
        and the refused ones."""
        by_origin: dict[str, list[Changeset]] = {}
        for cs in given:
            by_origin.setdefault(cs.origin, []).append(cs)
        good: dict[int, Changeset] = {}
        refused: list[Refusal] = []
        budget = [MAX_CHECKS, MAX_FAILED_CHECKS]  # checks left, failures left
        for group in by_origin.values():
            group.sort(key=lambda cs: cs.counter)
            runs: list[list[Changeset]] = []
            for cs in group:
                last = runs[-1][-1] if runs else None
                if last is not None and last.counter + 1 == cs.counter and cs.prev == last.hash:
                    runs[-1].append(cs)
                else:
                    runs.append([cs])
            for run in runs:
                covered = self._cover(run, refused, budget)
                # The covered ones' own signature fields were not checked: they are
                # dropped rather than stored and served (a forger could have put junk
                # there). Only the covering signature, which was checked, is kept.
                if covered:
                    for cs in run[: covered - 1]:
                        good[id(cs)] = _unsigned(cs) if cs.signed else cs
                    good[id(run[covered - 1])] = run[covered - 1]
        return [good[id(cs)] for cs in given if id(cs) in good], refused

    def _cover(self, run: list[Changeset], refused: list[Refusal], budget: list[int]) -> int:
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


def _unsigned(cs: Changeset) -> Changeset:
    body = {k: v for k, v in cs.body.items() if k not in SIGNATURE_FIELDS}
    return dataclasses.replace(cs, body=body)


def _explain(reason: str) -> str:
    return {
        "untrusted_key": "which replication_trusted_keys does not list for that branch",
        "key_mismatch": "but another key is pinned for that branch",
        "too_many_branches": "a new branch past the limit of branches pinned on first use",
    }.get(reason, reason)
