"""What the rendered objects promise: least-privilege RBAC, restricted gateway pods behind API keys with their
metrics on a port of their own, scale-from-zero model Deployments with their GPU and node-local cache, network
isolation, and the Redis choices."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from gateway.metrics import Metrics
from tests.chart.rendering import CHART_DIR, CI_VALUES, REPO, Manifest, Rendered, load_values, notes, render

pytestmark = pytest.mark.chart

TWO_MODELS = load_values(CHART_DIR / "ci" / "two-models-values.yaml")
ONE_MODEL = {"models": [{"name": "tiny", "source": "org/tiny", "idleTimeout": "90s", "maxReplicas": 3}]}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


def _env(container: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container.get("env", [])}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# RBAC


def _documented_roles() -> dict[str, Manifest]:
    text = (REPO / "docs" / "kubernetes.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    return {doc["metadata"]["name"]: doc for doc in map(yaml.safe_load, blocks) if doc.get("kind") == "Role"}


def test_role_has_exactly_the_documented_rules(chart: helm_python.Chart) -> None:
    rendered = render(chart)
    documented = _documented_roles()
    assert sorted(documented) == sorted(r["metadata"]["name"] for r in rendered.of_kind("Role"))
    for name, role in documented.items():
        assert rendered.get("Role", name)["rules"] == role["rules"]


def test_role_grants_no_wildcard_and_no_write_on_deployments(chart: helm_python.Chart) -> None:
    for role in render(chart, {"gateway": {"namespaces": ["llm", "other"]}}).of_kind("Role"):
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
            if "deployments" in rule["resources"]:
                assert not set(rule["verbs"]) & WRITE_VERBS
            if "deployments/scale" in rule["resources"]:
                assert sorted(rule["verbs"]) == ["get", "update"]


@pytest.mark.security
def test_leases_only_in_the_release_namespace_and_only_the_gateways_own(chart: helm_python.Chart) -> None:
    """Served namespaces are where other teams' Deployments live: no Lease rights there, so the gateway's account
    cannot be used to hold or break their leader elections; in its own namespace, its one Lease by name."""
    values = {"gateway": {"namespaces": ["models", "dev"], "leaseName": "kaltstart-leader"}}
    rendered = render(chart, values)
    leases = [
        (role, rule) for role in rendered.of_kind("Role") for rule in role["rules"] if "leases" in rule["resources"]
    ]
    assert {role["metadata"]["namespace"] for role, _ in leases} == {"llm"}  # the release namespace
    by_verbs = {tuple(sorted(rule["verbs"])): rule.get("resourceNames") for _, rule in leases}
    assert by_verbs == {("create",): None, ("get", "update"): ["kaltstart-leader"]}
    gateway = rendered.get("Deployment", "kaltstart-gateway")
    env = _env(gateway["spec"]["template"]["spec"]["containers"][0])
    assert (env["KALTSTART_LEASE_NAMESPACE"]["value"], env["KALTSTART_LEASE_NAME"]["value"]) == (
        "llm",
        "kaltstart-leader",
    )


def test_a_role_and_binding_in_every_served_namespace(chart: helm_python.Chart) -> None:
    rendered = render(chart, {"gateway": {"namespaces": ["llm", "other"]}})
    served = [r for r in rendered.of_kind("Role") if r["metadata"]["name"] == "kaltstart-gateway"]
    assert sorted(r["metadata"]["namespace"] for r in served) == ["llm", "other"]
    for binding in rendered.of_kind("RoleBinding"):
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert binding["roleRef"]["name"] in ("kaltstart-gateway", "kaltstart-gateway-lease")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kaltstart", "namespace": "llm"}]
    gateway = rendered.get("Deployment", "kaltstart-gateway")
    assert gateway["spec"]["template"]["spec"]["serviceAccountName"] == "kaltstart"
    assert _env(gateway["spec"]["template"]["spec"]["containers"][0])["KALTSTART_NAMESPACES"]["value"] == "llm,other"


# Admission


def _assert_restricted(pod: Manifest) -> None:
    """The Pod Security Standard "restricted", as far as a pod spec shows it."""
    pod_context = pod.get("securityContext", {})
    assert pod_context.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    for volume in pod.get("volumes", []):
        assert set(volume) & {"emptyDir", "configMap", "secret", "persistentVolumeClaim", "projected"}, volume
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert not context["capabilities"].get("add")
        assert context["runAsNonRoot"] is True or pod_context.get("runAsNonRoot") is True
        assert context.get("runAsUser", pod_context.get("runAsUser")) != 0
        assert context["readOnlyRootFilesystem"] is True


def test_gateway_pods_meet_pod_security_restricted(chart: helm_python.Chart) -> None:
    pod = render(chart).get("Deployment", "kaltstart-gateway")["spec"]["template"]["spec"]
    _assert_restricted(pod)
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["enableServiceLinks"] is False  # else the Service "kaltstart" would set KALTSTART_PORT=tcp://...
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]


def test_bundled_redis_pods_meet_pod_security_restricted(chart: helm_python.Chart) -> None:
    _assert_restricted(render(chart).get("StatefulSet", "kaltstart-redis")["spec"]["template"]["spec"])


def test_gateway_deployment_probes_and_graceful_shutdown(chart: helm_python.Chart) -> None:
    rendered = render(chart)
    deployment = rendered.get("Deployment", "kaltstart-gateway")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + 10
    assert container["resources"]["requests"] and container["resources"]["limits"]
    service = rendered.get("Service", "kaltstart")
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert _matches(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    pdb = rendered.get("PodDisruptionBudget", "kaltstart-gateway")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_gateway_reads_the_bundled_redis_password_from_its_secret(chart: helm_python.Chart) -> None:
    rendered = render(chart, {"redis": {"auth": {"password": "s3cret"}}})
    container = rendered.get("Deployment", "kaltstart-gateway")["spec"]["template"]["spec"]["containers"][0]
    by_name = _env(container)
    env = list(by_name)
    ref = by_name["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert by_name["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@kaltstart-redis:6379/0"
    assert env.index("REDIS_PASSWORD") < env.index("REDIS_URL")  # $(VAR) expands only earlier variables
    secret = rendered.get("Secret", ref["name"])
    assert secret["data"][ref["key"]] == "czNjcmV0"  # base64 of s3cret
    statefulset = rendered.get("StatefulSet", "kaltstart-redis")
    server = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert server["args"][:2] == ["--appendonly", "yes"]
    assert _env(server)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref


def test_a_generated_redis_password_is_random_and_url_safe(chart: helm_python.Chart) -> None:
    passwords = {
        base64.b64decode(render(chart).get("Secret", "kaltstart-redis")["data"]["redis-password"]).decode()
        for _ in range(2)
    }
    assert len(passwords) == 2
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", p) for p in passwords)


def test_redis_persistence_claims_a_volume(chart: helm_python.Chart) -> None:
    values = {"redis": {"persistence": {"enabled": True, "size": "2Gi", "storageClass": "fast"}}}
    statefulset = render(chart, values).get("StatefulSet", "kaltstart-redis")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "data" not in [v["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]]


@pytest.mark.parametrize(
    ("redis", "url_env"),
    [
        ({"url": "redis://redis.example:6379/0"}, {"name": "REDIS_URL", "value": "redis://redis.example:6379/0"}),
        (
            {"existingSecret": "my-redis", "existingSecretKey": "url"},
            {"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "my-redis", "key": "url"}}},
        ),
    ],
)
def test_external_redis_renders_nothing_redis(
    chart: helm_python.Chart, redis: dict[str, Any], url_env: Manifest
) -> None:
    rendered = render(
        chart, {"redis": redis | {"announceUrl": "redis://announcer:pw@redis.example:6379/0"}, **ONE_MODEL}
    )
    assert rendered.of_kind("StatefulSet") == []
    assert [s["metadata"]["name"] for s in rendered.of_kind("Secret")] == [
        "kaltstart-api-keys",
        "kaltstart-runtime-token",
    ]
    assert "kaltstart-redis" not in [s["metadata"]["name"] for s in rendered.of_kind("Service")]
    assert sorted(p["metadata"]["name"] for p in rendered.of_kind("NetworkPolicy")) == [
        "kaltstart-gateway",
        "kaltstart-models",
    ]
    env = _env(rendered.get("Deployment", "kaltstart-gateway")["spec"]["template"]["spec"]["containers"][0])
    assert env["REDIS_URL"] == url_env
    assert "REDIS_PASSWORD" not in env


# API keys


def _gateway_pod(rendered: Rendered) -> Manifest:
    pod: Manifest = rendered.get("Deployment", "kaltstart-gateway")["spec"]["template"]["spec"]
    return pod


def _key_volume(pod: Manifest) -> Manifest | None:
    """The gateway's API key volume, after checking that the file it holds is the one the env names."""
    (container,) = pod["containers"]
    env = _env(container)
    volumes: list[Manifest] = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    mounts: list[Manifest] = [m for m in container["volumeMounts"] if m["name"] == "api-keys"]
    if not volumes:
        assert not mounts and "KALTSTART_API_KEYS_FILE" not in env and "KALTSTART_API_KEYS" not in env
        return None
    (volume,), (mount,) = volumes, mounts
    # The directory, never a subPath: a Secret update swaps a symlink there, and a subPath would never see it.
    assert mount == {"name": "api-keys", "mountPath": "/etc/kaltstart/api-keys", "readOnly": True}
    (item,) = volume["secret"]["items"]
    assert env["KALTSTART_API_KEYS_FILE"] == {
        "name": "KALTSTART_API_KEYS_FILE",
        "value": f"{mount['mountPath']}/{item['path']}",
    }
    assert volume["secret"]["defaultMode"] == 0o440
    return volume


