"""Server-side apply (``PATCH`` with ``application/apply-patch+yaml``), emulated as create-or-merge.

- The object does not exist: it is created from the applied configuration (as a POST would).
- It exists: the applied configuration is merged into it the way a strategic merge patch is (maps merge,
  lists of objects with a ``name`` merge by name, other lists are replaced).
- ``fieldManager`` is required (400 without it, as on a real server); field ownership is kept as a real server
  keeps it (``ownership.py``): fields the manager applied before and leaves out now are removed unless another
  manager owns them, and changing a field another manager owns is a 409 Conflict unless ``force=true``.
"""

from __future__ import annotations

from typing import Any

import yaml

from . import errors, ownership
from .patches import merge_patch
from .resources import ResourceType
from .store import Store


def parse_body(raw: bytes) -> dict[str, Any]:
    """An applied configuration: YAML (of which JSON is a subset), one object."""
    try:
        body = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise errors.bad_request(f"the applied configuration is not YAML: {exc}") from exc
    if not isinstance(body, dict):
        raise errors.bad_request("the applied configuration must be an object")
    return body


def _check_identity(rt: ResourceType, name: str, body: dict[str, Any]) -> None:
    if body.get("apiVersion") != rt.api_version or body.get("kind") != rt.kind:
        applied = f"{body.get('apiVersion')} {body.get('kind')}"
        raise errors.bad_request(f"the applied configuration is {applied}, not {rt.api_version} {rt.kind}")
    if (body.get("metadata") or {}).get("name") != name:
        raise errors.bad_request("the name of the applied configuration does not match the URL")


def server_side_apply(
    store: Store,
    rt: ResourceType,
    namespace: str,
    name: str,
    body: dict[str, Any],
    query: dict[str, str],
    status: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Apply ``body`` as ``query["fieldManager"]``; returns the object and whether it was created."""
    manager = query.get("fieldManager", "")
    if not manager:
        raise errors.bad_request("PATCH with apply-patch+yaml requires the fieldManager query parameter")
    if query.get("force", "false").lower() not in ("true", "false"):
        raise errors.bad_request(f"invalid force: {query['force']!r}")
    force = query.get("force", "false").lower() == "true"
    _check_identity(rt, name, body)
    current = store.find(rt, namespace, name)
    if current is None:
        if status:
            raise errors.not_found(rt, name)
        created = merge_patch({}, body, strategic=True)
        ownership.apply(rt, {}, created, body, manager, force)
        return store.create(rt, namespace, created), True
    merged = merge_patch(current, body, strategic=True)
    if not status:  # the ownership of status fields is not tracked
        ownership.apply(rt, current, merged, body, manager, force)
    return store.replace(rt, namespace, name, merged, status=status), False
