"""EndpointSlices for fake pods: one slice per pod.

Every fake pod listens on 127.0.0.1 with a port of its own, and an EndpointSlice carries one ``ports`` list
for all its endpoints, so pods with different ports cannot share a slice: the real EndpointSlice controller
groups endpoints by port set, and would do the same here. Each slice is named ``<service>-<random>`` and
labelled ``kubernetes.io/service-name: <service>``. The service is the first Service in the namespace whose
selector matches the pod's labels when the pod starts (its first port's name becomes the slice's port name);
without one, it is the Deployment's name and the port is named ``http``.
"""

from __future__ import annotations

from typing import Any

from .errors import ApiError
from .resources import ENDPOINT_SLICES, SERVICES
from .selection import LabelSelector
from .store import Store

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"


def service_for(store: Store, namespace: str, labels: dict[str, str], fallback: str) -> tuple[str, str]:
    """(service name, port name) for a pod with these labels."""
    for service in store.list(SERVICES, namespace):
        selector = (service.get("spec") or {}).get("selector") or {}
        if selector and LabelSelector.parse(",".join(f"{k}={v}" for k, v in selector.items())).matches(
            {"metadata": {"labels": labels}}
        ):
            ports = (service.get("spec") or {}).get("ports") or [{}]
            return service["metadata"]["name"], ports[0].get("name", "")
    return fallback, "http"


class PodEndpoint:
    """The EndpointSlice that publishes one pod's address, port and readiness."""

    def __init__(self, store: Store, pod: dict[str, Any], service: str, port_name: str, port: int) -> None:
        self._store = store
        self._pod = pod
        self._service = service
        self._port_name = port_name
        self._port = port
        self._name: str | None = None

    @property
    def namespace(self) -> str:
        namespace: str = self._pod["metadata"]["namespace"]
        return namespace

    def publish(self, ready: bool, serving: bool, terminating: bool) -> None:
        endpoint = {
            "addresses": ["127.0.0.1"],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "targetRef": {
                "kind": "Pod",
                "name": self._pod["metadata"]["name"],
                "namespace": self.namespace,
                "uid": self._pod["metadata"]["uid"],
            },
            "nodeName": self._pod["spec"].get("nodeName", ""),
        }
        if self._name is not None:
            try:
                self._store.update(
                    ENDPOINT_SLICES, self.namespace, self._name, lambda s: s.update(endpoints=[endpoint])
                )
                return
            except ApiError as error:  # someone deleted the slice: publish a new one
                if error.code != 404:
                    raise
        self._name = self._store.create(ENDPOINT_SLICES, self.namespace, self._slice(endpoint))["metadata"]["name"]

    def remove(self) -> None:
        if self._name is None:
            return
        try:
            self._store.delete(ENDPOINT_SLICES, self.namespace, self._name)
        except ApiError as error:
            if error.code != 404:
                raise
        self._name = None

    def _slice(self, endpoint: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "generateName": f"{self._service}-",
                "labels": {SERVICE_NAME_LABEL: self._service, MANAGED_BY_LABEL: MANAGED_BY},
            },
            "addressType": "IPv4",
            "endpoints": [endpoint],
            "ports": [{"name": self._port_name, "port": self._port, "protocol": "TCP"}],
        }