def test_a_generated_api_key_is_mounted_as_a_file(chart: helm_python.Chart) -> None:
    rendered = render(chart)
    volume = _key_volume(_gateway_pod(rendered))
    assert volume is not None
    assert volume["secret"]["secretName"] == "kaltstart-api-keys"
    assert volume["secret"]["items"] == [{"key": "api-keys", "path": "api-keys"}]
    secret = rendered.get("Secret", "kaltstart-api-keys")
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    assert list(secret["data"]) == ["api-keys"]
    keys = {base64.b64decode(render(chart).get("Secret", "kaltstart-api-keys")["data"]["api-keys"]).decode()}
    keys.add(base64.b64decode(secret["data"]["api-keys"]).decode())
    assert len(keys) == 2  # random: offline, lookup finds no Secret to keep
    assert all(re.fullmatch(r"sk-[A-Za-z0-9]{40}", key) for key in keys)


def test_an_existing_api_key_secret_is_mounted_and_none_rendered(chart: helm_python.Chart) -> None:
    values = {"gateway": {"apiKeys": {"existingSecret": "team-keys", "secretKey": "keys.txt"}}, **ONE_MODEL}
    rendered = render(chart, values)
    assert [s["metadata"]["name"] for s in rendered.of_kind("Secret")] == ["kaltstart-redis", "kaltstart-runtime-token"]
    volume = _key_volume(_gateway_pod(rendered))
    assert volume is not None
    assert volume["secret"]["secretName"] == "team-keys"
    assert volume["secret"]["items"] == [{"key": "keys.txt", "path": "api-keys"}]
    assert "get secret team-keys -o jsonpath='{.data.keys\\.txt}' | base64 -d" in notes(chart, values)


