"""The full decision over all Deployments at once: the oracle that ``RouteTable``'s incremental decisions are
tested against (``tests/kube/test_index.py``), and the check that the chart's models all parse
(``tests/chart/test_gateway_contract.py``). The gateway itself never decides over all Deployments at once
(``gateway.backends.kubernetes.index``: an event re-decides only the Deployments it touches)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def build_routes(
    deployments: Iterable[Mapping[str, Any]],
    owners: Mapping[str, DeploymentRef] | None = None,
    allow: AllowList | None = None,
) -> tuple[dict[str, Route], list[RouteError]]:
    """Routes by model name over all ``deployments`` at once (``decide``'s rule, given the ``owners`` so far);
    the Deployments left out, with why."""
    objects = {ref_of(d): d for d in deployments}
    claims: dict[DeploymentRef, list[Route]] = {}
    errors: list[RouteError] = []
    for ref, deployment in objects.items():
        found = check_allowed(routes_of(deployment), allow or {}, deployment)
        if isinstance(found, RouteError):
            errors.append(found)
        else:
            claims[ref] = found
    routes, refused = decide(claims, lambda r: claim_order(objects[r]), owners or {})
    errors += [conflict(ref, refusal, objects[ref]) for ref, refusal in refused.items()]
    return routes, errors
