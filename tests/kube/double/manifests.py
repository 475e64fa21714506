"""Small manifest builders for tests, so each test states only what it cares about."""

from __future__ import annotations

from typing import Any


def as_model(manifest: dict[str, Any]) -> Any:
    """A manifest as a kubernetes_asyncio request body.

    The client serializes plain dicts as they are (and the gateway may send them so), but its annotations ask
    for model classes (V1Deployment...); this keeps mypy strict without building models in every test.
    """
    return manifest


def deployment(
    name: str,
    replicas: int = 0,
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    command: list[str] | None = None,
    readiness_path: str | None = "/readyz",
) -> dict[str, Any]:
    """An apps/v1 Deployment whose pods carry ``app: <name>`` (plus ``labels``) and run ``command``."""
    pod_labels = {"app": name}
    container: dict[str, Any] = {"name": "main", "image": "kaltstart/double-pod:latest"}
    if command is not None:
        container["command"] = command
    if readiness_path is not None:
        container["readinessProbe"] = {"httpGet": {"path": readiness_path, "port": "http"}}
    container["ports"] = [{"name": "http", "containerPort": 8080}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**pod_labels, **(labels or {})},
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels}, "spec": {"containers": [container]}},
        },
    }


def config_map(name: str, data: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "data": dict(data or {}),
    }
