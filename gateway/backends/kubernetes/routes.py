"""Model routes from Deployment annotations.

A Deployment labelled ``kaltstart.dev/enabled: "true"`` serves the models named in ``kaltstart.dev/models``;
its other ``kaltstart.dev/<setting>`` annotations use the setting names of the local config file and are parsed
by the same function. A Deployment whose annotations cannot be used yields a ``RouteError`` naming the
annotation, and is left out; the other Deployments are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError
from gateway.settings import ModelSettings, check_model_name

PREFIX = "kaltstart.dev/"
ENABLED_LABEL = f"{PREFIX}enabled"
LABEL_SELECTOR = f"{ENABLED_LABEL}=true"
MODELS = f"{PREFIX}models"
SERVICE = f"{PREFIX}service"
PORT = f"{PREFIX}port"


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


@dataclass(frozen=True)
class RouteError:
    deployment: DeploymentRef
    annotation: str
    reason: str
    #: The Deployment as read, so an Event can point at it (uid, resourceVersion).
    obj: Mapping[str, Any]

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
    settings = {key.removeprefix(PREFIX): value for key, value in annotations.items() if key.startswith(PREFIX)}
    try:
        models = [ModelSettings.parse(name, settings) for name in names]
    except ConfigError as exc:
        return error(PREFIX + (exc.key or "?"), str(exc).split(": ", 1)[-1])
    port = annotations.get(PORT, "http").strip()
    if not port:
        return error(PORT, "must not be empty")
    service = annotations.get(SERVICE, ref.name).strip() or ref.name
    return [Route(model, ref, service, port) for model in models]


def build_routes(deployments: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Route], list[RouteError]]:
    """Routes by model name. A model claimed by two Deployments goes to the first by namespace/name; the
    other gets an error."""
    routes: dict[str, Route] = {}
    errors: list[RouteError] = []
    ordered = sorted(deployments, key=lambda d: (d["metadata"].get("namespace", ""), d["metadata"]["name"]))
    for deployment in ordered:
        found = routes_of(deployment)
        if isinstance(found, RouteError):
            errors.append(found)
            continue
        taken = [r.model.name for r in found if r.model.name in routes]
        if taken:
            owner = routes[taken[0]].deployment
            errors.append(
                RouteError(found[0].deployment, MODELS, f"model {taken[0]!r} is served by {owner}", deployment)
            )
            continue
        routes.update({r.model.name: r for r in found})
    return routes, errors
