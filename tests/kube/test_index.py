"""The backend's indexes: a change re-decides what it touches, and ends where a full rebuild would; a model name
stays with its owner; only the EndpointSlice controller's slices count."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.backends.kubernetes import index
from gateway.backends.kubernetes.claims import (
    ROUTE_CONFLICT,
    ROUTE_NOT_ALLOWED,
    DeploymentRef,
    Route,
    RouteError,
    routes_of,
)
from gateway.backends.kubernetes.index import RouteTable, SliceIndex, ref_of
from gateway.backends.kubernetes.owners import Claim, Owner, Release, Write
from tests.kube.full_decision import build_routes
from tests.kube.manifests import model_deployment

pytestmark = pytest.mark.unit


def deployment(
    name: str, models: str, namespace: str = "default", created: str | None = None, **settings: str
) -> dict[str, Any]:
    found = model_deployment(name, models, 0, **settings)
    found["metadata"]["namespace"] = namespace
    if created is not None:
        found["metadata"]["creationTimestamp"] = created
    return found


def endpoint_slice(name: str, service: str, managed_by: str | None = index.SLICE_CONTROLLER) -> dict[str, Any]:
    labels = {index.SERVICE_NAME_LABEL: service}
    if managed_by is not None:
        labels[index.MANAGED_BY_LABEL] = managed_by
    return {"metadata": {"name": name, "namespace": "default", "labels": labels}}


def owners(table: RouteTable) -> dict[str, str]:
    return {m: str(r.deployment) for m, r in table.routes.items()}


def left_out(deployments: list[dict[str, Any]], owned: dict[str, DeploymentRef]) -> set[DeploymentRef]:
    return {error.deployment for error in build_routes(deployments, owned)[1]}


@pytest.mark.security
def test_a_model_claimed_twice_stays_with_its_owner_and_moves_when_it_leaves() -> None:
    """a sorts first and is older, yet b served ``shared`` first: b keeps it, a is refused; when b goes, a gets it."""
    table = RouteTable()
    table.put(deployment("b", "shared,b-only", created="2025-02-01T00:00:00Z"))
    change = table.put(deployment("a", "shared", created="2025-01-01T00:00:00Z"))

    assert owners(table) == {"shared": "default/b", "b-only": "default/b"}
    [error] = change.errors
    assert (error.deployment.name, error.kind, error.model) == ("a", ROUTE_CONFLICT, "shared")
    assert "served by default/b" in error.message
    assert change.models == set()

    change = table.remove(DeploymentRef("default", "b"))
    assert owners(table) == {"shared": "default/a"}
    assert change.served == {DeploymentRef("default", "a")} and change.models == {"shared", "b-only"}


@pytest.mark.security
def test_a_takeover_by_another_namespace_leaves_the_route() -> None:
    """The issue's case: dev/aaa names llama-70b, which models/llama serves."""
    table = RouteTable()
    table.put(deployment("llama", "llama-70b", namespace="models", created="2025-01-01T00:00:00Z"))

    change = table.put(deployment("aaa", "llama-70b", namespace="dev", created="2025-03-01T00:00:00Z"))

    assert owners(table) == {"llama-70b": "models/llama"}
    assert [(e.deployment, e.kind) for e in change.errors] == [(DeploymentRef("dev", "aaa"), ROUTE_CONFLICT)]
    # Dropping the name (here: an edit of the annotation) hands it on.
    change = table.put(deployment("llama", "llama-405b", namespace="models", created="2025-01-01T00:00:00Z"))
    assert owners(table) == {"llama-70b": "dev/aaa", "llama-405b": "models/llama"}
    assert change.served == {DeploymentRef("dev", "aaa"), DeploymentRef("models", "llama")}


@pytest.mark.security
def test_after_a_restart_the_oldest_claimant_wins() -> None:
    """A fresh table (a restarted gateway, or a new replica) sees the owner and a later claimant at once, in any
    order: the older one wins, whatever its name."""
    owner = deployment("llama", "llama-70b", namespace="models", created="2025-01-01T00:00:00Z")
    claimant = deployment("aaa", "llama-70b", namespace="dev", created="2025-03-01T00:00:00Z")
    for lists in (("dev", "models"), ("models", "dev")):
        table = RouteTable(keep_owners=False)
        by_namespace = {"dev": [claimant], "models": [owner]}
        for namespace in lists:
            table.replace(namespace, by_namespace[namespace])
        table.keep_owners()
        assert owners(table) == {"llama-70b": "models/llama"}, lists
    assert {m: str(r.deployment) for m, r in build_routes([claimant, owner])[0].items()} == {
        "llama-70b": "models/llama"
    }


