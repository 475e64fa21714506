"""Field ownership (``metadata.managedFields``), as kube-apiserver keeps it for server-side apply.

Each write records which manager set which fields: an apply as that manager's ``Apply`` entry (the fields of
the applied configuration, replacing what it applied before), any other write (create, update, patch, a scale)
as its ``Update`` entry (the fields it changed, which every other manager loses). The consequences that matter
to a client, as on a real server:

- An apply that leaves out a field the same manager applied before removes it, unless another manager owns it
  too (so a Deployment's ``spec.replicas`` that only the applier owned falls back to its default, 1).
- An apply that would change a field another manager owns fails with 409 Conflict naming it, unless
  ``force=true``, which takes the field over. Applying the value the field has makes the applier a co-owner.

Simplified: a field set is the set of leaf paths (``f:spec``, ``f:replicas``); lists of objects that all carry
a ``name`` are keyed by it (``k:{"name":"runtime"}``), any other list is one leaf; a non-apply write's manager is
its ``fieldManager`` query parameter, else the product of its User-Agent (``OpenAPI-Generator/...`` ->
``OpenAPI-Generator``). Status is not tracked.
"""

from __future__ import annotations

import json
from typing import Any

from . import errors
from .resources import ResourceType
from .store import now_timestamp

Path = tuple[str, ...]
_MISSING = object()
#: Set by the server, never owned.
_SYSTEM = frozenset({"f:apiVersion", "f:kind", "f:status"})
_SYSTEM_METADATA = frozenset(
    {"f:name", "f:namespace", "f:uid", "f:resourceVersion", "f:generation", "f:creationTimestamp", "f:managedFields"}
)


def manager_of(query: dict[str, str], user_agent: str | None) -> str:
    """The field manager of a non-apply write, named as a real server names it."""
    return query.get("fieldManager") or (user_agent or "unknown").split("/")[0] or "unknown"


