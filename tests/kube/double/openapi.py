"""``/openapi/v3``: the OpenAPI v3 index and one document per group version, enough for client-side schema
validation (Helm, kubectl) to find every kind the double serves.

The schemas are deliberately open: each kind is an object with ``apiVersion``, ``kind`` and ``metadata`` and
``x-kubernetes-preserve-unknown-fields``, so a validating client accepts any field (the double does not know
the real schemas) but still learns which group/version/kinds exist.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from . import resources
from .resources import ResourceType

_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_PATCH_QUERY = ("dryRun", "fieldManager", "fieldValidation", "force")
_PATCH_MEDIA_TYPES = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)


def _path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _group_versions() -> list[tuple[str, str]]:
    return list(dict.fromkeys((rt.group, rt.version) for rt in resources.RESOURCES))


def _schema_name(rt: ResourceType) -> str:
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "core"
    return f"io.k8s.api.{group}.{rt.version}.{rt.kind}"


def _kind_schema(rt: ResourceType) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"{rt.kind} (an open schema: the Kubernetes API double does not validate fields)",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"allOf": [{"$ref": f"#/components/schemas/{_OBJECT_META}"}], "default": {}},
        },
        "x-kubernetes-preserve-unknown-fields": True,
        "x-kubernetes-group-version-kind": [{"group": rt.group, "version": rt.version, "kind": rt.kind}],
    }


def _object_path(rt: ResourceType) -> str:
    namespace = "namespaces/{namespace}/" if rt.namespaced else ""
    return f"/{_path(rt.group, rt.version)}/{namespace}{rt.plural}/{{name}}"


def _patch_operation(rt: ResourceType) -> dict[str, Any]:
    """PATCH with the query parameters a client probes for (kubectl and Helm ask whether ``fieldValidation``
    is supported for the kind; with it, they leave validation to the server and skip ``/openapi/v2``)."""
    query = [{"name": name, "in": "query", "schema": {"type": "string"}} for name in _PATCH_QUERY]
    return {
        "operationId": f"patch{rt.kind}",
        "parameters": query,
        "requestBody": {"content": {media: {"schema": {"type": "object"}} for media in _PATCH_MEDIA_TYPES}},
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    }


def document(path: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document for ``api/v1`` or ``apis/<group>/<version>``; None for an unknown path."""
    members = [rt for rt in resources.RESOURCES if _path(rt.group, rt.version) == path.strip("/")]
    if not members:
        return None
    schemas: dict[str, Any] = {
        _OBJECT_META: {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    }
    schemas |= {_schema_name(rt): _kind_schema(rt) for rt in members}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes API double", "version": resources.SERVER_VERSION["gitVersion"]},
        "paths": {_object_path(rt): {"patch": _patch_operation(rt)} for rt in members},
        "components": {"schemas": schemas},
    }


def _hash(path: str) -> str:
    return hashlib.sha512(json.dumps(document(path), sort_keys=True).encode()).hexdigest()[:32].upper()


def index() -> dict[str, Any]:
    """The ``/openapi/v3`` discovery index: one entry per group version, each with its document's URL."""
    paths = {}
    for group, version in _group_versions():
        path = _path(group, version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={_hash(path)}"}
    return {"paths": paths}