@pytest.mark.security
def test_an_owner_that_claims_another_owners_name_is_refused() -> None:
    table = RouteTable()
    table.put(deployment("one", "a", created="2025-02-01T00:00:00Z"))
    table.put(deployment("two", "b", created="2025-01-01T00:00:00Z"))

    change = table.put(deployment("two", "a,b", created="2025-01-01T00:00:00Z"))  # older, but a has an owner

    assert owners(table) == {"a": "default/one"}
    assert [(e.deployment.name, e.model) for e in change.errors] == [("two", "a")]


@pytest.mark.security
def test_the_allow_list_refuses_every_other_claimant() -> None:
    table = RouteTable({"llama-70b": ("models/llama",), "qwen": ("team-q",)})
    change = table.put(deployment("aaa", "llama-70b", namespace="dev"))  # first, and nobody serves it yet
    assert owners(table) == {}
    [error] = change.errors
    assert (error.kind, error.model, error.deployment.name) == (ROUTE_NOT_ALLOWED, "llama-70b", "aaa")
    assert error.obj["metadata"]["name"] == "aaa"  # the Event points at the claimant

    table.put(deployment("llama", "llama-70b", namespace="models"))
    table.put(deployment("any", "qwen", namespace="team-q"))  # a namespace entry allows its every Deployment
    table.put(deployment("other", "unlisted", namespace="dev"))
    assert owners(table) == {"llama-70b": "models/llama", "qwen": "team-q/any", "unlisted": "dev/other"}


def test_a_chain_of_claims_is_decided_as_a_whole() -> None:
    """a takes x; b (x, y) is left out, so c (y) is served. Removing a frees x, but b still wants c's y and c keeps
    it: b stays out as a whole, x is served by nobody."""
    table = RouteTable()
    for d in (deployment("a", "x"), deployment("b", "x,y"), deployment("c", "y")):
        table.put(d)
    assert {m: r.deployment.name for m, r in table.routes.items()} == {"x": "a", "y": "c"}

    change = table.remove(DeploymentRef("default", "a"))

    assert {m: r.deployment.name for m, r in table.routes.items()} == {"y": "c"}
    assert [(e.deployment.name, e.model) for e in change.errors] == [("b", "y")]


@pytest.mark.security
def test_a_misspelled_annotation_leaves_the_deployment_out() -> None:
    found = routes_of(deployment("llama", "llama", max_replica="4"))

    assert isinstance(found, RouteError)
    assert found.annotation == "kaltstart.dev/max-replica"
    assert "did you mean kaltstart.dev/max-replicas?" in found.message
    assert not isinstance(routes_of(deployment("llama", "llama", max_replicas="4", service="s", port="80")), RouteError)


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


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("seed", range(20))
def test_any_sequence_of_changes_ends_where_build_routes_does(seed: int, keep: bool) -> None:
    """Random puts, removals and re-lists over a few shared names agree after every step with a full rebuild
    given the owners before it (or none, before ``keep_owners``)."""
    rng = random.Random(seed)
    names = ["p", "q", "r", "s", "t"]
    table = RouteTable(keep_owners=keep)
    current: dict[str, dict[str, Any]] = {}
    for _ in range(60):
        name = f"d{rng.randrange(8)}"
        action = rng.random()
        owned = {m: r.deployment for m, r in table.routes.items()} if keep else {}
        if action < 0.55:
            models = ",".join(rng.sample(names, rng.randint(1, 2)))
            created = f"2025-01-0{rng.randrange(1, 4)}T00:00:00Z"
            if name in current:  # a Deployment's creationTimestamp never changes
                created = current[name]["metadata"]["creationTimestamp"]
            current[name] = deployment(name, models, created=created, idle_timeout=rng.choice(["30s", "60s", "soon"]))
            table.put(current[name])
        elif action < 0.85:
            current.pop(name, None)
            table.remove(DeploymentRef("default", name))
        else:
            table.replace("default", list(current.values()))
        expected, _ = build_routes(list(current.values()), owned)
        assert table.routes == expected
        served = {r.deployment for r in table.routes.values()}
        assert {ref_of(d) for d in current.values()} - served == left_out(list(current.values()), owned)
        for model, route in expected.items():
            assert model in table.models_of((route.deployment.namespace, route.service))


