"""One read of the served models and their replicas, for ``python -m gateway status``.

The annotated Deployments of each namespace are listed once and decided as a gateway starting now would decide
them (``RouteTable``: the recorded owners first, then by age); each model's replicas are its Deployment's, read as
the backend reads them (``deployment_replicas``). Read-only by construction: one list per namespace, no watch, no
Lease, no Event, no owner recorded, no scale.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException

from gateway.backends import Replicas
from gateway.backends.kubernetes.backend import api_client, deployment_replicas
from gateway.backends.kubernetes.claims import LABEL_SELECTOR, DeploymentRef
from gateway.backends.kubernetes.index import RouteTable
from gateway.backends.kubernetes.informer import Object, key_of
from gateway.backends.kubernetes.owners import Owner
from gateway.errors import BackendError
from gateway.settings import KubernetesSettings, ModelSettings

#: Seconds to connect to the API server, and to read one list.
LIST_TIMEOUT_S = (10, 30)


@dataclass(frozen=True)
class ListedModel:
    settings: ModelSettings
    deployment: DeploymentRef
    replicas: Replicas
    #: Served by a pool runtime (``kaltstart.dev/pool: "true"``).
    pool: bool


async def list_models(settings: KubernetesSettings, owners: Mapping[str, Owner]) -> list[ListedModel]:
    """The models served in ``settings.namespaces``, by name; ``owners``: the recorded owners of model names."""
    table = RouteTable(settings.route_allow_list, keep_owners=False)
    table.load(owners)
    listed: dict[tuple[str, str], Object] = {}
    try:
        api = await api_client(settings.kubeconfig)
    except (ConfigException, OSError) as exc:
        raise BackendError(f"no Kubernetes API to read: {exc}") from exc
    try:
        apps = client.AppsV1Api(api)
        for namespace in settings.namespaces:
            items = await _list(apps, namespace)
            listed.update((key_of(item), item) for item in items)
            table.replace(namespace, items)
    finally:
        await api.close()
    return [
        ListedModel(
            route.model, route.deployment, deployment_replicas(listed.get(_key(route.deployment)) or {}), route.pool
        )
        for _, route in sorted(table.routes.items())
    ]


async def _list(apps: client.AppsV1Api, namespace: str) -> list[Object]:
    try:
        listed = await apps.list_namespaced_deployment(
            namespace=namespace, label_selector=LABEL_SELECTOR, _preload_content=False, _request_timeout=LIST_TIMEOUT_S
        )
        response = cast(aiohttp.ClientResponse, listed)  # the raw response, as _preload_content=False asks
        body = json.loads(await response.read())
    except ApiException as exc:
        raise BackendError(f"listing Deployments in {namespace} failed: {exc.status} {exc.reason}") from exc
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BackendError(f"listing Deployments in {namespace} failed: {exc!r}") from exc
    items: list[Object] = body.get("items") or []
    return items


def _key(ref: DeploymentRef) -> tuple[str, str]:
    return ref.namespace, ref.name
