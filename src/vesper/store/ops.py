"""Local operations: validation, and folding a transaction into one change per object."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vesper.document.patch import merge_patch
from vesper.document.values import check_document, check_id, check_value
from vesper.errors import DocumentExists, DocumentNotFound, InvalidDocument, InvalidOperation
from vesper.merge.register import ObjectState

_HEX = frozenset("0123456789abcdef")
OP_NAMES = ("create", "replace", "update", "delete")


@dataclass(frozen=True, slots=True)
class Op:
    """One validated operation of a transaction."""

    kind: str
    """create, replace, update or delete."""
    id: str
    """The object's id (generated for a create without one)."""
    props: dict[str, Any] | None = None
    """create/replace: the new properties (without id); update: the merge patch."""
    if_version: str | None = None
    """Commit only if the object exists at this version (``ObjectState.version``)."""
    if_absent: bool = False
    """Commit only if the object does not exist."""


def new_id() -> str:
    """A 32-hex-digit id in the UUIDv7 layout: 48 bits of Unix milliseconds, then
    random bits. Ids made later sort later, so bulk inserts append to the B-trees
    instead of touching random pages (and listings come out in creation order)."""
    ms = time.time_ns() // 1_000_000
    value = (ms & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | (0x7 << 76)  # version 7
    value = value & ~(0x3 << 62) | (0x2 << 62)  # RFC 4122 variant
    return f"{value:032x}"


def parse_op(raw: object, where: str = "op") -> Op:
    """Validate one transaction operation as the HTTP API and Python API take it."""
    if not isinstance(raw, Mapping):
        raise InvalidOperation(f"{where} must be an object, got {type(raw).__name__}")
    kind = raw.get("op")
    if kind not in OP_NAMES:
        raise InvalidOperation(
            f"{where}: unknown op {kind!r} (expected one of {', '.join(OP_NAMES)})"
        )
    allowed = {
        "create": {"op", "object"},
        "replace": {"op", "object", "if_version"},
        "update": {"op", "id", "patch", "if_version"},
        "delete": {"op", "id", "if_version"},
    }[kind]
    extra = set(raw) - allowed
    if extra:
        raise InvalidOperation(f"{where}: unexpected field {sorted(extra)[0]!r} in a {kind} op")
    if kind in ("create", "replace"):
        if "object" not in raw:
            raise InvalidOperation(f"{where}: a {kind} op needs 'object'")
        op = object_op(kind, raw["object"], where=f"{where}.object")
    else:
        if "id" not in raw:
            raise InvalidOperation(f"{where}: a {kind} op needs 'id'")
        obj_id = check_id(raw["id"], f"{where}.id")
        if kind == "delete":
            op = Op("delete", obj_id)
        elif "patch" not in raw:
            raise InvalidOperation(f"{where}: an update op needs 'patch'")
        else:
            op = update_op(obj_id, raw["patch"], where=f"{where}.patch")
    if "if_version" not in raw:
        return op
    version = raw["if_version"]
    if version is None and kind == "replace":
        return dataclasses.replace(op, if_absent=True)  # create only
    return dataclasses.replace(op, if_version=check_version(version, f"{where}.if_version"))


def check_version(value: object, where: str = "version") -> str:
    """An object version as reads give it (32 hex digits)."""
    if type(value) is not str or len(value) != 32 or not _HEX.issuperset(value):
        raise InvalidOperation(
            f"{where} must be an object version as reads give it (32 hex digits;"
            " null, for a replace only, means the object must not exist)"
        )
    return value


def object_op(kind: str, doc: object, obj_id: str | None = None, where: str = "object") -> Op:
    doc = check_document(doc, where)
    if obj_id is not None:
        check_id(obj_id)
        if "id" in doc and doc["id"] != obj_id:
            raise InvalidDocument(f"{where}: id {doc['id']!r} does not match {obj_id!r}")
    elif "id" in doc:
        obj_id = doc["id"]
    elif kind == "create":
        obj_id = new_id()
    else:
        raise InvalidDocument(f"{where}: a replaced object needs an 'id'")
    props = {k: v for k, v in doc.items() if k != "id"}
    return Op(kind, obj_id, props)  # type: ignore[arg-type]


def update_op(obj_id: str, patch: object, where: str = "patch") -> Op:
    check_id(obj_id)
    if type(patch) is not dict:
        raise InvalidDocument(
            f"{where} must be a JSON object (a JSON Merge Patch of the object's properties)"
        )
    for key, value in patch.items():
        if type(key) is not str:
            raise InvalidDocument(f"{where}: property name {key!r} is not a string")
        if key == "id":
            if value != obj_id:
                raise InvalidDocument(f"{where}: an object's id cannot be changed")
            continue
        check_value(value, f"{where}.{key}", 1)
    patch = {k: v for k, v in patch.items() if k != "id"}
    return Op("update", obj_id, patch)


class _Net:
    """What a transaction did to one object so far."""

    __slots__ = ("existed", "live", "removed", "replaced", "visible", "written")

    def __init__(
        self,
        existed: bool,
        live: bool,
        visible: dict[str, Any],
        replaced: bool = False,
        written: dict[str, Any] | None = None,
    ) -> None:
        self.existed = existed
        self.live = live
        self.visible = visible
        self.replaced = replaced
        self.written: dict[str, Any] = {} if written is None else written
        self.removed: set[str] = set()

    def write(self, name: str, value: Any) -> None:
        self.written[name] = value
        self.removed.discard(name)
        self.visible[name] = value

    def remove(self, name: str) -> None:
        self.written.pop(name, None)
        self.removed.add(name)
        self.visible.pop(name, None)


def fold(ops: Sequence[Op], load: Callable[[str], ObjectState | None]) -> list[dict[str, Any]]:
    """Turn a transaction into changeset changes, checking each op against the state
    the earlier ops of the same transaction left. ``load`` gives an object's stored
    state (live or deleted) or None."""
    nets: dict[str, _Net] = {}
    for op in ops:
        net = nets.get(op.id)
        if net is None:
            state = load(op.id)
            if state is None and op.kind != "update" and op.kind != "delete":
                # A new object (the bulk-insert case): its props are the whole change.
                assert op.props is not None
                nets[op.id] = _Net(False, True, dict(op.props), True, op.props)
                continue
            live = state is not None and state.live
            # A deleted object still holds its last properties: a create on its id
            # removes them explicitly so that none comes back.
            visible = state.properties() if state is not None else {}
            net = nets[op.id] = _Net(existed=live, live=live, visible=visible)
        if op.kind in ("create", "replace"):
            if op.kind == "create" and net.live:
                raise DocumentExists(f"object {op.id!r} already exists")
            assert op.props is not None
            for name in [n for n in net.visible if n not in op.props]:
                net.remove(name)
            for name, value in op.props.items():
                net.write(name, value)
            net.live = True
            net.replaced = True
        elif op.kind == "update":
            if not net.live:
                raise DocumentNotFound(f"object {op.id!r} does not exist")
            assert op.props is not None
            for name, value in op.props.items():
                if value is None:
                    if name in net.visible:
                        net.remove(name)
                else:
                    net.write(name, merge_patch(net.visible.get(name), value))
        else:
            if not net.live:
                raise DocumentNotFound(f"object {op.id!r} does not exist")
            net.live = False
    return [_change(obj_id, net) for obj_id, net in nets.items()]


def _change(obj_id: str, net: _Net) -> dict[str, Any]:
    if not net.live:
        kind = "delete"
    elif not net.existed:
        kind = "create"
    else:
        kind = "replace" if net.replaced else "update"
    change: dict[str, Any] = {"id": obj_id, "op": kind, "exists": net.live}
    if net.written:
        change["set"] = net.written
    if net.removed:
        change["unset"] = sorted(net.removed)
    return change
