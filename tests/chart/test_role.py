"""The chart's Role grants exactly the calls the gateway makes: the gateway's Kubernetes backend runs against the
API double through discovery, a scale from zero, the idle scale-down (as the leader, through its Lease) and an
Event on a Deployment with a bad annotation, and the (API group, resource, verb) of every request it sent are
compared with the rules the chart renders. A verb the Role grants and the gateway never uses, or one it uses and
the Role lacks, fails here."""

from __future__ import annotations

from pathlib import Path

import helm_python
import httpx
import pytest

from tests.chart.rendering import render
from tests.harness import run_kubernetes_gateway
from tests.kube.double import ApiDouble
from tests.kube.manifests import model_deployment, runtime_pods

pytestmark = [pytest.mark.chart, pytest.mark.kubernetes]

Call = tuple[str, str, str]  # (API group, resource[/subresource], verb)


def _granted(chart: helm_python.Chart) -> set[Call]:
    """What the Role in a served namespace and the Lease Role in the release namespace grant together (the test's
    gateway serves the one namespace its Lease is in)."""
    return {
        (group, resource, verb)
        for role in render(chart).of_kind("Role")
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _calls(api: ApiDouble) -> set[Call]:
    """What the requests the double served asked for, named as RBAC names them."""
    calls = set()
    for request in api.requests:
        parts = request.path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        calls.add((group, request.resource, request.verb))
    return calls


async def test_the_role_grants_exactly_what_the_gateway_calls(
    chart: helm_python.Chart, api_double: ApiDouble, kubeconfig: Path, redis_url: str, tmp_path: Path
) -> None:
    granted = _granted(chart)
    api_double.kubelet.command_for = runtime_pods(tmp_path / "cache")
    api_double.create(model_deployment("tiny", "tiny", idle_timeout="1s"))
    api_double.create(model_deployment("bad", "bad", idle_timeout="soon"))  # an Event reports it

    def scaled_back() -> bool:
        writes = api_double.requests_for("update", "deployments/scale", "tiny")
        return len(writes) >= 2 and writes[-1].body["spec"].get("replicas", 0) == 0

    async with (
        run_kubernetes_gateway(kubeconfig, redis_url, scale_interval_s=0.1) as gw,
        httpx.AsyncClient(timeout=60) as http,
    ):
        body = {"model": "tiny", "prompt": "hello role", "max_tokens": 4, "temperature": 0}
        assert (await http.post(gw.url + "/v1/completions", json=body)).status_code == 200
        await api_double.wait_for(scaled_back, 20, "the idle model scaled back to 0 by the leader")
        await api_double.wait_for(lambda: granted <= _calls(api_double), 20, "every granted call to be made")
    events = api_double.objects("v1", "Event", "default")
    assert [e["involvedObject"]["name"] for e in events] == ["bad"]
    assert _calls(api_double) == granted
    # The Lease Role's get/update are limited to its name: the gateway touches no other Lease.
    named = {r.name for r in api_double.requests if r.resource == "leases" and r.verb in ("get", "update")}
    assert named == {"kaltstart-gateway"}
