"""The resource types the double serves, and the discovery documents that describe them.

Adding a namespaced resource with generic storage is one ``ResourceType`` line in ``RESOURCES``; the store,
the HTTP routes and discovery pick it up from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-kaltstart-double",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class ResourceType:
    """One REST resource: where it lives (group/version/plural) and what it is called (kind)."""

    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    # Field paths a fieldSelector may use besides metadata.name and metadata.namespace.
    field_paths: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_name(self) -> str:
        """How error messages name the resource: ``deployments.apps``, or ``pods`` in the core group."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)
_EVENTS_V1_FIELDS = (
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "reason",
    "reportingController",
    "type",
)

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        subresources=("status", "log"),
        short_names=("po",),
        field_paths=("spec.nodeName", "spec.restartPolicy", "status.phase", "status.podIP"),
    ),
    ResourceType("", "v1", "services", "service", "Service", subresources=("status",), short_names=("svc",)),
    ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", short_names=("cm",)),
    ResourceType("", "v1", "secrets", "secret", "Secret", field_paths=("type",)),
    ResourceType("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", short_names=("sa",)),
    ResourceType("", "v1", "events", "event", "Event", short_names=("ev",), field_paths=_EVENT_FIELDS),
    ResourceType(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        subresources=("status", "scale"),
        short_names=("deploy",),
    ),
    ResourceType(
        "apps", "v1", "statefulsets", "statefulset", "StatefulSet", subresources=("status",), short_names=("sts",)
    ),
    ResourceType("apps", "v1", "daemonsets", "daemonset", "DaemonSet", subresources=("status",), short_names=("ds",)),
    ResourceType(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        field_paths=("addressType",),
    ),
    ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease"),
    ResourceType(
        "autoscaling",
        "v1",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        subresources=("status",),
        short_names=("hpa",),
    ),
    ResourceType("events.k8s.io", "v1", "events", "event", "Event", short_names=("ev",), field_paths=_EVENTS_V1_FIELDS),
    # What a Helm install of charts/kaltstart creates besides the above; stored, never acted on.
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "role", "Role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding"),
    ResourceType(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        subresources=("status",),
        short_names=("pdb",),
    ),
    ResourceType(
        "networking.k8s.io", "v1", "networkpolicies", "networkpolicy", "NetworkPolicy", short_names=("netpol",)
    ),
    ResourceType("monitoring.coreos.com", "v1", "servicemonitors", "servicemonitor", "ServiceMonitor"),
)

_BY_PATH = {(rt.group, rt.version, rt.plural): rt for rt in RESOURCES}
_BY_KIND = {(rt.api_version, rt.kind): rt for rt in RESOURCES}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def require(group: str, version: str, plural: str) -> ResourceType:
    rt = lookup(group, version, plural)
    if rt is None:
        raise LookupError(f"the double does not serve {group or 'core'}/{version} {plural}")
    return rt


DEPLOYMENTS = require("apps", "v1", "deployments")
PODS = require("", "v1", "pods")
SERVICES = require("", "v1", "services")
CONFIG_MAPS = require("", "v1", "configmaps")
ENDPOINT_SLICES = require("discovery.k8s.io", "v1", "endpointslices")


def lookup_kind(api_version: str, kind: str) -> ResourceType | None:
    return _BY_KIND.get((api_version, kind))


def groups() -> list[str]:
    """The non-core API groups, in registry order."""
    return list(dict.fromkeys(rt.group for rt in RESOURCES if rt.group))


def _subresource_entries(rt: ResourceType) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for sub in rt.subresources:
        entry: dict[str, Any] = {"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced}
        if sub == "scale":
            entry.update(group="autoscaling", version="v1", kind="Scale", verbs=["get", "patch", "update"])
        elif sub == "log":
            entry.update(kind="Pod", verbs=["get"])
        else:
            entry.update(kind=rt.kind, verbs=["get", "patch", "update"])
        entries.append(entry)
    return entries


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """The ``APIResourceList`` for one group version, or None if the double does not serve it."""
    members = [rt for rt in RESOURCES if rt.group == group and rt.version == version]
    if not members:
        return None
    entries: list[dict[str, Any]] = []
    for rt in members:
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(ALL_VERBS),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        entries.append(entry)
        entries.extend(_subresource_entries(rt))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": members[0].api_version,
        "resources": entries,
    }


def _group_entry(group: str) -> dict[str, Any]:
    versions = list(dict.fromkeys(rt.version for rt in RESOURCES if rt.group == group))
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group_entry(g) for g in groups()]}


def group(name: str) -> dict[str, Any] | None:
    if name not in groups():
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(name)}


def core_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }
