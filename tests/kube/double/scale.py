"""The ``deployments/{name}/scale`` subresource: an ``autoscaling/v1`` Scale view of a Deployment.

Writes change only the Deployment's ``spec.replicas``; a stale ``metadata.resourceVersion`` in the Scale body
(the Deployment's resourceVersion) is a 409 Conflict, as on a real server.
"""

from __future__ import annotations

from typing import Any

from . import errors, ownership
from .patches import apply_patch
from .resources import DEPLOYMENTS
from .selection import selector_string
from .store import Store


def scale_of(deployment: dict[str, Any]) -> dict[str, Any]:
    metadata = deployment["metadata"]
    replicas = (deployment.get("spec") or {}).get("replicas", 0)
    status = deployment.get("status") or {}
    scale: dict[str, Any] = {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            field: metadata[field]
            for field in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if field in metadata
        },
        # autoscaling/v1 ScaleSpec.replicas is omitempty: a Scale of 0 replicas has an empty spec.
        "spec": {"replicas": replicas} if replicas else {},
        "status": {"replicas": status.get("replicas", 0)},
    }
    selector = selector_string((deployment.get("spec") or {}).get("selector"))
    if selector:
        scale["status"]["selector"] = selector
    return scale


def read_scale(store: Store, namespace: str, name: str) -> dict[str, Any]:
    return scale_of(store.get(DEPLOYMENTS, namespace, name))


def replace_scale(
    store: Store, namespace: str, name: str, body: dict[str, Any], manager: str = "unknown"
) -> dict[str, Any]:
    deployment = store.get(DEPLOYMENTS, namespace, name)
    old = store.get(DEPLOYMENTS, namespace, name)
    metadata = body.get("metadata") or {}
    if metadata.get("name") not in (None, name):
        raise errors.bad_request(f"the name of the object ({metadata.get('name')}) does not match the URL")
    replicas = (body.get("spec") or {}).get("replicas", 0)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise errors.invalid(DEPLOYMENTS, name, [f"spec.replicas: Invalid value: {replicas!r}"])
    deployment["spec"]["replicas"] = replicas
    deployment["metadata"]["resourceVersion"] = metadata.get("resourceVersion") or ""
    ownership.record_update(DEPLOYMENTS, old, deployment, manager, "scale")
    return scale_of(store.replace(DEPLOYMENTS, namespace, name, deployment))


def patch_scale(
    store: Store, namespace: str, name: str, content_type: str, patch: Any, manager: str = "unknown"
) -> dict[str, Any]:
    patched = apply_patch(read_scale(store, namespace, name), content_type, patch)
    return replace_scale(store, namespace, name, patched, manager)