def owner_of(found: dict[str, Any]) -> Owner:
    return Owner(ref_of(found), found["metadata"]["uid"])


def with_uid(found: dict[str, Any], uid: str) -> dict[str, Any]:
    found["metadata"]["uid"] = uid
    return found


@pytest.mark.security
def test_a_recorded_owner_is_kept_over_an_older_claimant_from_the_first_list() -> None:
    """A restarted gateway (a fresh table) with the records: the recorded owner, not the older claimant; without
    them (Redis unreadable at start) the older one, until ``reconcile`` hands the name to the recorded owner."""
    owner = with_uid(deployment("llama", "llama-70b", namespace="models", created="2025-03-01T00:00:00Z"), "u1")
    older = with_uid(deployment("aaa", "llama-70b", namespace="dev", created="2025-01-01T00:00:00Z"), "u2")
    for lists in (("dev", "models"), ("models", "dev")):
        table = RouteTable(keep_owners=False)
        table.load({"llama-70b": owner_of(owner)})
        for namespace in lists:
            table.replace(namespace, [{"dev": older, "models": owner}[namespace]])
        assert table.keep_owners().writes == []
        assert owners(table) == {"llama-70b": "models/llama"}, lists

    table = RouteTable(keep_owners=False)
    table.replace("dev", [older])
    table.replace("models", [owner])
    assert table.keep_owners().writes == []
    assert owners(table) == {"llama-70b": "dev/aaa"}
    change = table.reconcile({"llama-70b": owner_of(owner)})
    assert owners(table) == {"llama-70b": "models/llama"} and change.models == {"llama-70b"}
    assert [(e.deployment.name, e.kind) for e in change.errors] == [("aaa", ROUTE_CONFLICT)]
    assert change.writes == []


@pytest.mark.security
def test_the_records_follow_the_owner_and_pass_to_the_next_claimant() -> None:
    table = RouteTable()
    table.load({"stale": Owner(DeploymentRef("gone", "x"), "u0")})  # its owner was deleted while no gateway ran
    owner = with_uid(deployment("b", "shared", created="2025-02-01T00:00:00Z"), "ub")
    table.put(owner)
    assert table.keep_owners().writes == [
        Claim("shared", owner_of(owner)),
        Release("stale", Owner(DeploymentRef("gone", "x"), "u0")),
    ]

    older = with_uid(deployment("a", "shared", created="2025-01-01T00:00:00Z"), "ua")
    assert table.put(older).writes == []  # refused: the record stays

    change = table.remove(ref_of(owner))
    assert owners(table) == {"shared": "default/a"}
    assert change.writes == [Release("shared", owner_of(owner)), Claim("shared", owner_of(older))]
    assert table.records == {"shared": owner_of(older)}


@pytest.mark.security
def test_a_recreated_deployment_is_a_new_claimant() -> None:
    """The record names the object (its uid): the same name created again does not inherit it, also when a
    re-list is the first the table hears of it."""
    owner = with_uid(deployment("b", "shared", created="2025-02-01T00:00:00Z"), "ub1")
    older = with_uid(deployment("a", "shared", created="2025-01-01T00:00:00Z"), "ua")
    table = RouteTable()
    table.load({})
    table.replace("default", [owner])
    table.keep_owners()
    table.put(older)
    assert owners(table) == {"shared": "default/b"}

    again = with_uid(deployment("b", "shared", created="2025-04-01T00:00:00Z"), "ub2")
    change = table.replace("default", [again, older])

    assert owners(table) == {"shared": "default/a"}
    assert change.writes == [Release("shared", owner_of(owner)), Claim("shared", owner_of(older))]


