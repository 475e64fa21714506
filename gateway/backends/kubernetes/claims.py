"""Model routes from Deployment annotations, and who owns a model name two Deployments claim.

A Deployment labelled ``kaltstart.dev/enabled: "true"`` serves the models named in ``kaltstart.dev/models``
(names of one model, or with ``kaltstart.dev/pool: "true"`` distinct models of one pool runtime); its other
``kaltstart.dev/<setting>`` annotations use the setting names of the local config file and are parsed by the same
function. ``kaltstart.dev/adapters: "support-bot=org/support-lora,legal=/cache/legal"`` names LoRA adapters served
by the Deployment's replicas as models of their own (its first model is their base; each adapter's route is the
Deployment's, with the base's settings), so their names are claimed, decided and refused exactly like model names.
A Deployment whose annotations cannot be used (an invalid value, or a ``kaltstart.dev/``
key that is no setting, such as ``max-replica``) yields a ``RouteError`` naming the annotation, and is left out;
the other Deployments are unaffected.

Ownership is sticky (``decide``): a model name stays with the Deployment that serves it for as long as that
Deployment claims it; another claimant is refused (``RouteError`` of kind ``ROUTE_CONFLICT``), never served.
Names nobody serves yet go to the oldest claimant (``claim_order``: creationTimestamp, then namespace/name), a rule
every gateway replica reaches alike, and that a Deployment created later cannot win; the owners so far come from
the records in Redis (``owners``), so an older Deployment that claims a served name later does not win after a
restart either. An optional allow-list (model name -> namespaces or namespace/Deployment) refuses any other claim
of a listed name.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError
from gateway.settings import Adapter, ModelSettings, check_model_name

PREFIX = "kaltstart.dev/"
ENABLED_LABEL = f"{PREFIX}enabled"
LABEL_SELECTOR = f"{ENABLED_LABEL}=true"
MODELS = f"{PREFIX}models"
SERVICE = f"{PREFIX}service"
PORT = f"{PREFIX}port"
POOL = f"{PREFIX}pool"
ADAPTERS = f"{PREFIX}adapters"
#: The ``kaltstart.dev/`` annotation keys the gateway reads (``enabled`` is the label, tolerated as an annotation).
KNOWN_KEYS = frozenset({"models", "service", "port", "pool", "adapters", "enabled", *ModelSettings.keys()})
#: Most adapters one Deployment may name (a runtime holds ``--max-adapters`` of them on its device at once; more
#: than this many belong in a ConfigMap, not an annotation).
MAX_ADAPTERS = 256

#: The Event reasons (and, lower-cased, the metric's ``reason`` label) of a Deployment left out.
INVALID_ANNOTATION = "InvalidAnnotation"
ROUTE_CONFLICT = "RouteConflict"
ROUTE_NOT_ALLOWED = "RouteNotAllowed"

#: Model name -> the namespaces (``ns``) or Deployments (``ns/name``) allowed to serve it.
AllowList = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class DeploymentRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Route:
    """Where a model's replicas are: the Deployment to scale, the Service whose EndpointSlices list them."""

    model: ModelSettings
    deployment: DeploymentRef
    service: str
    #: The EndpointSlice port to send batches to: a port name, or a number.
    port: str
    #: ``kaltstart.dev/pool: "true"``: the Deployment's names are distinct models of a pool runtime
    #: (``python -m runtime --pool``), each active, parked or absent on each replica; else names of one model.
    pool: bool = False


@dataclass(frozen=True)
class RouteError:
    deployment: DeploymentRef
    annotation: str
    reason: str
    #: The Deployment as read, so an Event can point at it (uid, resourceVersion).
    obj: Mapping[str, Any]
    #: The Event's reason: ``INVALID_ANNOTATION``, or ``ROUTE_CONFLICT``/``ROUTE_NOT_ALLOWED`` for a refused claim.
    kind: str = INVALID_ANNOTATION
    #: The model name a refused claim was for (the metric's label); None for an invalid annotation.
    model: str | None = None

    @property
    def message(self) -> str:
        return f"annotation {self.annotation}: {self.reason}; the Deployment's models are not served"


def routes_of(deployment: Mapping[str, Any]) -> list[Route] | RouteError:
    meta = deployment.get("metadata") or {}
    ref = DeploymentRef(meta.get("namespace", ""), meta.get("name", ""))
    annotations: Mapping[str, str] = meta.get("annotations") or {}

    def error(annotation: str, reason: str) -> RouteError:
        return RouteError(ref, annotation, reason, deployment)

    names = [n.strip() for n in annotations.get(MODELS, "").split(",") if n.strip()]
    if not names:
        return error(MODELS, "required: a comma-separated list of model names")
    try:
        for name in names:
            check_model_name(name)
    except ConfigError as exc:
        return error(MODELS, str(exc))
    if len(set(names)) != len(names):
        return error(MODELS, "a model is listed twice")
    unknown = sorted(
        key for key in annotations if key.startswith(PREFIX) and key.removeprefix(PREFIX) not in KNOWN_KEYS
    )
    if unknown:
        return error(unknown[0], _unknown_key(unknown[0].removeprefix(PREFIX)))
    settings = {key.removeprefix(PREFIX): value for key, value in annotations.items() if key.startswith(PREFIX)}
    try:
        models = [ModelSettings.parse(name, settings) for name in names]
    except ConfigError as exc:
        return error(PREFIX + (exc.key or "?"), str(exc).split(": ", 1)[-1])
    pool = annotations.get(POOL, "false").strip().lower()
    if pool not in ("true", "false"):
        return error(POOL, 'must be "true" or "false"')
    port = annotations.get(PORT, "http").strip()
    if not port:
        return error(PORT, "must not be empty")
    service = annotations.get(SERVICE, ref.name).strip() or ref.name
    adapters = _adapters(annotations.get(ADAPTERS, ""), models[0], pooled=pool == "true", taken=set(names))
    if isinstance(adapters, str):
        return error(ADAPTERS, adapters)
    return [Route(model, ref, service, port, pool=pool == "true") for model in [*models, *adapters]]


