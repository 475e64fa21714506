"""The chart against the real code that reads what it renders: the gateway's annotation parser, settings and
API key loader, and the runtime's flag parser."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import helm_python
import pytest

from gateway.api.auth import ApiKeys, Grant
from gateway.backends.kubernetes.claims import Route, RouteError, routes_of
from gateway.settings import GatewaySettings
from runtime.settings import RuntimeSettings
from tests.chart.rendering import CHART_DIR, NAMESPACE, Manifest, load_values, render
from tests.kube.full_decision import build_routes

pytestmark = pytest.mark.chart

TWO_MODELS = load_values(CHART_DIR / "ci" / "two-models-values.yaml")
POD_NAME = "kaltstart-gateway-7d9f8-abcde"


def _gateway_environ(container: Manifest) -> dict[str, str]:
    """The environment the kubelet would give the container, with dummies for the downward API and Secrets,
    and ``$(VAR)`` expanded from earlier variables as Kubernetes does."""
    environ: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            environ[item["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: environ[m.group(1)], item["value"]
            )
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            environ[item["name"]] = {"metadata.name": POD_NAME, "metadata.namespace": NAMESPACE}[field]
        else:
            assert "secretKeyRef" in source, item
            environ[item["name"]] = "dummy-secret-0123456789"
    return environ


def _models(chart: helm_python.Chart) -> list[Manifest]:
    return [
        d
        for d in render(chart, TWO_MODELS).of_kind("Deployment")
        if d["metadata"]["labels"].get("kaltstart.dev/enabled")
    ]


def test_the_gateway_routes_every_rendered_model(chart: helm_python.Chart) -> None:
    routes: dict[str, Route] = {}
    for deployment in _models(chart):
        found = routes_of(deployment)
        assert not isinstance(found, RouteError), found.message
        routes.update({route.model.name: route for route in found})
    assert sorted(routes) == ["llama-3.2-1b", "qwen", "qwen2.5-0.5b"]
    qwen = routes["qwen2.5-0.5b"]
    assert routes["qwen"].deployment == qwen.deployment
    assert (qwen.deployment.namespace, qwen.deployment.name) == (NAMESPACE, "kaltstart-qwen2-5-0-5b")
    assert (qwen.service, qwen.port) == ("kaltstart-qwen2-5-0-5b", "http")
    assert (qwen.model.max_replicas, qwen.model.idle_timeout_s, qwen.model.cold_start_timeout_s) == (2, 300.0, 600.0)
    assert (qwen.model.max_batch_size, qwen.model.max_batch_delay_s, qwen.model.target_queue_per_replica) == (
        32,
        0.01,
        32,
    )
    llama = routes["llama-3.2-1b"].model
    assert (llama.min_replicas, llama.max_replicas, llama.idle_timeout_s) == (0, 1, 900.0)
    assert (llama.idle_policy, llama.cold_start_cost_s, qwen.model.idle_policy) == ("adaptive", 600.0, "fixed")
    _, errors = build_routes(_models(chart))
    assert errors == []


def test_unset_settings_take_the_gateway_defaults(chart: helm_python.Chart) -> None:
    (deployment,) = [
        d
        for d in render(chart, {"models": [{"name": "tiny", "source": "org/tiny"}]}).of_kind("Deployment")
        if d["metadata"]["name"] == "kaltstart-tiny"
    ]
    found = routes_of(deployment)
    assert not isinstance(found, RouteError), found.message
    (route,) = found
    assert route.model.idle_timeout_s == 300.0
    assert route.model.max_replicas == 1


def test_a_model_s_lora_adapters_are_routed_to_its_deployment(chart: helm_python.Chart) -> None:
    adapters = {"support-bot": "org/support-lora@v2", "legal": "/var/lib/kaltstart/adapters/legal"}
    values = {"models": [{"name": "qwen", "source": "Qwen/Qwen2.5-0.5B-Instruct", "adapters": adapters}]}
    rendered = render(chart, values).of_kind("Deployment")
    (deployment,) = [d for d in rendered if d["metadata"]["name"] == "kaltstart-qwen"]
    found = routes_of(deployment)
    assert not isinstance(found, RouteError), found.message
    served = {r.model.name: r.model.adapter for r in found}
    assert served.keys() == {"qwen", "support-bot", "legal"}
    assert served["qwen"] is None
    assert {name: (a.base, a.source) for name, a in served.items() if a is not None} == {
        name: ("qwen", source) for name, source in adapters.items()
    }
    assert {r.deployment for r in found} == {found[0].deployment}


def test_adapters_on_an_openai_compatible_server_do_not_render(chart: helm_python.Chart) -> None:
    model = {"name": "big", "source": "org/big", "runtime": "vllm", "adapters": {"a": "org/a"}}
    with pytest.raises(Exception, match="adapters is a setting of the kaltstart runtime"):
        render(chart, {"models": [model]})


def test_the_runtime_accepts_the_rendered_flags(chart: helm_python.Chart) -> None:
    for deployment in _models(chart):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        settings = RuntimeSettings.from_args(container["args"], {})
        served = deployment["metadata"]["annotations"]["kaltstart.dev/models"]
        assert settings.model_name == served
        assert (settings.host, settings.device, str(settings.cache_dir)) == (
            "0.0.0.0",
            "cuda",
            "/var/lib/kaltstart/models",
        )
        assert settings.port == container["ports"][0]["containerPort"]
        batch = deployment["metadata"]["annotations"].get("kaltstart.dev/max-batch-size")
        if batch is not None:
            assert settings.max_batch_size == int(batch)


@pytest.mark.parametrize(
    ("values", "redis_url"),
    [
        ({}, "redis://:dummy-secret-0123456789@kaltstart-redis:6379/0"),
        ({"redis": {"url": "redis://redis.example:6379/2"}}, "redis://redis.example:6379/2"),
        ({"redis": {"existingSecret": "redis-url"}}, "dummy-secret-0123456789"),
    ],
)
def test_the_gateway_settings_parse_the_rendered_environment(
    chart: helm_python.Chart, values: dict[str, object], redis_url: str
) -> None:
    deployment = render(chart, values).get("Deployment", "kaltstart-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = GatewaySettings.from_env(_gateway_environ(container))
    assert settings.backend == "kubernetes"
    server, kube = settings.server, settings.kubernetes
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (server.host, server.port, server.metrics_port) == ("0.0.0.0", ports["http"], ports["metrics"])
    assert server.metrics_port != server.port
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert server.api_keys_file == Path(mounts["api-keys"]) / "api-keys"
    assert server.api_keys == ()
    assert server.redis_url == redis_url
    assert server.runtime_token == "dummy-secret-0123456789"  # from the runtime token Secret
    assert server.allow_anonymous is False
    assert server.gateway_id == POD_NAME
    assert kube.namespaces == (NAMESPACE,)
    assert (kube.lease_name, kube.lease_namespace) == ("kaltstart-gateway", NAMESPACE)
    assert kube.kubeconfig is None
    assert kube.route_allow_list == {}


@pytest.mark.security
def test_the_gateway_reads_the_rendered_route_allow_list(chart: helm_python.Chart) -> None:
    values = {"gateway": {"routeAllowList": {"llama-70b": "models/llama", "qwen": ["team-a", "team-b/qwen"]}}}
    deployment = render(chart, values).get("Deployment", "kaltstart-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    kube = GatewaySettings.from_env(_gateway_environ(container)).kubernetes
    assert kube.route_allow_list == {"llama-70b": ("models/llama",), "qwen": ("team-a", "team-b/qwen")}


def test_open_api_only_when_keys_are_turned_off(chart: helm_python.Chart) -> None:
    values = {"gateway": {"apiKeys": {"enabled": False}, "allowAnonymous": True}}
    deployment = render(chart, values).get("Deployment", "kaltstart-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    server = GatewaySettings.from_env(_gateway_environ(container)).server
    assert (server.api_keys_file, server.api_keys) == (None, ())
    assert ApiKeys.configured(server.api_keys, server.api_keys_file) is None  # what the gateway takes for "open"
    assert server.allow_anonymous  # said explicitly: the gateway would refuse an open API on 0.0.0.0 otherwise


@pytest.mark.security
def test_keys_off_without_allow_anonymous_does_not_render(chart: helm_python.Chart) -> None:
    """The gateway listens on 0.0.0.0: an open API must be asked for in so many words, at render time already,
    rather than a gateway that refuses to start (``KALTSTART_ALLOW_ANONYMOUS``)."""
    with pytest.raises(helm_python.HelmError, match=r"gateway\.allowAnonymous"):
        render(chart, {"gateway": {"apiKeys": {"enabled": False}}})


@pytest.mark.security
def test_the_gateway_and_the_model_pods_share_the_runtime_token(chart: helm_python.Chart) -> None:
    """One Secret, kept across upgrades: the gateway sends the token, the chart's model pods require it."""
    rendered = render(chart, TWO_MODELS)
    gateway = rendered.get("Deployment", "kaltstart-gateway")["spec"]["template"]["spec"]["containers"][0]
    refs = [_token_ref(gateway)]
    for deployment in _models(chart):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        refs.append(_token_ref(container))
        environ = {item["name"]: "dummy-secret-0123456789" for item in container["env"] if "valueFrom" in item}
        assert RuntimeSettings.from_args(container["args"], environ).token == "dummy-secret-0123456789"
        assert "--announce-to" not in container["args"]  # no secret on a command line
    assert refs == [{"name": "kaltstart-runtime-token", "key": "runtime-token"}] * 3
    secret = rendered.get("Secret", "kaltstart-runtime-token")
    token = base64.b64decode(secret["data"]["runtime-token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
    own = render(chart, {"runtime": {"token": {"existingSecret": "my-token", "existingSecretKey": "t"}}})
    assert [s["metadata"]["name"] for s in own.of_kind("Secret") if "token" in s["metadata"]["name"]] == []
    gateway = own.get("Deployment", "kaltstart-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert _token_ref(gateway) == {"name": "my-token", "key": "t"}


def _token_ref(container: Manifest) -> dict[str, str]:
    (item,) = [item for item in container["env"] if item["name"] == "KALTSTART_RUNTIME_TOKEN"]
    ref: dict[str, str] = item["valueFrom"]["secretKeyRef"]
    return ref


def test_the_gateway_accepts_the_generated_key_file(chart: helm_python.Chart, tmp_path: Path) -> None:
    """The Secret's file, as the volume would hold it, read by the gateway's own loader."""
    rendered = render(chart)
    pod = rendered.get("Deployment", "kaltstart-gateway")["spec"]["template"]["spec"]
    (volume,) = [v["secret"] for v in pod["volumes"] if v["name"] == "api-keys"]
    (item,) = volume["items"]
    data = rendered.get("Secret", volume["secretName"])["data"][item["key"]]
    key_file = tmp_path / item["path"]
    key_file.write_bytes(base64.b64decode(data))
    keys = ApiKeys.configured((), key_file)
    assert keys is not None
    key = key_file.read_text().strip()
    assert _every_model(keys.lookup(key))
    assert keys.lookup(key[:-1]) is None
    assert keys.lookup("") is None


def _every_model(grant: Grant | None) -> bool:
    """A key valid for every model (its account and label are its own)."""
    return grant is not None and grant.models is None
