"""The three patch formats kube-apiserver accepts on PATCH besides server-side apply (``apply.py``).

- ``application/merge-patch+json``: RFC 7386; lists are replaced, ``null`` deletes a key.
- ``application/strategic-merge-patch+json``: a merge patch, except lists of objects that all carry a
  ``name`` (containers, env, volumes, ports...) are merged by name, as the real strategic merge does for its
  most common merge keys. Other patch directives (``$patch``, ``$retainKeys``, ``$setElementOrder``) are
  not supported.
- ``application/json-patch+json``: RFC 6902 (add, remove, replace, move, copy, test).
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any, strategic: bool = False) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif strategic and _merges_by_name(result.get(key), value):
            result[key] = _merge_named_lists(result[key], value)
        else:
            result[key] = merge_patch(result.get(key), value, strategic)
    return result


def _merges_by_name(current: Any, patch: Any) -> bool:
    def named(items: Any) -> bool:
        return isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)

    return named(current) and named(patch) and bool(patch)


def _merge_named_lists(current: list[dict[str, Any]], patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = [copy.deepcopy(item) for item in current]
    index = {item["name"]: position for position, item in enumerate(merged)}
    for item in patch:
        if item["name"] in index:
            merged[index[item["name"]]] = merge_patch(merged[index[item["name"]]], item, strategic=True)
        else:
            merged.append(copy.deepcopy(item))
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        node = _child(node, part)
    return node


def _child(node: Any, part: str) -> Any:
    try:
        return node[int(part)] if isinstance(node, list) else node[part]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise bad_request(f"JSON patch path component {part!r} not found") from exc


def _get(doc: Any, path: str) -> Any:
    node = doc
    for part in _pointer(path):
        node = _child(node, part)
    return node


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent = _parent(doc, parts)
    key = parts[-1]
    if isinstance(parent, list):
        position = len(parent) if key == "-" else int(key)
        if not 0 <= position <= len(parent):
            raise bad_request(f"JSON patch index out of range: {path!r}")
        parent.insert(position, copy.deepcopy(value))
    elif isinstance(parent, dict):
        parent[key] = copy.deepcopy(value)
    else:
        raise bad_request(f"JSON patch cannot add to {path!r}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent = _parent(doc, parts)
    _child(parent, parts[-1])
    if isinstance(parent, list):
        del parent[int(parts[-1])]
    else:
        del parent[parts[-1]]
    return doc


def _apply_operation(doc: Any, operation: dict[str, Any]) -> Any:
    op, path = operation.get("op"), operation.get("path", "")
    if op == "add":
        return _add(doc, path, operation.get("value"))
    if op == "remove":
        return _remove(doc, path)
    if op == "replace":
        _get(doc, path)
        return _add(_remove(doc, path), path, operation.get("value")) if path else operation.get("value")
    if op in ("move", "copy"):
        value = copy.deepcopy(_get(doc, operation["from"]))
        if op == "move":
            doc = _remove(doc, operation["from"])
        return _add(doc, path, value)
    if op == "test":
        if _get(doc, path) != operation.get("value"):
            raise ApiError(422, f"JSON patch test operation failed at {path!r}", "Invalid")
        return doc
    raise bad_request(f"unknown JSON patch operation: {op!r}")


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        doc = _apply_operation(doc, operation)
    return doc


def apply_patch(target: dict[str, Any], content_type: str, patch: Any) -> dict[str, Any]:
    """Apply a patch of the given media type; raises ``ApiError`` 415 for media types the double lacks."""
    media_type = content_type.split(";", maxsplit=1)[0].strip().lower()
    if media_type == JSON_PATCH:
        result = json_patch(target, patch)
    elif media_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        if not isinstance(patch, dict):
            raise bad_request("a merge patch must be a JSON object")
        result = merge_patch(target, patch, strategic=media_type == STRATEGIC_MERGE_PATCH)
    elif media_type == APPLY_PATCH:
        raise ApiError(415, "server-side apply is not a patch of an existing object: see apply.server_side_apply")
    else:
        raise ApiError(415, f"the media type {media_type!r} is not supported for PATCH")
    if not isinstance(result, dict):
        raise bad_request("the patched object is not a JSON object")
    return result
