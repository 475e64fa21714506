"""The Kubernetes backend: models from annotated Deployments, replicas through ``deployments/scale``,
ready pod addresses from EndpointSlices, scale-down by the leader only.

A Deployment left out (an invalid or unknown annotation, or a model name it may not take: see ``routes.decide``)
gets a Warning Event, once per reason; a refused claim is counted in ``kaltstart_route_conflicts_total`` too.

Everything the scaler needs lives in the cluster (Deployments' ``spec.replicas``, ``status.readyReplicas``) or
in Redis (queue depth, activity), so a restarted gateway picks up where it was. So do the owners of model names
(``owners``): read before the first list, written by one task in the order decided (``RouteChange.writes``). If
Redis cannot be read at start, or a write fails, routes are decided in memory (owners kept, unowned names by age)
with a warning, and the records are read again and reconciled with the routes once Redis answers.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from gateway.backends import NO_REPLICAS, BackendParts, Replicas
from gateway.backends.kubernetes.claims import (
    LABEL_SELECTOR,
    ROUTE_CONFLICT,
    ROUTE_NOT_ALLOWED,
    DeploymentRef,
    Route,
    RouteError,
)
from gateway.backends.kubernetes.index import (
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    RouteChange,
    RouteTable,
    ServiceKey,
    SliceIndex,
)
from gateway.backends.kubernetes.informer import Informer, Key, Object, Snapshot
from gateway.backends.kubernetes.leader import LeaderElector, LeaseSettings
from gateway.backends.kubernetes.owners import Claim, OwnerStore, Write
from gateway.catalog import ModelCatalog
from gateway.errors import BackendError, QueueUnavailable, UnknownModel
from gateway.metrics import RouteMetrics
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.settings import KubernetesSettings

log = logging.getLogger("kaltstart.kubernetes")

#: Attempts of a read-modify-write of a Scale that keeps meeting 409 Conflict.
SCALE_ATTEMPTS = 8
#: How long start() waits for the first list of Deployments and EndpointSlices.
SYNC_TIMEOUT_S = 30.0
#: How long start() waits for the recorded owners (read before the first list, written after it).
OWNERS_TIMEOUT_S = 5.0
#: Pause before reading the recorded owners again after Redis failed.
OWNERS_RETRY_S = 1.0
#: A refused claim's Event reason -> the ``reason`` label of ``kaltstart_route_conflicts_total``.
_CONFLICT_LABELS = {ROUTE_CONFLICT: "route_conflict", ROUTE_NOT_ALLOWED: "route_not_allowed"}


def ready_urls(slices: Iterable[Object], service: str, port: str, *, ready_only: bool = True) -> list[str]:
    """``http://address:port`` of every ready endpoint of a Service, from its EndpointSlices (or of every endpoint,
    ready or not, without ``ready_only``: the replicas whose announcements count)."""
    urls = []
    for item in slices:
        if (item.get("metadata", {}).get("labels") or {}).get(SERVICE_NAME_LABEL) != service:
            continue
        number = next(
            (p.get("port") for p in item.get("ports") or [] if p.get("name") == port or str(p.get("port")) == port),
            None,
        )
        if number is None:
            continue
        for endpoint in item.get("endpoints") or []:
            # A nil ready condition means unknown, which the API says to read as ready.
            if ready_only and (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                urls.append(f"http://{host}:{number}")
    return urls


def deployment_replicas(deployment: Object) -> Replicas:
    """A Deployment's replicas: ``spec.replicas`` (1 when unset, as the API defaults it), ``status.readyReplicas``."""
    desired = (deployment.get("spec") or {}).get("replicas")
    ready = (deployment.get("status") or {}).get("readyReplicas") or 0
    return Replicas(desired=1 if desired is None else int(desired), ready=int(ready))


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """In-cluster config inside a pod, a kubeconfig file outside."""
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


class _Handler:
    """An informer's consumer from two functions (see ``informer.Handler``)."""

    def __init__(self, replaced: Callable[[Snapshot], None], changed: Callable[[Key, Object | None], None]) -> None:
        self.replaced = replaced
        self.changed = changed