def _adapters(text: str, base: ModelSettings, *, pooled: bool, taken: set[str]) -> list[ModelSettings] | str:
    """The adapters ``kaltstart.dev/adapters`` names (``name=source`` entries, comma-separated) as models on
    ``base`` with its settings, or why the annotation cannot be used."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        return []
    if pooled or base.forwards:
        return "adapters need one base model served by our runtime (not a pool, not protocol openai)"
    if len(entries) > MAX_ADAPTERS:
        return f"at most {MAX_ADAPTERS} adapters per Deployment, got {len(entries)}"
    adapters = []
    for entry in entries:
        name, equals, source = (part.strip() for part in entry.partition("="))
        if not equals:
            return f"{entry[:140]!r}: an entry is name=source"
        try:
            adapter = Adapter.parse(base.name, source)
            check_model_name(name)
        except ConfigError as exc:
            return str(exc)
        if name in taken:
            return f"{name!r} is named twice (an adapter needs a name of its own)"
        taken.add(name)
        adapters.append(dataclasses.replace(base, name=name, adapter=adapter))
    return adapters


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
    hint = f"did you mean {PREFIX}{close[0]}?" if close else f"known: {', '.join(sorted(KNOWN_KEYS))}"
    return f"unknown setting ({hint})"


def check_allowed(
    found: list[Route] | RouteError, allow: AllowList, deployment: Mapping[str, Any]
) -> list[Route] | RouteError:
    """``found`` (``deployment``'s routes), or a ``RouteError`` if it claims a model of the allow-list that its
    Deployment may not serve."""
    if isinstance(found, RouteError):
        return found
    for route in found:
        entries = allow.get(route.model.name)
        ref = route.deployment
        if entries is not None and ref.namespace not in entries and str(ref) not in entries:
            reason = f"model {route.model.name!r} may be served only by {', '.join(entries)} (routeAllowList)"
            return RouteError(ref, MODELS, reason, deployment, ROUTE_NOT_ALLOWED, route.model.name)
    return found


def claim_order(deployment: Mapping[str, Any]) -> tuple[str, str, str]:
    """Which of two claimants of an unowned name gets it: the older Deployment (``creationTimestamp`` is RFC 3339
    in UTC, so it sorts as text; the server sets it, a client cannot), then namespace/name. One without a timestamp
    counts as the newest."""
    meta = deployment.get("metadata") or {}
    return meta.get("creationTimestamp") or "~", meta.get("namespace", ""), meta.get("name", "")


#: A refused claimant -> (the model name it lost, the Deployment that serves it).
Refusals = dict[DeploymentRef, tuple[str, DeploymentRef]]


def decide(
    claims: Mapping[DeploymentRef, Sequence[Route]],
    order: Callable[[DeploymentRef], Any],
    owners: Mapping[str, DeploymentRef],
) -> tuple[dict[str, Route], Refusals]:
    """Routes by model name for these valid claims, given each name's owner so far (``owners``; empty after a
    restart). A Deployment is served with all its names or refused as a whole.

    An owner that still claims its names keeps them; one that now also claims another owner's name is refused
    (and its own names go to the next claimant). Then the owners that are left are served first, and the other
    claimants in ``order``: each one whose names are all still free. Should an owner lose a new name that way, it is
    refused as well and the decision starts over without it, so the outcome never depends on what came first
    within one decision, and deciding again with its result as ``owners`` gives the same result.
    """
    names = {ref: {r.model.name for r in routes} for ref, routes in claims.items()}
    losers: set[DeploymentRef] = set()
    while True:
        held = {n: o for n, o in owners.items() if o in claims and o not in losers and n in names[o]}
        incumbents = set(held.values())
        grabbing = {o for o in incumbents if any(held.get(n, o) != o for n in names[o])}
        if grabbing:
            losers |= grabbing
            continue
        routes, refused = _first_come(claims, sorted(claims, key=lambda r: (r not in incumbents, order(r))))
        late = incumbents & refused.keys()
        if not late:
            return routes, refused
        losers |= late


def _first_come(
    claims: Mapping[DeploymentRef, Sequence[Route]], ordered: list[DeploymentRef]
) -> tuple[dict[str, Route], Refusals]:
    routes: dict[str, Route] = {}
    refused: Refusals = {}
    for ref in ordered:
        taken = next((r.model.name for r in claims[ref] if r.model.name in routes), None)
        if taken is not None:
            refused[ref] = (taken, routes[taken].deployment)
            continue
        routes.update({r.model.name: r for r in claims[ref]})
    return routes, refused


def conflict(ref: DeploymentRef, refusal: tuple[str, DeploymentRef], obj: Mapping[str, Any]) -> RouteError:
    model, owner = refusal
    return RouteError(ref, MODELS, f"model {model!r} is served by {owner}", obj, ROUTE_CONFLICT, model)


def ref_of(obj: Mapping[str, Any]) -> DeploymentRef:
    meta = obj.get("metadata") or {}
    return DeploymentRef(meta.get("namespace", ""), meta.get("name", ""))
