"""LoRA adapters named on a base Deployment (``kaltstart.dev/adapters``): routes of their own to the base's
Deployment, with the base's settings; a bad annotation leaves the Deployment out (InvalidAnnotation); adapter names
are claimed and refused by the same ownership rules as model names."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backends.kubernetes.claims import ADAPTERS, INVALID_ANNOTATION, ROUTE_CONFLICT, RouteError, routes_of
from gateway.backends.kubernetes.index import RouteTable
from gateway.settings import Adapter
from tests.kube.manifests import model_deployment

pytestmark = pytest.mark.unit


def deployment(name: str, models: str, created: str = "2025-01-01T00:00:00Z", **settings: str) -> dict[str, Any]:
    found = model_deployment(name, models, 0, **settings)
    found["metadata"]["creationTimestamp"] = created
    return found


def test_adapters_are_routes_to_the_base_deployment_with_the_base_settings() -> None:
    found = routes_of(
        deployment("qwen", "qwen", idle_timeout="7s", adapters="support-bot=org/support-lora, legal=/c/l")
    )
    assert not isinstance(found, RouteError)
    assert [(r.model.name, str(r.deployment), r.service, r.model.adapter) for r in found] == [
        ("qwen", "default/qwen", "qwen", None),
        ("support-bot", "default/qwen", "qwen", Adapter(base="qwen", source="org/support-lora")),
        ("legal", "default/qwen", "qwen", Adapter(base="qwen", source="/c/l")),
    ]
    assert {r.model.idle_timeout_s for r in found} == {7.0}


@pytest.mark.parametrize(
    ("annotations", "reason"),
    [
        ({"adapters": "support-bot"}, "an entry is name=source"),
        ({"adapters": "support bot=org/x"}, "invalid model name"),
        ({"adapters": "a=org/x,a=org/y"}, "'a' is named twice"),
        ({"adapters": "qwen=org/x"}, "'qwen' is named twice"),
        ({"adapters": "a="}, "a directory or a hub id"),
        ({"adapters": "a=org/x", "pool": "true"}, "not a pool"),
        ({"adapters": "a=org/x", "protocol": "openai"}, "not protocol openai"),
        ({"adapters": ",".join(f"a{i}=org/x" for i in range(257))}, "at most 256 adapters"),
    ],
)
def test_an_adapters_annotation_that_cannot_be_used_leaves_the_deployment_out(
    annotations: dict[str, str], reason: str
) -> None:
    found = routes_of(deployment("qwen", "qwen", **annotations))
    assert isinstance(found, RouteError)
    assert (found.annotation, found.kind) == (ADAPTERS, INVALID_ANNOTATION) and reason in found.message


@pytest.mark.security
def test_an_adapter_name_served_by_another_deployment_refuses_the_claimant_as_a_whole() -> None:
    """An adapter name is a model name: its owner keeps it, a later claimant is refused with all its names (base
    and adapters), like any claim of a served name."""
    table = RouteTable()
    table.put(deployment("other", "support-bot", created="2025-02-01T00:00:00Z"))
    change = table.put(deployment("qwen", "qwen", adapters="support-bot=org/support-lora"))
    [error] = change.errors
    assert (error.deployment.name, error.kind, error.model) == ("qwen", ROUTE_CONFLICT, "support-bot")
    assert set(table.routes) == {"support-bot"} and table.routes["support-bot"].model.adapter is None
    change = table.put(deployment("qwen", "qwen", adapters="helper=org/support-lora"))  # renamed: served
    assert set(table.routes) == {"support-bot", "qwen", "helper"}
    assert str(table.routes["helper"].deployment) == "default/qwen"
