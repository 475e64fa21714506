"""The backend's indexes: a change re-decides what it touches, and ends where a full rebuild would."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.backends.kubernetes import index
from gateway.backends.kubernetes.index import RouteTable, SliceIndex, ref_of
from gateway.backends.kubernetes.routes import DeploymentRef, Route, RouteError, build_routes, routes_of
from tests.kube.manifests import model_deployment

pytestmark = pytest.mark.unit


def deployment(name: str, models: str, namespace: str = "default", **settings: str) -> dict[str, Any]:
    found = model_deployment(name, models, 0, **settings)
    found["metadata"]["namespace"] = namespace
    return found


def endpoint_slice(name: str, service: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "labels": {index.SERVICE_NAME_LABEL: service}}}


def left_out(deployments: list[dict[str, Any]]) -> set[DeploymentRef]:
    return {error.deployment for error in build_routes(deployments)[1]}


def test_a_model_claimed_twice_goes_to_the_first_and_moves_when_it_leaves() -> None:
    table = RouteTable()
    table.put(deployment("b", "shared,b-only"))
    change = table.put(deployment("a", "shared"))

    assert table.routes["shared"].deployment == DeploymentRef("default", "a")
    assert "b-only" not in table.routes  # b is left out as a whole, as build_routes does
    assert [e.deployment.name for e in change.errors] == ["b"]
    assert change.models == {"shared", "b-only"}

    change = table.remove(DeploymentRef("default", "a"))
    assert table.routes["shared"].deployment == DeploymentRef("default", "b")
    assert change.served == {DeploymentRef("default", "b")} and change.models == {"shared", "b-only"}


def test_a_chain_of_claims_is_decided_as_a_whole() -> None:
    """a takes x; b (x, y) is left out, so c (y) is served: removing a serves b, which then leaves c out."""
    table = RouteTable()
    for d in (deployment("a", "x"), deployment("b", "x,y"), deployment("c", "y")):
        table.put(d)
    assert {m: r.deployment.name for m, r in table.routes.items()} == {"x": "a", "y": "c"}

    change = table.remove(DeploymentRef("default", "a"))

    assert {m: r.deployment.name for m, r in table.routes.items()} == {"x": "b", "y": "b"}
    assert [e.deployment.name for e in change.errors] == ["c"]


def counting_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the Deployments the table parses from now on."""
    parsed: list[str] = []

    def spy(deployment: dict[str, Any]) -> list[Route] | RouteError:
        parsed.append(ref_of(deployment).name)
        return routes_of(deployment)

    monkeypatch.setattr(index, "routes_of", spy)
    return parsed


def test_a_status_update_parses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    table, parsed = RouteTable(), counting_parses(monkeypatch)
    table.put(deployment("a", "x"))
    updated = deployment("a", "x")
    updated["status"] = {"readyReplicas": 1}

    assert table.put(updated).models == set()
    assert len(parsed) == 1


def test_an_edit_parses_only_its_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    table = RouteTable()
    table.replace("default", [deployment(f"d{i}", f"m{i}") for i in range(500)])
    parsed = counting_parses(monkeypatch)

    change = table.put(deployment("d7", "m7,extra", max_batch_size="4"))

    assert parsed == ["d7"]
    assert change.models == {"m7", "extra"}
    assert table.routes["m7"].model.max_batch_size == 4
    assert table.models_of(("default", "d7")) == {"m7", "extra"}


@pytest.mark.parametrize("seed", range(20))
def test_any_sequence_of_changes_ends_where_build_routes_does(seed: int) -> None:
    """Random puts, removals and re-lists over a few shared names agree with a full rebuild after every step."""
    rng = random.Random(seed)
    names = ["p", "q", "r", "s", "t"]
    table, current = RouteTable(), {}
    for _ in range(60):
        name = f"d{rng.randrange(8)}"
        action = rng.random()
        if action < 0.55:
            models = ",".join(rng.sample(names, rng.randint(1, 2)))
            current[name] = deployment(name, models, idle_timeout=rng.choice(["30s", "60s", "soon"]))
            table.put(current[name])
        elif action < 0.85:
            current.pop(name, None)
            table.remove(DeploymentRef("default", name))
        else:
            table.replace("default", list(current.values()))
        expected, _ = build_routes(list(current.values()))
        assert table.routes == expected
        served = {r.deployment for r in table.routes.values()}
        assert {ref_of(d) for d in current.values()} - served == left_out(list(current.values()))
        for model, route in expected.items():
            assert model in table.models_of((route.deployment.namespace, route.service))


def test_slices_are_indexed_by_service() -> None:
    slices = SliceIndex()
    assert slices.put(("default", "s1"), endpoint_slice("s1", "llama")) == {("default", "llama")}
    slices.put(("default", "s2"), endpoint_slice("s2", "qwen"))

    moved = slices.put(("default", "s1"), endpoint_slice("s1", "qwen"))  # its label changed

    assert moved == {("default", "llama"), ("default", "qwen")}
    assert [s["metadata"]["name"] for s in slices.of(("default", "qwen"))] == ["s2", "s1"]
    assert slices.remove(("default", "s2")) == {("default", "qwen")}
    assert slices.replace("default", {}) == {("default", "qwen")}
    assert list(slices.of(("default", "qwen"))) == []