@pytest.mark.security
def test_a_lost_claim_is_taken_up_when_its_owner_claims_here_too() -> None:
    mine = with_uid(deployment("y", "shared", created="2025-03-01T00:00:00Z"), "uy")
    theirs = with_uid(deployment("z", "shared", namespace="dev", created="2025-01-01T00:00:00Z"), "uz")
    table = RouteTable()
    table.load({})
    table.put(mine)
    [claim] = table.keep_owners().writes

    change = table.adopt("shared", owner_of(theirs), claim.owner)  # another gateway recorded dev/z first
    assert owners(table) == {"shared": "default/y"} and change.writes == []  # dev/z claims nothing here yet
    # An edit of mine neither releases that record nor claims the name again.
    edited = with_uid(deployment("y", "shared,other", created="2025-03-01T00:00:00Z"), "uy")
    assert table.put(edited).writes == [Claim("other", owner_of(edited))]

    change = table.put(theirs)
    assert owners(table) == {"shared": "dev/z"}
    assert [(e.deployment.name, e.kind) for e in change.errors] == [("y", ROUTE_CONFLICT)]
    assert change.writes == [Release("other", owner_of(edited))]


@pytest.mark.parametrize("seed", range(20))
def test_the_records_always_name_the_owners_served(seed: int) -> None:
    """Random puts, removals (and re-creations: a new uid) and re-lists: the writes, applied as Redis applies them,
    leave a record for every name served, naming its owner, and none for a name nobody serves."""
    rng = random.Random(seed)
    table = RouteTable()
    table.load({})
    table.keep_owners()
    redis: dict[str, Owner] = {}
    current: dict[str, dict[str, Any]] = {}
    for step in range(60):
        name, action = f"d{rng.randrange(8)}", rng.random()
        if action < 0.55:
            models = ",".join(rng.sample(["p", "q", "r", "s", "t"], rng.randint(1, 2)))
            old = current.get(name)
            created = old["metadata"]["creationTimestamp"] if old else f"2025-01-0{rng.randrange(1, 4)}T00:00:00Z"
            current[name] = with_uid(
                deployment(name, models, created=created), old["metadata"]["uid"] if old else f"u{step}"
            )
            change = table.put(current[name])
        elif action < 0.85:
            current.pop(name, None)
            change = table.remove(DeploymentRef("default", name))
        else:
            change = table.replace("default", list(current.values()))
        apply(redis, change.writes)
        assert redis == {m: owner_of(current[r.deployment.name]) for m, r in table.routes.items()}
        assert table.records == redis


def apply(redis: dict[str, Owner], writes: list[Write]) -> None:
    """The writes as ``owners.RedisOwners`` applies them."""
    for write in writes:
        if isinstance(write, Claim):
            redis.setdefault(write.model, write.owner)
        elif redis.get(write.model) == write.owner:
            del redis[write.model]


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


@pytest.mark.security
def test_slices_not_managed_by_the_endpointslice_controller_are_ignored() -> None:
    ignored: list[tuple[str, str]] = []
    slices = SliceIndex(lambda key, obj: ignored.append(key))

    assert slices.put(("default", "forged"), endpoint_slice("forged", "llama", managed_by=None)) == set()
    assert slices.put(("default", "forged"), endpoint_slice("forged", "llama", managed_by="me")) == set()
    assert slices.put(("default", "real"), endpoint_slice("real", "llama")) == {("default", "llama")}

    assert [s["metadata"]["name"] for s in slices.of(("default", "llama"))] == ["real"]
    assert ignored == [("default", "forged")]  # told once, not on every update
    slices.forget(("default", "forged"))
    slices.put(("default", "forged"), endpoint_slice("forged", "llama", managed_by=None))
    assert ignored == [("default", "forged")] * 2


def test_a_pool_deployment_serves_distinct_models_and_its_flag_is_checked() -> None:
    found = routes_of(deployment("small", "a,b,c", pool="true"))
    assert not isinstance(found, RouteError)
    assert [(r.model.name, r.pool) for r in found] == [("a", True), ("b", True), ("c", True)]
    one = routes_of(deployment("llama", "llama,llama-3"))
    assert not isinstance(one, RouteError) and not any(r.pool for r in one)  # names of one model
    refused = routes_of(deployment("small", "a,b,c", pool="yes"))
    assert isinstance(refused, RouteError) and refused.annotation == "kaltstart.dev/pool"