def test_api_keys_can_be_turned_off(chart: helm_python.Chart) -> None:
    values = {"gateway": {"apiKeys": {"enabled": False, "existingSecret": "ignored"}, "allowAnonymous": True}}
    rendered = render(chart, values)
    assert [s["metadata"]["name"] for s in rendered.of_kind("Secret")] == ["kaltstart-redis", "kaltstart-runtime-token"]
    assert _key_volume(_gateway_pod(rendered)) is None
    text = notes(chart, values)
    assert "the API is open to anyone" in text
    assert "KALTSTART_API_KEY" not in text


# The metrics port


def test_the_metrics_port_is_apart_from_the_api(chart: helm_python.Chart) -> None:
    values = {"gateway": {"port": 8081, "metricsPort": 9100}, "monitoring": {"serviceMonitor": {"enabled": True}}}
    rendered = render(chart, values)
    deployment = rendered.get("Deployment", "kaltstart-gateway")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8081, "metrics": 9100}
    env = _env(container)
    assert (env["KALTSTART_PORT"]["value"], env["KALTSTART_METRICS_PORT"]["value"]) == ("8081", "9100")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["port"] == "metrics", probe
    api = rendered.get("Service", "kaltstart")
    assert [(p["name"], p["targetPort"]) for p in api["spec"]["ports"]] == [("http", "http")]
    metrics = rendered.get("Service", "kaltstart-gateway-metrics")
    assert metrics["spec"]["type"] == "ClusterIP"
    assert metrics["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}]
    assert _matches(metrics["spec"]["selector"], pod_labels)
    # The ServiceMonitor picks the metrics Service alone, on its metrics port.
    monitor = rendered.get("ServiceMonitor", "kaltstart")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    selected = [
        s["metadata"]["name"]
        for s in rendered.of_kind("Service")
        if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert selected == ["kaltstart-gateway-metrics"]
    # An exposed API Service does not carry the metrics port along.
    exposed = render(chart, {"gateway": {"service": {"type": "LoadBalancer"}}})
    assert [p["name"] for p in exposed.get("Service", "kaltstart")["spec"]["ports"]] == ["http"]
    assert exposed.get("Service", "kaltstart-gateway-metrics")["spec"]["type"] == "ClusterIP"


# Models


def _model_deployments(rendered: Rendered) -> list[Manifest]:
    return [d for d in rendered.of_kind("Deployment") if d["metadata"]["labels"].get("kaltstart.dev/enabled")]


def test_model_deployments_start_at_zero_with_their_annotations(chart: helm_python.Chart) -> None:
    rendered = render(chart, TWO_MODELS)
    qwen, llama = (rendered.get("Deployment", f"kaltstart-{n}") for n in ("qwen2-5-0-5b", "llama-3-2-1b"))
    assert len(_model_deployments(rendered)) == 2
    for deployment in (qwen, llama):
        assert deployment["spec"]["replicas"] == 0
        assert deployment["metadata"]["labels"]["kaltstart.dev/enabled"] == "true"
    assert qwen["metadata"]["annotations"] == {
        "kaltstart.dev/models": "qwen2.5-0.5b,qwen",
        "kaltstart.dev/service": "kaltstart-qwen2-5-0-5b",
        "kaltstart.dev/port": "http",
        "kaltstart.dev/max-replicas": "2",
        "kaltstart.dev/idle-timeout": "300s",
        "kaltstart.dev/cold-start-timeout": "10m",
        "kaltstart.dev/max-batch-size": "32",
        "kaltstart.dev/max-batch-delay": "10ms",
        "kaltstart.dev/target-queue-per-replica": "32",
    }
    assert llama["metadata"]["annotations"]["kaltstart.dev/min-replicas"] == "0"
    assert llama["metadata"]["annotations"]["kaltstart.dev/idle-timeout"] == "15m"


def test_model_pods_run_the_runtime_on_a_gpu(chart: helm_python.Chart) -> None:
    rendered = render(chart, TWO_MODELS)
    qwen = rendered.get("Deployment", "kaltstart-qwen2-5-0-5b")["spec"]["template"]["spec"]
    llama = rendered.get("Deployment", "kaltstart-llama-3-2-1b")["spec"]["template"]["spec"]
    (runtime,) = qwen["containers"]
    assert runtime["image"] == "ghcr.io/kaltstart/runtime:0.1.0"
    assert runtime["args"] == [
        "--model-name", "qwen2.5-0.5b,qwen",
        "--source", "Qwen/Qwen2.5-0.5B-Instruct",
        "--cache-dir", "/var/lib/kaltstart/models",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--device", "cuda",
        "--dtype", "bfloat16",
        "--max-batch-size", "32",
    ]  # fmt: skip
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert llama["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == 1
    assert "nvidia.com/gpu" not in llama["containers"][0]["resources"]["limits"]
    assert llama["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    assert {t["key"] for t in llama["tolerations"]} == {"cloud.google.com/gke-spot", "nvidia.com/gpu"}
    assert _env(runtime)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}


def test_model_and_prefetch_pods_take_a_runtime_class(chart: helm_python.Chart) -> None:
    values = {"runtime": {"runtimeClassName": "nvidia"}, "prefetch": {"enabled": True}, **ONE_MODEL}
    rendered = render(chart, values)
    for name in ("kaltstart-tiny", "kaltstart-prefetch"):
        (workload,) = [w for w, _ in rendered.pod_specs() if w["metadata"]["name"] == name]
        assert workload["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert (
        "runtimeClassName"
        not in render(chart, ONE_MODEL).get("Deployment", "kaltstart-tiny")["spec"]["template"]["spec"]
    )


def test_model_probes_give_a_cold_start_thirty_minutes(chart: helm_python.Chart) -> None:
    pod = render(chart, ONE_MODEL).get("Deployment", "kaltstart-tiny")["spec"]["template"]["spec"]
    (runtime,) = pod["containers"]
    startup = runtime["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    assert runtime["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert runtime["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_model_pods_mount_the_node_local_cache(chart: helm_python.Chart) -> None:
    pod = render(chart, ONE_MODEL).get("Deployment", "kaltstart-tiny")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["hostPath"] == {
        "path": "/var/lib/kaltstart/models/kaltstart-tiny",  # the model's own directory
        "type": "DirectoryOrCreate",
    }
    (runtime,) = pod["containers"]
    assert {"name": "model-cache", "mountPath": "/var/lib/kaltstart/models"} in runtime["volumeMounts"]
    (chown,) = pod["initContainers"]
    assert chown["command"] == ["chown", "10001:10001", "/var/lib/kaltstart/models"]
    assert chown["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    context = runtime["securityContext"]
    assert (context["runAsUser"], context["allowPrivilegeEscalation"], context["readOnlyRootFilesystem"]) == (
        10001,
        False,
        True,
    )


def test_model_services_select_their_own_pods_on_a_port_named_http(chart: helm_python.Chart) -> None:
    rendered = render(chart, TWO_MODELS)
    for deployment in _model_deployments(rendered):
        name = deployment["metadata"]["name"]
        service = rendered.get("Service", deployment["metadata"]["annotations"]["kaltstart.dev/service"])
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _matches(service["spec"]["selector"], labels)
        others = [d for d in _model_deployments(rendered) if d["metadata"]["name"] != name]
        assert not any(
            _matches(service["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"]) for o in others
        )
        assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]


# NetworkPolicy


def _admits(policy: Manifest, pods: dict[str, dict[str, str]]) -> dict[str, object]:
    """What one policy lets in: per pod it selects, per port, the release's pods admitted ("anyone": no ``from``).
    Only pod selectors of this namespace are expected as peers (the chart renders no others by default)."""
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    selected = sorted(p for p, labels in pods.items() if _matches(spec["podSelector"]["matchLabels"], labels))
    by_port: dict[int, object] = {}
    for rule in spec["ingress"]:
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            if "from" not in rule:
                by_port[port["port"]] = "anyone"
                continue
            assert all(set(peer) == {"podSelector"} for peer in rule["from"])
            peers = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
            by_port[port["port"]] = sorted(p for p, labels in pods.items() if any(_matches(s, labels) for s in peers))
    return {"selects": selected, "admits": by_port}


@pytest.mark.security
@pytest.mark.parametrize("announce", [True, False], ids=["announce", "no-announce"])
def test_what_each_network_policy_admits(chart: helm_python.Chart, announce: bool) -> None:
    """docs/helm.md and the chart's README say this: model pods take only the gateway; the bundled Redis takes the
    gateway and, with runtime.announce (the default), every model pod of the release too (which holds only the
    publish-only user's password); the gateway takes anyone on its API port, no one else on its metrics port."""
    rendered = render(chart, TWO_MODELS | {"runtime": {"announce": announce}})
    pods = {obj["metadata"]["name"]: obj["spec"]["template"]["metadata"]["labels"] for obj, _ in rendered.pod_specs()}
    models = sorted(d["metadata"]["name"] for d in _model_deployments(rendered))
    policies = {p["metadata"]["name"]: _admits(p, pods) for p in rendered.of_kind("NetworkPolicy")}
    assert policies == {
        "kaltstart-gateway": {"selects": ["kaltstart-gateway"], "admits": {8080: "anyone"}},
        "kaltstart-models": {"selects": models, "admits": {8000: ["kaltstart-gateway"]}},
        "kaltstart-redis": {
            "selects": ["kaltstart-redis"],
            "admits": {6379: sorted(["kaltstart-gateway", *(models if announce else [])])},
        },
    }
    model_env = [_env(d["spec"]["template"]["spec"]["containers"][0]) for d in _model_deployments(rendered)]
    for env in model_env:  # what an admitted model pod can log in as: the publish-only user, or nothing
        if announce:
            assert env["REDIS_URL"]["value"].startswith("redis://announcer:$(REDIS_ANNOUNCE_PASSWORD)@")
            assert env["REDIS_ANNOUNCE_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "redis-announce-password"
        assert "REDIS_PASSWORD" not in env
        assert announce or "REDIS_URL" not in env


@pytest.mark.security
def test_model_pods_announce_themselves_on_the_gateways_redis_at_their_pod_address(chart: helm_python.Chart) -> None:
    for values, url in (
        (
            {"redis": {"auth": {"password": "s3cret"}}},
            "redis://announcer:$(REDIS_ANNOUNCE_PASSWORD)@kaltstart-redis:6379/0",  # the publish-only user
        ),
        (  # an external Redis: the publish-only URL of yours, never the gateway's
            {
                "redis": {
                    "url": "redis://:all@redis.example:6379/0",
                    "announceUrl": "redis://pub:pw@redis.example:6379/0",
                }
            },
            "redis://pub:pw@redis.example:6379/0",
        ),
    ):
        rendered = render(chart, ONE_MODEL | values)
        (deployment,) = _model_deployments(rendered)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        by_name, env = _env(container), [item["name"] for item in container["env"]]
        assert by_name["REDIS_URL"]["value"] == url
        assert by_name["KALTSTART_RUNTIME_ANNOUNCE_TO"]["value"] == "$(REDIS_URL)"
        assert by_name["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert by_name["KALTSTART_RUNTIME_ADVERTISE_URL"]["value"] == "http://$(POD_IP):8000"
        # $(VAR) expands only variables defined earlier in the list
        assert env.index("REDIS_URL") < env.index("KALTSTART_RUNTIME_ANNOUNCE_TO")
        assert env.index("POD_IP") < env.index("KALTSTART_RUNTIME_ADVERTISE_URL")

    external = {
        "url": "redis://:all@redis.example:6379/0",
        "announceExistingSecret": "pub",
        "announceExistingSecretKey": "u",
    }
    (deployment,) = _model_deployments(render(chart, ONE_MODEL | {"redis": external}))
    from_secret = _env(deployment["spec"]["template"]["spec"]["containers"][0])["REDIS_URL"]
    assert from_secret == {"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "pub", "key": "u"}}}
    gateway_only = {"redis": {"url": "redis://:all@redis.example:6379/0"}}
    assert _model_deployments(render(chart, gateway_only)) == []  # no models: no publish-only URL needed
    (deployment,) = _model_deployments(render(chart, ONE_MODEL | gateway_only | {"runtime": {"announce": False}}))
    assert "REDIS_URL" not in _env(deployment["spec"]["template"]["spec"]["containers"][0])

    quiet = render(chart, ONE_MODEL | {"runtime": {"announce": False}})
    (deployment,) = _model_deployments(quiet)
    names = set(_env(deployment["spec"]["template"]["spec"]["containers"][0]))
    assert not names & {"REDIS_URL", "REDIS_PASSWORD", "REDIS_ANNOUNCE_PASSWORD", "KALTSTART_RUNTIME_ANNOUNCE_TO"}
    (rule,) = quiet.get("NetworkPolicy", "kaltstart-redis")["spec"]["ingress"]
    assert len(rule["from"]) == 1  # the gateway alone


def test_the_gateway_policy_opens_the_api_and_the_metrics_port_only_to_metrics_from(
    chart: helm_python.Chart,
) -> None:
    rendered = render(chart)
    gateway_labels = rendered.get("Deployment", "kaltstart-gateway")["spec"]["template"]["metadata"]["labels"]
    policy = rendered.get("NetworkPolicy", "kaltstart-gateway")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert _matches(policy["podSelector"]["matchLabels"], gateway_labels)
    (api,) = policy["ingress"]  # no metricsFrom: only the node (the kubelet's probes) reaches the metrics port
    assert api == {"ports": [{"port": 8080, "protocol": "TCP"}]}  # no "from": anyone
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    values = {"gateway": {"metricsPort": 9100}, "networkPolicy": {"metricsFrom": [prometheus]}}
    api, scrape = render(chart, values).get("NetworkPolicy", "kaltstart-gateway")["spec"]["ingress"]
    assert api == {"ports": [{"port": 8080, "protocol": "TCP"}]}
    assert scrape == {"from": [prometheus], "ports": [{"port": 9100, "protocol": "TCP"}]}


def test_notes_warn_when_prometheus_may_not_scrape(chart: helm_python.Chart) -> None:
    monitored: dict[str, Any] = {"monitoring": {"serviceMonitor": {"enabled": True}}}
    assert "networkPolicy.metricsFrom is empty" in notes(chart, monitored)
    allowed = {**monitored, "networkPolicy": {"metricsFrom": [{"namespaceSelector": {}}]}}
    assert "networkPolicy.metricsFrom is empty" not in notes(chart, allowed)
    assert "networkPolicy.metricsFrom is empty" not in notes(chart)


def test_network_policies_can_be_turned_off(chart: helm_python.Chart) -> None:
    assert render(chart, {"networkPolicy": {"enabled": False}, **ONE_MODEL}).of_kind("NetworkPolicy") == []


# Monitoring


def _exported_names() -> set[str]:
    """Every series name the gateway's registry can export."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


def test_dashboard_queries_only_metrics_the_gateway_exports() -> None:
    dashboard = json.loads((CHART_DIR / "dashboards" / "kaltstart.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bkaltstart_[a-z_]+", expr)}
    assert used <= _exported_names()
    for required in (
        "kaltstart_queue_depth",
        "kaltstart_replicas",
        "kaltstart_cold_start_duration_seconds_bucket",
        "kaltstart_request_duration_seconds_bucket",
        "kaltstart_requests_total",
        "kaltstart_model_state",
        "kaltstart_pool_moves_total",
        "kaltstart_pool_move_seconds_total",
        "kaltstart_pool_bytes",
        "kaltstart_pool_budget_bytes",
        "kaltstart_queue_wait_seconds_bucket",
        "kaltstart_cold_start_seconds_sum",
        "kaltstart_replica_seconds_total",
        "kaltstart_cold_starts_avoided_total",
    ):
        assert required in used
    assert any('status=~"5.."' in expr for expr in exprs)


def test_monitoring_objects_when_enabled(chart: helm_python.Chart) -> None:
    values = {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "dashboard": {"enabled": True},
        }
    }
    rendered = render(chart, values)
    monitor = rendered.get("ServiceMonitor", "kaltstart")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service = rendered.get("Service", "kaltstart-gateway-metrics")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    dashboard = rendered.get("ConfigMap", "kaltstart-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(dashboard["data"]["kaltstart.json"])
    assert shipped == json.loads((CHART_DIR / "dashboards" / "kaltstart.json").read_text())
    assert render(chart).of_kind("ConfigMap") == []


# Cache prefetch


def test_prefetch_is_off_by_default(chart: helm_python.Chart) -> None:
    assert render(chart, TWO_MODELS).of_kind("DaemonSet") == []


def test_prefetch_fills_the_cache_with_the_runtime_s_own_code(chart: helm_python.Chart, tmp_path: Path) -> None:
    """The DaemonSet's fill step, run here for real against a local directory source."""
    source = tmp_path / "weights"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"\0" * 64)
    values = {
        "prefetch": {"enabled": True},
        "models": [{"name": "local", "source": str(source)}, *TWO_MODELS["models"]],
    }
    daemonset = render(chart, values).get("DaemonSet", "kaltstart-prefetch")
    pod = daemonset["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["cache-permissions", "fill-0", "fill-1", "fill-2"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert volumes == {  # each model's own directory, the one its pods mount
        "model-cache-0": "/var/lib/kaltstart/models/kaltstart-local",
        "model-cache-1": "/var/lib/kaltstart/models/kaltstart-qwen2-5-0-5b",
        "model-cache-2": "/var/lib/kaltstart/models/kaltstart-llama-3-2-1b",
    }
    chown = pod["initContainers"][0]
    assert chown["command"] == ["chown", "10001:10001", *(f"/kaltstart-cache/{i}" for i in range(3))]
    assert [m["name"] for m in chown["volumeMounts"]] == ["model-cache-0", "model-cache-1", "model-cache-2"]
    assert pod["initContainers"][2]["volumeMounts"][0] == {
        "name": "model-cache-1",
        "mountPath": "/var/lib/kaltstart/models",
    }
    command = pod["initContainers"][1]["command"]
    assert command[0] == "python" and command[-2:] == [str(source), "/var/lib/kaltstart/models"]
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, *command[1:-1], str(cache)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "filled" in result.stdout
    (cached,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert (cached / "model.safetensors").read_bytes() == b"\0" * 64
    assert (cached / ".kaltstart-complete.json").is_file()


# NOTES


def test_notes_tell_how_to_call_the_endpoint(chart: helm_python.Chart) -> None:
    text = notes(chart, TWO_MODELS)
    assert "kubectl -n llm port-forward svc/kaltstart 8080:80" in text
    assert '"model": "qwen2.5-0.5b"' in text
    assert 'base_url="http://127.0.0.1:8080/v1"' in text
    read_key = (
        "export KALTSTART_API_KEY=$(kubectl -n llm get secret kaltstart-api-keys"
        " -o jsonpath='{.data.api-keys}' | base64 -d)"
    )
    assert read_key in text
    assert 'curl http://127.0.0.1:8080/v1/models -H "Authorization: Bearer $KALTSTART_API_KEY"' in text
    assert 'api_key=os.environ["KALTSTART_API_KEY"]' in text
    assert "kaltstart-gateway-metrics" in text


def test_every_ci_file_renders_every_workload_with_resources(chart: helm_python.Chart) -> None:
    for path in CI_VALUES:
        for workload, pod in render(chart, load_values(path)).pod_specs():
            for container in pod["containers"]:
                assert container.get("resources"), f"{path.name}: {workload['metadata']['name']}"