def leaves(obj: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Every owned leaf of ``obj``, by path."""
    found: dict[Path, Any] = {}
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            path = (*prefix, f"f:{key}")
            if (not prefix and path[0] in _SYSTEM) or (prefix == ("f:metadata",) and path[1] in _SYSTEM_METADATA):
                continue
            found.update(leaves(value, path))
    elif _named_list(obj):
        for item in obj:
            found.update(leaves(item, (*prefix, _item_key(item["name"]))))
    elif prefix:
        found[prefix] = obj
    return found


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) and "name" in i for i in value)


def _item_key(name: Any) -> str:
    return "k:" + json.dumps({"name": name}, separators=(",", ":"))


def _value_at(obj: Any, path: Path) -> Any:
    node = obj
    for segment in path:
        node = _child(node, segment)
        if node is _MISSING:
            return _MISSING
    return node


def _child(node: Any, segment: str) -> Any:
    if segment.startswith("f:") and isinstance(node, dict):
        return node.get(segment[2:], _MISSING)
    if segment.startswith("k:") and isinstance(node, list):
        name = json.loads(segment[2:])["name"]
        return next((item for item in node if isinstance(item, dict) and item.get("name") == name), _MISSING)
    return _MISSING


def _remove(obj: dict[str, Any], path: Path) -> None:
    """Remove the leaf at ``path``, then each map or list that this leaves empty (the object itself stays)."""
    chain = [obj]  # chain[i]: the node at path[:i]
    for segment in path:
        node = _child(chain[-1], segment)
        if node is _MISSING:
            return
        chain.append(node)
    for depth in range(len(path), 0, -1):
        parent, child, segment = chain[depth - 1], chain[depth], path[depth - 1]
        if isinstance(parent, dict):
            del parent[segment[2:]]
        else:
            parent[:] = [item for item in parent if item is not child]
        if depth == 1 or parent not in ({}, []):
            return


def _fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for segment in path:
            node = node.setdefault(segment, {})
    return tree


def _paths(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    if not fields:
        return {prefix} if prefix else set()
    found: set[Path] = set()
    for segment, sub in fields.items():
        found |= _paths(sub, (*prefix, segment))
    return found


class _Entries:
    """The managedFields of one object, as field sets keyed by (manager, operation, subresource)."""

    def __init__(self, obj: dict[str, Any] | None) -> None:
        self.sets: dict[tuple[str, str, str | None], set[Path]] = {}
        self.meta: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
            key = (entry["manager"], entry["operation"], entry.get("subresource"))
            self.sets[key] = _paths(entry.get("fieldsV1") or {})
            self.meta[key] = entry

    def others(self, key: tuple[str, str, str | None]) -> dict[tuple[str, str, str | None], set[Path]]:
        return {k: s for k, s in self.sets.items() if k != key}

    def owned_by_others(self, key: tuple[str, str, str | None], path: Path) -> list[str]:
        return [k[0] for k, s in self.others(key).items() if path in s]

    def write(self, obj: dict[str, Any], api_version: str) -> None:
        managed = []
        for key, paths in self.sets.items():
            if not paths:
                continue
            old = self.meta.get(key)
            fields = _fields_v1(paths)
            if old is not None and old.get("fieldsV1") == fields:
                managed.append(old)
                continue
            entry: dict[str, Any] = {
                "manager": key[0],
                "operation": key[1],
                "apiVersion": api_version,
                "time": now_timestamp(),
                "fieldsType": "FieldsV1",
                "fieldsV1": fields,
            }
            if key[2]:
                entry["subresource"] = key[2]
            managed.append(entry)
        metadata = obj.setdefault("metadata", {})
        if managed:
            metadata["managedFields"] = managed
        else:
            metadata.pop("managedFields", None)


def record_update(
    rt: ResourceType,
    old: dict[str, Any] | None,
    new: dict[str, Any],
    manager: str,
    subresource: str | None = None,
) -> None:
    """A create, update or patch by ``manager``: it owns what it changed, which the other managers lose.
    Writes ``new``'s managedFields (from ``old``'s; whatever the client sent in them is ignored)."""
    entries = _Entries(old)
    before, after = leaves(old or {}), leaves(new)
    changed = {p for p in before.keys() | after.keys() if before.get(p, _MISSING) != after.get(p, _MISSING)}
    key = (manager, "Update", subresource)
    for other in entries.others(key).values():
        other.difference_update(changed)
    entries.sets[key] = entries.sets.get(key, set()) | {p for p in changed if p in after}
    entries.write(new, rt.api_version)


def apply(
    rt: ResourceType, current: dict[str, Any], merged: dict[str, Any], body: dict[str, Any], manager: str, force: bool
) -> None:
    """An apply of ``body`` by ``manager`` onto ``current``, already merged into ``merged``: raise 409 on a conflict
    (without ``force``), drop what ``manager`` applied before and no one owns now, record the field sets."""
    entries = _Entries(current)
    key = (manager, "Apply", None)
    applied = leaves(body)
    conflicts = [
        (owner, path)
        for path, value in applied.items()
        if _value_at(current, path) not in (_MISSING, value)
        for owner in entries.owned_by_others(key, path)
    ]
    if conflicts and not force:
        described = "\n".join(f'- conflict with "{owner}": .{_dotted(path)}' for owner, path in conflicts)
        message = f"Apply failed with {len(conflicts)} conflict(s):\n{described}"
        raise errors.ApiError(409, message, "Conflict")
    for _, path in conflicts:
        for other in entries.others(key).values():
            other.discard(path)
    for path in sorted(entries.sets.get(key, set()) - applied.keys(), reverse=True):
        if not any(path in other for other in entries.others(key).values()):
            _remove(merged, path)
    entries.sets[key] = set(applied)
    entries.write(merged, rt.api_version)


def _dotted(path: Path) -> str:
    return ".".join(segment[2:] if segment.startswith("f:") else f"[{segment[2:]}]" for segment in path)
