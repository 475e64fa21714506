"""The chart lints strictly, renders with its defaults and every ci/ values file, and its schema rejects wrong
values with a message that names the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.chart.rendering import CHART_DIR, CI_VALUES, load_values, render

pytestmark = pytest.mark.chart

WARNING = 2


def _problems(report: dict[str, Any]) -> list[str]:
    """Lint errors, and messages at warning severity or above (what `helm lint --strict` fails on)."""
    found = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= WARNING]
    return found + list(report["errors"])


def test_metadata(chart: helm_python.Chart) -> None:
    meta = chart.metadata
    assert (meta["apiVersion"], meta["name"], meta["version"], meta["appVersion"]) == (
        "v2",
        "kaltstart",
        "0.1.0",
        "0.1.0",
    )


def test_strict_lint_with_defaults() -> None:
    report = helm_python.lint(CHART_DIR, strict=True, namespace="llm")
    assert _problems(report) == []


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_lint_and_render(chart: helm_python.Chart, values_file: Path) -> None:
    values = load_values(values_file)
    assert _problems(helm_python.lint(CHART_DIR, values, strict=True)) == []  # as `ct lint` does: no namespace
    rendered = render(chart, values)
    assert len(rendered.of_kind("Deployment")) == 1 + len(values.get("models", []))


def test_ci_covers_two_models_and_external_redis() -> None:
    all_values = [load_values(path) for path in CI_VALUES]
    assert any(len(v.get("models", [])) >= 2 for v in all_values)
    assert any(v.get("redis", {}).get("url") or v.get("redis", {}).get("existingSecret") for v in all_values)


def test_defaults_render_a_gateway_and_a_bundled_redis(chart: helm_python.Chart) -> None:
    rendered = render(chart)
    kinds = sorted({obj["kind"] for obj in rendered.objects})
    assert kinds == [
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    assert [d["metadata"]["name"] for d in rendered.of_kind("Deployment")] == ["kaltstart-gateway"]


@pytest.mark.parametrize(
    ("values", "where", "why"),
    [
        ({"models": [{"name": "llama"}]}, "/models/0", "missing property 'source'"),
        ({"models": [{"source": "org/model"}]}, "/models/0", "missing property 'name'"),
        ({"models": [{"name": "bad name", "source": "a/b"}]}, "/models/0/name", "does not match pattern"),
        (
            {"models": [{"name": "m", "source": "a/b", "aliases": ["ok", "no spaces"]}]},
            "/models/0/aliases/1",
            "pattern",
        ),
        ({"models": [{"name": "m", "source": "a/b", "idleTimeout": "5 minutes"}]}, "/models/0/idleTimeout", "pattern"),
        ({"models": [{"name": "m", "source": "a/b", "maxBatchDelay": "10 ms"}]}, "/models/0/maxBatchDelay", "pattern"),
        ({"models": [{"name": "m", "source": "a/b", "maxReplicas": 0}]}, "/models/0/maxReplicas", "minimum"),
        ({"models": [{"name": "m", "source": "a/b", "maxBatchSize": "16"}]}, "/models/0/maxBatchSize", "want integer"),
        ({"models": [{"name": "m", "source": "a/b", "idelTimeout": "5s"}]}, "/models/0", "'idelTimeout' not allowed"),
        ({"models": [{"name": "m", "source": "a/b", "dtype": "fp8"}]}, "/models/0/dtype", "must be one of"),
        ({"gateway": {"replicas": "two"}}, "/gateway/replicas", "want integer"),
        ({"gateway": {"logLevel": "LOUD"}}, "/gateway/logLevel", "must be one of"),
        ({"gateway": {"metricsPort": "abc"}}, "/gateway/metricsPort", "want integer"),
        ({"gateway": {"metricsPort": 70000}}, "/gateway/metricsPort", "maximum"),
        ({"gateway": {"apiKeys": {"enabled": "yes"}}}, "/gateway/apiKeys/enabled", "want boolean"),
        ({"gateway": {"apiKeys": {"existingSecret": "My_Keys"}}}, "/gateway/apiKeys/existingSecret", "pattern"),
        ({"gateway": {"apiKeys": {"secretKey": "keys/file"}}}, "/gateway/apiKeys/secretKey", "pattern"),
        ({"gateway": {"apiKeys": {"keys": ["sk-123"]}}}, "/gateway/apiKeys", "'keys' not allowed"),
        ({"gateway": {"routeAllowList": {"llama": "Models/llama"}}}, "/gateway/routeAllowList/llama", "oneOf"),
        ({"gateway": {"routeAllowList": {"llama": []}}}, "/gateway/routeAllowList/llama", "oneOf"),
        ({"gateway": {"routeAllowList": {"no spaces": "models"}}}, "", "invalid propertyName 'no spaces'"),
        ({"networkPolicy": {"metricsFrom": [{}]}}, "/networkPolicy/metricsFrom/0", "minProperties"),
        (
            {"networkPolicy": {"metricsFrom": [{"podSelecter": {}}]}},
            "/networkPolicy/metricsFrom/0",
            "'podSelecter' not allowed",
        ),
        ({"runtime": {"device": "tpu"}}, "/runtime/device", "must be one of"),
        ({"runtime": {"cacheDir": "relative/dir"}}, "/runtime/cacheDir", "pattern"),
        ({"redis": {"url": "http://redis:6379"}}, "/redis/url", "pattern"),
        ({"redis": {"auth": {"password": "has@and:"}}}, "/redis/auth/password", "pattern"),
        ({"redis": {"persistence": {"size": "lots"}}}, "/redis/persistence/size", "pattern"),
        ({"image": {"gateway": {"pullPolicy": "Sometimes"}}}, "/image/gateway/pullPolicy", "must be one of"),
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled", "want boolean"),
        ({"gatway": {"replicas": 1}}, "", "'gatway' not allowed"),
    ],
)
def test_schema_rejects_with_the_key(chart: helm_python.Chart, values: dict[str, Any], where: str, why: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema(values)
    message = str(caught.value)
    assert f"at '{where}'" in message
    assert why in message
    with pytest.raises(helm_python.HelmValuesError):
        render(chart, values)


@pytest.mark.parametrize(
    ("values", "why"),
    [
        (
            {"gateway": {"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 35}},
            "terminationGracePeriodSeconds",
        ),
        (
            {"models": [{"name": "a.b", "source": "x/y"}, {"name": "a-b", "source": "x/z"}]},
            "would both be named kaltstart-a-b",
        ),
        ({"models": [{"name": "redis", "source": "x/y"}]}, "taken by the chart's own redis"),
        ({"models": [{"name": "gateway-metrics", "source": "x/y"}]}, "taken by the chart's own gateway-metrics"),
        ({"gateway": {"port": 9090, "metricsPort": 9090}}, "metricsPort must differ from gateway.port"),
        (
            {"models": [{"name": "a", "source": "x/y", "aliases": ["b"]}, {"name": "b", "source": "x/z"}]},
            'the name "b" is served twice',
        ),
        (
            {"gateway": {"namespaces": ["other"]}, "models": [{"name": "a", "source": "x/y"}]},
            "must include the release namespace llm",
        ),
        (  # model pods would get the gateway's URL, which reads and writes every queue
            {"redis": {"url": "redis://r:6379/0"}, "models": [{"name": "a", "source": "x/y"}]},
            "needs a publish-only URL for the model pods: set redis.announceUrl or redis.announceExistingSecret",
        ),
        (
            {"redis": {"existingSecret": "r"}, "models": [{"name": "a", "source": "x/y"}]},
            "needs a publish-only URL for the model pods",
        ),
        (
            {
                "redis": {"url": "redis://r:6379/0", "announceUrl": "redis://r:6379/0"},
                "models": [{"name": "a", "source": "x/y"}],
            },
            "redis.announceUrl is the gateway's redis.url",
        ),
    ],
)
def test_template_checks_fail_with_a_reason(chart: helm_python.Chart, values: dict[str, Any], why: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=why):
        render(chart, values)


#: Maps whose keys are the user's own (Kubernetes resource names, labels): documented as one value.
OPAQUE = {"resources", "nodeSelector", "labels", "annotations", "strategy", "fixPermissionsResources"}


def _leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in OPAQUE:
            paths.extend(_leaves(value, f"{path}."))
        else:
            paths.append(path)
    return paths


def test_readme_documents_every_value(chart: helm_python.Chart) -> None:
    readme = (CHART_DIR / "README.md").read_text()
    missing = [path for path in _leaves(chart.values) if f"`{path}`" not in readme]
    assert missing == []
    schema = chart.schema
    assert schema is not None
    model_keys = schema["properties"]["models"]["items"]["properties"]
    assert [key for key in model_keys if f"`models[].{key}`" not in readme] == []