class KubernetesBackend:
    """``identity`` names this gateway replica in the leader election (its gateway id); ``owners`` is where the
    owners of model names are recorded (None: in memory only, each gateway on its own)."""

    def __init__(
        self,
        *,
        settings: KubernetesSettings,
        identity: str,
        catalog: ModelCatalog,
        endpoints: ReadyEndpoints,
        metrics: RouteMetrics | None = None,
        owners: OwnerStore | None = None,
    ) -> None:
        self._settings = settings
        self._owners = owners
        self._writes: list[Write] = []
        self._wake_writer = asyncio.Event()
        self._written = asyncio.Event()
        self._written.set()
        #: The records must be read again before anything is written (unread at start, or a write failed).
        self._owners_stale = False
        self._metrics = metrics or RouteMetrics()
        self._lease = LeaseSettings(
            name=settings.lease_name,
            namespace=settings.lease_namespace or settings.namespaces[0],
            identity=identity,
            duration_s=settings.lease_duration_s,
        )
        self._catalog = catalog
        self._endpoints = endpoints
        namespaces = settings.namespaces
        self._deployments: dict[str, Snapshot] = {ns: {} for ns in namespaces}
        # Nobody owns a name until every namespace was listed: the first lists are decided by age alone.
        self._table = RouteTable(settings.route_allow_list, keep_owners=False)
        self._slices = SliceIndex(self._slice_ignored)
        self._reported: dict[tuple[str, str], str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._api: client.ApiClient | None = None
        self.elector: LeaderElector | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._owners is not None:
            await self._load_owners(self._owners)
        self._api = await api_client(self._settings.kubeconfig)
        self._apps = client.AppsV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        discovery = client.DiscoveryV1Api(self._api)
        informers = [
            *(Informer(f"deployments in {ns}", self._apps.list_namespaced_deployment, self._on_deployments(ns),
                       namespace=ns, label_selector=LABEL_SELECTOR) for ns in self._settings.namespaces),
            *(Informer(f"endpointslices in {ns}", discovery.list_namespaced_endpoint_slice,
                       self._on_slices(ns), namespace=ns) for ns in self._settings.namespaces),
        ]  # fmt: skip
        self.elector = LeaderElector(self._api, self._lease)
        self._tasks = [asyncio.create_task(i.run(), name="informer") for i in informers]
        self._tasks.append(asyncio.create_task(self.elector.run(), name="leader-election"))
        try:
            async with asyncio.timeout(SYNC_TIMEOUT_S):
                await asyncio.gather(*(i.synced.wait() for i in informers))
        except TimeoutError:
            await self.stop()
            raise BackendError(f"could not list Deployments within {SYNC_TIMEOUT_S:.0f} s") from None
        self._routes_changed(self._table.keep_owners())
        if self._owners is not None:
            self._tasks.append(asyncio.create_task(self._record_owners(self._owners), name="route-owners"))
            if not self._owners_stale:  # else serve as decided here at once; the records follow when Redis does
                await self._first_records()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("a background task of the Kubernetes backend failed")
        self._tasks = []
        if self._api is not None:
            await self._api.close()
            self._api = None
        if self._owners is not None:
            await self._owners.aclose()

    async def owners_recorded(self) -> None:
        """Wait until the recorded owners match the routes decided so far (tests; the first records at start)."""
        await self._written.wait()

    # -- the recorded owners of model names: read once, then written in the order decided ----------------------

    async def _load_owners(self, store: OwnerStore) -> None:
        try:
            async with asyncio.timeout(OWNERS_TIMEOUT_S):
                self._table.load(await store.read())
        except (QueueUnavailable, TimeoutError) as exc:
            self._owners_unavailable(exc)

    def _owners_unavailable(self, exc: Exception) -> None:
        if not self._owners_stale:
            log.warning(
                "route owners: Redis unavailable (%r); deciding in memory (owners kept, unowned names by age) "
                "until it answers, then reconciling with the records", exc,
            )  # fmt: skip
        self._owners_stale = True
        self._writes.clear()  # the reconcile derives what to write from the records as they are then
        self._written.clear()
        self._wake_writer.set()

    async def _first_records(self) -> None:
        try:
            async with asyncio.timeout(OWNERS_TIMEOUT_S):
                await self.owners_recorded()
        except TimeoutError:
            log.warning("route owners: not recorded within %.0f s; serving as decided here", OWNERS_TIMEOUT_S)

    async def _record_owners(self, store: OwnerStore) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            try:
                if self._owners_stale:
                    records = await store.read()
                    self._owners_stale = False
                    self._writes.clear()
                    log.info("route owners: %d read from Redis; reconciling", len(records))
                    self._routes_changed(self._table.reconcile(records))
                await self._write_owners(store)
            except QueueUnavailable as exc:
                self._owners_unavailable(exc)
                await asyncio.sleep(OWNERS_RETRY_S)  # a back-off: Redis says nothing when it is back
                continue
            if not self._writes and not self._owners_stale:
                self._written.set()

    async def _write_owners(self, store: OwnerStore) -> None:
        while self._writes:
            writes, self._writes = self._writes, []
            for write, recorded in zip(writes, await store.write(writes), strict=True):
                if isinstance(write, Claim) and recorded is not None and recorded != write.owner:
                    log.info("model %s: recorded for %s by another gateway first", write.model, recorded)
                    self._routes_changed(self._table.adopt(write.model, recorded, write.owner))

    @property
    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader

    # -- what the informers report: each event updates the models it touches, no others -----------------

    def _on_deployments(self, namespace: str) -> _Handler:
        return _Handler(lambda objects: self._deployments_listed(namespace, objects), self._deployment_changed)

    def _on_slices(self, namespace: str) -> _Handler:
        return _Handler(lambda objects: self._publish(self._slices.replace(namespace, objects)), self._slice_changed)

    def _deployments_listed(self, namespace: str, objects: Snapshot) -> None:
        self._deployments[namespace] = dict(objects)
        self._routes_changed(self._table.replace(namespace, objects.values()))

    def _deployment_changed(self, key: Key, obj: Object | None) -> None:
        snapshot = self._deployments.setdefault(key[0], {})
        if obj is None:
            snapshot.pop(key, None)
            self._reported.pop(key, None)
            self._routes_changed(self._table.remove(DeploymentRef(*key)))
        else:
            snapshot[key] = obj
            self._routes_changed(self._table.put(obj))

    def _slice_changed(self, key: Key, obj: Object | None) -> None:
        self._publish(self._slices.forget(key) if obj is None else self._slices.put(key, obj))

    def _slice_ignored(self, key: Key, obj: Object) -> None:
        self._metrics.ignored_slices.inc()
        labels = (obj.get("metadata") or {}).get("labels") or {}
        log.warning(
            "EndpointSlice %s/%s (service %r) ignored: %s is %r, not the EndpointSlice controller",
            *key, labels.get(SERVICE_NAME_LABEL), MANAGED_BY_LABEL, labels.get(MANAGED_BY_LABEL),
        )  # fmt: skip

    def _routes_changed(self, change: RouteChange) -> None:
        if change.writes and self._owners is not None:
            self._writes += change.writes
            self._written.clear()
            self._wake_writer.set()
        for error in change.errors:
            self._report(error)
        for ref in change.served:
            key = (ref.namespace, ref.name)
            if self._reported.pop(key, None) is not None:
                log.info("deployment %s/%s: annotations valid again", *key)
        if not change.models:
            return
        routes = self._table.routes
        log.info("models: %s", ", ".join(f"{m} -> {routes[m].deployment}" if m in routes else f"{m} gone"
                                         for m in sorted(change.models)))  # fmt: skip
        self._catalog.update(
            [routes[m].model for m in change.models if m in routes],
            {m: str(routes[m].deployment) for m in change.models if m in routes},
            removed=[m for m in change.models if m not in routes],
            pooled=[m for m in change.models if m in routes and routes[m].pool],
        )
        for model in change.models:
            self._publish_model(model)

    def _publish(self, services: set[ServiceKey]) -> None:
        for service in services:
            for model in self._table.models_of(service):
                self._publish_model(model)

    def _publish_model(self, model: str) -> None:
        route = self._table.routes.get(model)
        adapter = None if route is None else route.model.adapter
        self._endpoints.alias(model, None if adapter is None else adapter.base)  # its base's replicas serve it
        if route is None or adapter is not None:
            return
        slices = self._slices.of((route.deployment.namespace, route.service))
        self._endpoints.vouch(model, ready_urls(slices, route.service, route.port, ready_only=False))
        self._endpoints.set(model, ready_urls(slices, route.service, route.port))

    def _report(self, error: RouteError) -> None:
        key = (error.deployment.namespace, error.deployment.name)
        if self._reported.get(key) == error.message:
            return
        self._reported[key] = error.message
        log.error("deployment %s: %s", error.deployment, error.message)
        if error.model is not None and error.kind in _CONFLICT_LABELS:
            self._metrics.conflicts.labels(error.model, _CONFLICT_LABELS[error.kind]).inc()
        task = asyncio.get_running_loop().create_task(self._record_event(error))
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _record_event(self, error: RouteError) -> None:
        meta, ref = error.obj.get("metadata") or {}, error.deployment
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{error.deployment.name}.", namespace=ref.namespace),
            involved_object=client.V1ObjectReference(
                api_version="apps/v1", kind="Deployment", name=error.deployment.name,
                namespace=error.deployment.namespace, uid=meta.get("uid"), resource_version=meta.get("resourceVersion"),
            ),
            reason=error.kind, message=error.message, type="Warning",
            source=client.V1EventSource(component="kaltstart-gateway"),
            first_timestamp=now, last_timestamp=now, count=1,
        )  # fmt: skip
        try:
            await self._core.create_namespaced_event(error.deployment.namespace, event)
        except ApiException as exc:
            log.warning("could not record an Event on %s: %s %s", error.deployment, exc.status, exc.reason)

    # -- ReplicaControl --------------------------------------------------------------------------------------

    def _route(self, model: str) -> Route:
        try:
            return self._table.routes[model]
        except KeyError:
            raise UnknownModel(f"unknown model {model!r}") from None

    def replicas(self, model: str) -> Replicas:
        route = self._table.routes.get(model)
        if route is None:
            return NO_REPLICAS
        ref = route.deployment
        return deployment_replicas(self._deployments.get(ref.namespace, {}).get((ref.namespace, ref.name)) or {})

    async def scale_up(self, model: str, at_least: int, *, fresh: bool = False) -> bool:
        if not fresh and self.replicas(model).desired >= at_least:
            return False
        return await self._write_scale(self._route(model), lambda current: at_least if current < at_least else None)

    async def scale_down(self, model: str, to: int) -> bool:
        return await self._write_scale(self._route(model), lambda current: to if current > to else None, retry=False)

    async def _write_scale(self, route: Route, new_count: Any, retry: bool = True) -> bool:
        """Read the Scale, write ``new_count(current)`` with its resourceVersion; on 409, read again (a stale
        read never overwrites someone else's count). ``new_count`` returns None for "leave it"."""
        ref = route.deployment
        for _ in range(SCALE_ATTEMPTS):
            try:
                scale = await self._apps.read_namespaced_deployment_scale(ref.name, ref.namespace)
                current = scale.spec.replicas or 0
                wanted = new_count(current)
                if wanted is None:
                    return False
                scale.spec.replicas = wanted
                await self._apps.replace_namespaced_deployment_scale(ref.name, ref.namespace, scale)
                log.info("scaled %s from %d to %d", ref, current, wanted)
                return True
            except aiohttp.ClientError as exc:
                raise BackendError(f"scaling {ref} failed: {exc!r}") from exc
            except ApiException as exc:
                if exc.status == 409 and retry:
                    log.info("scale of %s changed under us (409); reading it again", ref)
                    continue
                if exc.status == 409:
                    return False
                raise BackendError(f"scaling {ref} failed: {exc.status} {exc.reason}") from exc
        raise BackendError(f"scaling {ref}: {SCALE_ATTEMPTS} conflicts in a row")


def build_kubernetes(settings: KubernetesSettings, identity: str, owners: OwnerStore | None = None) -> BackendParts:
    """The Kubernetes backend with its catalog (kept current from annotations) and ready endpoints; ``owners``:
    where the owners of model names are recorded (``owners.RedisOwners`` on the gateway's Redis)."""
    catalog, endpoints, metrics = ModelCatalog(), ReadyEndpoints(), RouteMetrics()
    backend = KubernetesBackend(
        settings=settings, identity=identity, catalog=catalog, endpoints=endpoints, metrics=metrics, owners=owners
    )
    return BackendParts(backend, catalog, endpoints, "<model>", metrics.collectors)
