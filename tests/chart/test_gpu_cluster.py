"""The chart as an operator of a GPU cluster reads it, every option on: upgrades that restart nothing about a model
that did not change and never ask for a spare GPU, renders that GitOps can repeat, pods a ResourceQuota admits,
and the smaller things (spread gateways, no GPUs in prefetch pods, pinned images, a headless Service, probes and
deadlines consistent with the cold-start timeout, a bounded /dev/shm)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from gateway.backends.kubernetes.claims import RouteError, routes_of
from tests.chart.rendering import (
    CHART_DIR,
    NAMESPACE,
    NEXT_CHART_LABEL,
    RELEASE,
    Manifest,
    Rendered,
    load_values,
    render,
)

pytestmark = pytest.mark.chart

TWO_MODELS = load_values(CHART_DIR / "ci" / "two-models-values.yaml")
#: Three models (one on a MIG slice, one with a long cold-start timeout), prefetch, ServiceMonitor, dashboard.
EVERYTHING: dict[str, Any] = {
    **TWO_MODELS,
    "models": [
        *TWO_MODELS["models"],
        {"name": "phi-3-mini", "source": "microsoft/Phi-3-mini-4k-instruct", "coldStartTimeout": "25m"},
    ],
    "prefetch": {"enabled": True},
    "monitoring": {"serviceMonitor": {"enabled": True}, "dashboard": {"enabled": True}},
}
EXTERNAL_REDIS: dict[str, Any] = {
    **EVERYTHING,
    "redis": {"existingSecret": "redis-url", "announceExistingSecret": "redis-url", "announceExistingSecretKey": "pub"},
}
#: What docs/helm.md recommends under GitOps: every Secret your own.
GITOPS: dict[str, Any] = {
    **EVERYTHING,
    "redis": {"auth": {"existingSecret": "kaltstart-redis"}},
    "gateway": {"apiKeys": {"existingSecret": "kaltstart-keys"}},
    "runtime": {**EVERYTHING.get("runtime", {}), "token": {"existingSecret": "kaltstart-runtime-token"}},
}


def _models(rendered: Rendered) -> list[Manifest]:
    return [d for d in rendered.of_kind("Deployment") if d["metadata"]["labels"].get("kaltstart.dev/enabled")]


def _containers(pod: Manifest) -> list[Manifest]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _env(container: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container.get("env", [])}


def _seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(s|m|h)", duration).groups()  # type: ignore[union-attr]
    return int(value) * {"s": 1, "m": 60, "h": 3600}[unit]


# Upgrades: what restarts what


def test_model_updates_never_surge_a_pod(chart: helm_python.Chart) -> None:
    for deployment in _models(render(chart, EVERYTHING)):
        strategy = deployment["spec"]["strategy"]
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    recreate = render(chart, EVERYTHING | {"runtime": {"strategy": {"type": "Recreate"}}})
    assert {d["spec"]["strategy"]["type"] for d in _models(recreate)} == {"Recreate"}


@pytest.mark.parametrize("values", [EVERYTHING, EXTERNAL_REDIS], ids=["bundled-redis", "external-redis"])
def test_pod_templates_carry_only_their_selector_labels(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    pod_labels = {"team": "ml"}
    rendered = render(chart, values | {"gateway": {"podLabels": pod_labels}})
    for workload, _ in rendered.pod_specs():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        extra = pod_labels if workload["metadata"]["name"] == f"{RELEASE}-gateway" else {}
        assert labels == workload["spec"]["selector"]["matchLabels"] | extra, workload["metadata"]["name"]
        assert "helm.sh/chart" in workload["metadata"]["labels"]  # on the object, where it restarts nothing


def test_a_rendered_upgrade_changes_no_model_pod_template(chart: helm_python.Chart, next_chart: Path) -> None:
    """A new chart version with changes elsewhere (gateway, Redis, a model added) rolls no existing model."""
    installed = render(chart, EVERYTHING)
    changed = EVERYTHING | {
        "gateway": {"logLevel": "DEBUG", "replicas": 3},
        "redis": {"persistence": {"enabled": True}},
        "models": [*EVERYTHING["models"], {"name": "added", "source": "org/added"}],
    }
    with helm_python.Chart.load(next_chart) as upgraded_chart:
        manifests = upgraded_chart.render(changed, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
    upgraded = Rendered([doc for path, text in manifests.items() if path.endswith(".yaml") for doc in
                         yaml.safe_load_all(text) if doc])  # fmt: skip
    for before in _models(installed):
        after = upgraded.get("Deployment", before["metadata"]["name"])
        assert after["spec"]["template"] == before["spec"]["template"], before["metadata"]["name"]
        assert after["metadata"]["labels"]["helm.sh/chart"] == NEXT_CHART_LABEL
    # Offline, Helm cannot look the Deployments up: it renders them at 0, as a create would (see test_upgrade.py
    # for the upgrade against an API server, and docs/helm.md for GitOps tools).
    assert {d["spec"]["replicas"] for d in _models(upgraded)} == {0}


# GitOps: render twice, get the same


def test_with_your_own_secrets_two_renders_are_identical(chart: helm_python.Chart) -> None:
    first, second = (chart.render(GITOPS, name=RELEASE, namespace=NAMESPACE) for _ in range(2))
    assert first == second
    rendered = render(chart, GITOPS)
    assert [s["metadata"]["name"] for s in rendered.of_kind("Secret")] == []
    for _, pod in rendered.pod_specs():
        refs = [
            item["valueFrom"]["secretKeyRef"]["name"]
            for container in _containers(pod)
            for item in container.get("env", [])
            if "secretKeyRef" in item.get("valueFrom", {})
        ]
        assert set(refs) <= {"kaltstart-redis", "hf-token", "kaltstart-runtime-token"}
    external = EXTERNAL_REDIS | {"gateway": GITOPS["gateway"], "runtime": GITOPS["runtime"]}
    assert chart.render(external, name=RELEASE, namespace=NAMESPACE) == chart.render(
        external, name=RELEASE, namespace=NAMESPACE
    )


def test_generated_secrets_differ_per_offline_render_which_is_why_gitops_needs_your_own(
    chart: helm_python.Chart,
) -> None:
    first, second = render(chart, EVERYTHING), render(chart, EVERYTHING)
    for name in ("kaltstart-redis", "kaltstart-api-keys", "kaltstart-runtime-token"):
        assert first.get("Secret", name)["data"] != second.get("Secret", name)["data"]


# Redis


def test_redis_checksum_rolls_the_pods_that_read_the_password_only_when_it_changes(chart: helm_python.Chart) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str | None]:
        rendered = render(chart, values)
        return {
            workload["metadata"]["name"]: (workload["spec"]["template"]["metadata"].get("annotations") or {}).get(
                "checksum/redis-secret"
            )
            for workload, _ in rendered.pod_specs()
        }

    fixed = {**EVERYTHING, "redis": {"auth": {"password": "one", "announcePassword": "two"}}}
    first = checksums(fixed)
    assert first["kaltstart-gateway"] == first["kaltstart-redis"] is not None  # one value per render
    assert checksums(fixed) == first  # the same passwords, the same checksum
    changed = checksums({**fixed, "redis": {"auth": {"password": "three", "announcePassword": "two"}}})
    assert changed["kaltstart-gateway"] != first["kaltstart-gateway"]
    # Models hold only the announcer's password and are not restarted for the server's.
    assert {first[d] for d in first if d not in ("kaltstart-gateway", "kaltstart-redis")} == {None}
    assert set(checksums(GITOPS).values()) == {None}  # your Secret: the chart cannot see it change


def test_redis_passwords_stay_off_command_lines_and_the_server_never_evicts(chart: helm_python.Chart) -> None:
    rendered = render(chart, {**EVERYTHING, "redis": {"auth": {"password": "s3cret", "announcePassword": "pub"}}})
    for _, pod in rendered.pod_specs():
        for container in _containers(pod):
            argv = " ".join(container.get("command", []) + container.get("args", []))
            assert "s3cret" not in argv and "pub" not in argv.split() and "REDIS_PASSWORD)" not in argv
    (server,) = rendered.get("StatefulSet", "kaltstart-redis")["spec"]["template"]["spec"]["containers"]
    args = server["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    limit = server["resources"]["limits"]["memory"]
    assert _bytes(args[args.index("--maxmemory") + 1]) < _bytes(limit)
    assert re.fullmatch(r"valkey/valkey:\d+\.\d+\.\d+", server["image"])


def _bytes(quantity: str) -> int:
    value, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    units = {"": 1, "mb": 1024**2, "gb": 1024**3, "Mi": 1024**2, "Gi": 1024**3}
    return int(value) * units[unit]


def test_the_statefulset_is_governed_by_a_headless_service(chart: helm_python.Chart) -> None:
    rendered = render(chart, EVERYTHING)
    statefulset = rendered.get("StatefulSet", "kaltstart-redis")
    governing = rendered.get("Service", statefulset["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert rendered.get("Service", "kaltstart-redis")["spec"].get("clusterIP") != "None"  # what clients use


# ResourceQuota and GPU pools


@pytest.mark.parametrize("values", [EVERYTHING, EXTERNAL_REDIS], ids=["bundled-redis", "external-redis"])
def test_every_container_has_resources_init_containers_too(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    rendered = render(chart, values)
    for workload, pod in rendered.pod_specs():
        for container in _containers(pod):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources") or {}
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where
        for init in pod.get("initContainers", []):  # ours: a quota on limits.cpu admits them too
            assert {"cpu", "memory"} <= set(init["resources"]["limits"]), init["name"]


def test_only_model_containers_see_gpus(chart: helm_python.Chart) -> None:
    rendered = render(chart, EVERYTHING)
    daemonset = rendered.get("DaemonSet", "kaltstart-prefetch")["spec"]["template"]["spec"]
    runtime_image = "ghcr.io/kaltstart/runtime:0.1.0"
    for container in _containers(daemonset):
        if container["image"] == runtime_image:
            assert _env(container)["NVIDIA_VISIBLE_DEVICES"]["value"] == "void", container["name"]
        assert not any(k.startswith("nvidia.com/") for k in container["resources"].get("limits", {}))
    for deployment in _models(rendered):
        pod = deployment["spec"]["template"]["spec"]
        (chown,) = pod["initContainers"]
        assert _env(chown)["NVIDIA_VISIBLE_DEVICES"]["value"] == "void"
        (runtime,) = pod["containers"]
        assert "NVIDIA_VISIBLE_DEVICES" not in _env(runtime)  # the device plugin sets it for the GPU it gives
        assert any(k.startswith("nvidia.com/") for k in runtime["resources"]["limits"])


# Smaller


def test_gateway_replicas_spread_over_nodes(chart: helm_python.Chart) -> None:
    rendered = render(chart, EVERYTHING)
    deployment = rendered.get("Deployment", "kaltstart-gateway")
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    for constraint in constraints:
        assert constraint["maxSkew"] == 1 and constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    own = [{"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]
    replaced = render(chart, {"gateway": {"topologySpreadConstraints": own}}).get("Deployment", "kaltstart-gateway")
    assert replaced["spec"]["template"]["spec"]["topologySpreadConstraints"] == own


def test_every_image_is_pinned(chart: helm_python.Chart) -> None:
    for _, pod in render(chart, EVERYTHING).pod_specs():
        for container in _containers(pod):
            repository, _, tag = container["image"].rpartition(":")
            assert repository and re.fullmatch(r"v?\d+\.\d+(\.\d+)?(-[\w.]+)?", tag), container["image"]


def test_probes_and_deadlines_agree_with_the_cold_start_timeout(chart: helm_python.Chart) -> None:
    for deployment in _models(render(chart, EVERYTHING)):
        (runtime,) = deployment["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert runtime[probe]["timeoutSeconds"] >= 5, probe
        startup = runtime["startupProbe"]
        allowance = startup["periodSeconds"] * startup["failureThreshold"]
        # The kubelet restarts a start only after the gateway has given up on it (the gateway's own parser)...
        routes = routes_of(deployment)
        assert not isinstance(routes, RouteError)
        assert all(route.model.cold_start_timeout_s <= allowance for route in routes)
        # ...and a slow but healthy start is never reported as a failed rollout.
        assert deployment["spec"]["progressDeadlineSeconds"] >= allowance + 300


def test_dev_shm_is_bounded(chart: helm_python.Chart) -> None:
    for deployment in _models(render(chart, EVERYTHING | {"runtime": {"shmSizeLimit": "2Gi"}})):
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
