"""What the informers saw, indexed by what changes, so that one watch event costs work for the objects it
touches, not for every model (a full rebuild per event blocked the event loop for long at a thousand models:
docs/loadtest.md, "bench scale").

``RouteTable``: model routes by Deployment. An event re-parses that Deployment only (and not even that when its
annotations did not change, as on a status update), then re-decides ownership among the Deployments that share a model
name with it, directly or through others: ``claims.decide``'s rule (an owner keeps its names, unowned names go to the
oldest claimant) applied to that group alone gives what the same rule gives over all Deployments at once, since no other
Deployment can change the outcome. Until ``keep_owners`` is called (once every namespace was listed) nobody owns
anything yet but the recorded owners, so the first lists are decided by the records, then by age, in whichever order the
namespaces arrive.

Recorded owners (``owners``: the record in Redis that every gateway replica shares, ``load``-ed before the first
list): a recorded owner that still claims the name (the same object: namespace/name and uid) is its owner, before
any owner held in memory; so a restarted gateway, or a new replica, keeps the owner the fleet chose, not the oldest
claimant. Once recording (``keep_owners`` after a ``load``, or ``reconcile``), each decision also says what to
write (``RouteChange.writes``): a ``Release`` of a record whose owner no longer serves the name, a ``Claim`` for a
name served but not recorded. ``records`` mirrors what Redis holds once those writes are applied; a lost claim
comes back through ``adopt`` (another gateway recorded someone else first: that owner is taken as soon as it claims
the name here too). Without a ``load`` (no store, or Redis unreachable at start) the table decides as before, in
memory: owners kept, unowned names by age; ``reconcile`` with the records read later moves each name to its
recorded owner and records the rest.

``SliceIndex``: EndpointSlices by Service (label ``kubernetes.io/service-name``), so a slice event republishes the
models of its Service only. Only slices the EndpointSlice controller manages
(``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io``) count: anyone allowed to write
EndpointSlices in a served namespace could otherwise add an address of their own to a model's Service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.kubernetes.claims import (
    AllowList,
    DeploymentRef,
    Route,
    RouteError,
    check_allowed,
    claim_order,
    conflict,
    decide,
    ref_of,
    routes_of,
)
from gateway.backends.kubernetes.owners import Claim, Owner, Release, Write

Object = dict[str, Any]
#: (namespace, Service name)
ServiceKey = tuple[str, str]
#: (namespace, EndpointSlice name)
SliceKey = tuple[str, str]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
#: The only ``managed-by`` whose slices are read: the controller that derives them from a Service's selector.
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"

__all__ = ["Owner", "RouteChange", "RouteTable", "SliceIndex", "ref_of"]


@dataclass
class RouteChange:
    """What one update changed: models whose route appeared, moved or went (``routes`` has the new ones), the
    Deployments left out (with why) and those now served, among the ones it re-decided."""

    models: set[str] = field(default_factory=set)
    errors: list[RouteError] = field(default_factory=list)
    served: set[DeploymentRef] = field(default_factory=set)
    #: What to write to the recorded owners, in order (only once recording).
    writes: list[Write] = field(default_factory=list)


class RouteTable:
    """``allow``: the route allow-list (model name -> namespaces or namespace/Deployment entries)."""

    def __init__(self, allow: AllowList | None = None, *, keep_owners: bool = True) -> None:
        self._allow: AllowList = allow or {}
        self._keep_owners = keep_owners
        #: Model name -> its route, for the Deployments served.
        self.routes: dict[str, Route] = {}
        self._parsed: dict[DeploymentRef, list[Route] | RouteError] = {}
        self._annotations: dict[DeploymentRef, Mapping[str, str]] = {}
        #: The Deployments as last read, for the Event a conflict records (uid, resourceVersion).
        self._objects: dict[DeploymentRef, Object] = {}
        #: Model name -> the Deployments whose valid annotations list it (served or not).
        self._claims: dict[str, set[DeploymentRef]] = {}
        self._by_service: dict[ServiceKey, set[str]] = {}
        #: Model name -> the owner that serves it here (the route's Deployment and its uid).
        self._owners: dict[str, Owner] = {}
        #: Model name -> its recorded owner, as Redis holds it once ``writes`` handed out are applied (None: unread).
        self.records: dict[str, Owner] | None = None
        #: Names whose record came from a lost claim and names a Deployment that does not claim it here (yet): such
        #: a record is never released from here, it is taken up when its owner's claim arrives.
        self._unconfirmed: set[str] = set()
        self._recording = False

    def load(self, records: Mapping[str, Owner]) -> None:
        """The recorded owners, read before the first list: honoured at once, written to from ``keep_owners`` on."""
        self.records = dict(records)

    def keep_owners(self) -> RouteChange:
        """From now on a served name stays with its Deployment (call once every namespace was listed); with records
        loaded, recording starts: the writes that bring the records in line with the routes."""
        self._keep_owners = True
        if self.records is None:
            return RouteChange()
        self._recording = True
        return self._decide_all()

    def reconcile(self, records: Mapping[str, Owner]) -> RouteChange:
        """The recorded owners as read afresh (Redis back after an outage): a name whose recorded owner claims it
        moves to that owner; a record whose owner does not is released, a route not recorded is claimed."""
        self.records, self._recording = dict(records), True
        self._unconfirmed.clear()
        return self._decide_all()

    def adopt(self, model: str, recorded: Owner, claimed: Owner) -> RouteChange:
        """A claim of ``claimed`` for ``model`` found ``recorded`` there (another gateway decided first): it is the
        owner from now on, once it claims the name here (our view of the Deployments may lag behind theirs)."""
        if self.records is None or self.records.get(model) != claimed:
            return RouteChange()  # a later write of ours for this name is on its way and will report
        self.records[model] = recorded
        self._unconfirmed.add(model)
        return self._decide(set(), {model})

    def models_of(self, service: ServiceKey) -> set[str]:
        return self._by_service.get(service, set())

    def put(self, deployment: Object) -> RouteChange:
        ref = ref_of(deployment)
        names = self._reparse(ref, deployment)
        return RouteChange() if names is None else self._decide({ref}, names)

    def remove(self, ref: DeploymentRef) -> RouteChange:
        return self._decide({ref}, self._unparse(ref))

    def replace(self, namespace: str, deployments: Iterable[Object]) -> RouteChange:
        """A fresh list of ``namespace``: re-parse what changed, drop what is gone, then decide once for all of
        them (so a model handed from one Deployment to another is never seen claimed twice on the way)."""
        listed = {ref_of(d): d for d in deployments}
        refs, names = set(), set()
        for ref in [r for r in self._parsed if r.namespace == namespace and r not in listed]:
            refs.add(ref)
            names |= self._unparse(ref)
        for ref, deployment in listed.items():
            touched = self._reparse(ref, deployment)
            if touched is not None:
                refs.add(ref)
                names |= touched
        return self._decide(refs, names) if refs else RouteChange()

    # -- parsing -------------------------------------------------------------------------------------------

    def _reparse(self, ref: DeploymentRef, deployment: Object) -> set[str] | None:
        """Parse ``deployment`` if its annotations changed; the model names it listed and lists now, or None if
        nothing that routes depend on changed."""
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        if (
            ref in self._parsed
            and self._annotations.get(ref) == annotations
            and _uid(self._objects[ref]) == _uid(deployment)
        ):
            self._objects[ref] = deployment
            return None
        names = self._unparse(ref)
        found = check_allowed(routes_of(deployment), self._allow, deployment)
        self._parsed[ref], self._annotations[ref], self._objects[ref] = found, dict(annotations), deployment
        for name in _names(found):
            self._claims.setdefault(name, set()).add(ref)
        return names | _names(found)

    def _unparse(self, ref: DeploymentRef) -> set[str]:
        found = self._parsed.pop(ref, None)
        self._annotations.pop(ref, None)
        self._objects.pop(ref, None)
        names = _names(found)
        for name in names:
            claimants = self._claims.get(name, set())
            claimants.discard(ref)
            if not claimants:
                self._claims.pop(name, None)
        return names

    # -- deciding who serves what --------------------------------------------------------------------------

    def _decide(self, refs: set[DeploymentRef], names: set[str]) -> RouteChange:
        """Re-decide the routes of ``names`` among every Deployment connected to ``refs`` or ``names``."""
        group, names = self._connected(refs, names)
        before = {name: self.routes.pop(name, None) for name in names}
        claims = {ref: found for ref in group if not isinstance(found := self._parsed[ref], RouteError)}
        routes, refused = decide(claims, lambda ref: claim_order(self._objects[ref]), self._owners_of(names, claims))
        self.routes.update(routes)
        for name in names:
            route = self.routes.get(name)
            if route is None:
                self._owners.pop(name, None)
            else:
                self._owners[name] = Owner(route.deployment, _uid(self._objects[route.deployment]))
        change = RouteChange(served=claims.keys() - refused.keys())
        change.errors = [found for ref in group if isinstance(found := self._parsed[ref], RouteError)]
        change.errors += [conflict(ref, refusal, self._objects[ref]) for ref, refusal in refused.items()]
        change.models = {name for name in names if before[name] != self.routes.get(name)}
        for name in change.models:
            self._index(name, before[name], self.routes.get(name))
        change.writes = self._record(names) if self._recording else []
        return change

    def _decide_all(self) -> RouteChange:
        return self._decide(set(self._parsed), set(self._claims) | set(self.routes) | set(self.records or {}))

    def _owners_of(self, names: set[str], claims: Mapping[DeploymentRef, list[Route]]) -> dict[str, DeploymentRef]:
        """Each name's owner so far: its recorded owner if that still claims it, else (once owners are kept) the
        one serving it here if that still claims it."""
        owners = {}
        for name in names:
            recorded = (self.records or {}).get(name)
            held = self._owners.get(name) if self._keep_owners else None
            if recorded is not None and self._still_claims(recorded, name, claims):
                owners[name] = recorded.deployment
                self._unconfirmed.discard(name)
            elif held is not None and self._still_claims(held, name, claims):
                owners[name] = held.deployment
        return owners

    def _still_claims(self, owner: Owner, name: str, claims: Mapping[DeploymentRef, list[Route]]) -> bool:
        """Whether ``owner`` (that very object) validly claims ``name`` now."""
        ref = owner.deployment
        if ref not in claims or _uid(self._objects[ref]) != owner.uid:
            return False
        return any(route.model.name == name for route in claims[ref])

    def _record(self, names: set[str]) -> list[Write]:
        """The writes that make the records of ``names`` name their owners here: release the record of an owner
        that no longer serves the name (not one learnt from a lost claim), claim a name served but not recorded."""
        records, writes = self.records if self.records is not None else {}, list[Write]()
        for name in sorted(names):
            owner, recorded = self._owners.get(name), records.get(name)
            if recorded is not None and recorded != owner and name not in self._unconfirmed:
                writes.append(Release(name, recorded))
                del records[name]
                recorded = None
            if owner is not None and recorded is None:
                writes.append(Claim(name, owner))
                records[name] = owner
        return writes

    def _connected(self, refs: set[DeploymentRef], names: set[str]) -> tuple[set[DeploymentRef], set[str]]:
        """The Deployments (still present) and model names reachable from ``refs`` and ``names`` through shared
        model names."""
        group = {ref for ref in refs if ref in self._parsed}
        names = set(names)
        todo_refs, todo_names = list(group), list(names)
        while todo_refs or todo_names:
            while todo_names:
                for ref in self._claims.get(todo_names.pop(), set()) - group:
                    group.add(ref)
                    todo_refs.append(ref)
            while todo_refs:
                for name in _names(self._parsed.get(todo_refs.pop())) - names:
                    names.add(name)
                    todo_names.append(name)
        return group, names

    def _index(self, name: str, old: Route | None, new: Route | None) -> None:
        if old is not None:
            models = self._by_service.get((old.deployment.namespace, old.service), set())
            models.discard(name)
            if not models:
                self._by_service.pop((old.deployment.namespace, old.service), None)
        if new is not None:
            self._by_service.setdefault((new.deployment.namespace, new.service), set()).add(name)


def _uid(deployment: Object) -> str:
    return str((deployment.get("metadata") or {}).get("uid") or "")


def _names(found: list[Route] | RouteError | None) -> set[str]:
    return set() if found is None or isinstance(found, RouteError) else {r.model.name for r in found}


class SliceIndex:
    """EndpointSlices by the Service they belong to; ``ignored`` is told once of each slice left out (no
    ``managed-by`` of the EndpointSlice controller), again only if it was accepted or deleted in between."""

    def __init__(self, ignored: Callable[[SliceKey, Object], None] = lambda key, obj: None) -> None:
        self._by_service: dict[ServiceKey, dict[SliceKey, Object]] = {}
        self._service_of: dict[SliceKey, ServiceKey] = {}
        self._ignored: set[SliceKey] = set()
        self._on_ignored = ignored

    def of(self, service: ServiceKey) -> Iterable[Object]:
        return self._by_service.get(service, {}).values()

    def put(self, key: SliceKey, obj: Object) -> set[ServiceKey]:
        """Store a slice; the Services whose slices changed (its old one too, if its label changed)."""
        touched = self.remove(key)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != SLICE_CONTROLLER:
            if key not in self._ignored:
                self._ignored.add(key)
                self._on_ignored(key, obj)
            return touched
        self._ignored.discard(key)
        service = (key[0], labels.get(SERVICE_NAME_LABEL) or "")
        if service[1]:
            self._by_service.setdefault(service, {})[key] = obj
            self._service_of[key] = service
            touched.add(service)
        return touched

    def remove(self, key: SliceKey) -> set[ServiceKey]:
        service = self._service_of.pop(key, None)
        if service is None:
            return set()
        slices = self._by_service[service]
        slices.pop(key, None)
        if not slices:
            del self._by_service[service]
        return {service}

    def forget(self, key: SliceKey) -> set[ServiceKey]:
        """A slice deleted: its Service's change, and no memory of having ignored it."""
        self._ignored.discard(key)
        return self.remove(key)

    def replace(self, namespace: str, objects: Mapping[SliceKey, Object]) -> set[ServiceKey]:
        """A fresh list of ``namespace``'s slices; every Service of the namespace, before or now."""
        touched = set()
        for key in [k for k in self._service_of if k[0] == namespace]:
            touched |= self.remove(key)
        self._ignored -= {k for k in self._ignored if k[0] == namespace and k not in objects}
        for key, obj in objects.items():
            touched |= self.put(key, obj)
        return touched
