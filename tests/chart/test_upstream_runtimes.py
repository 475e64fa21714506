"""Model entries served by vLLM or SGLang (``runtime: vllm | sglang``, issue #25): the pod runs the pinned server
image with its flags, probes its health route, reads Hugging Face's cache on the node-local volume, and its
Deployment carries the ``openai`` protocol's annotations; settings that contradict the runtime do not render.

Rendering only: no vLLM or SGLang ran here (no GPU, no cluster). The prefetch test runs the rendered fill command
for real, offline, against a seeded cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from gateway.backends.kubernetes.claims import KNOWN_KEYS, RouteError, routes_of
from tests.chart.rendering import CHART_DIR, REPO, Manifest, load_values, render

pytestmark = pytest.mark.chart

CACHE_DIR = "/var/lib/kaltstart/models"
VLLM = {
    "name": "llama-8b",
    "aliases": ["llama"],
    "runtime": "vllm",
    "source": "meta-llama/Llama-3.1-8B-Instruct@0e9e39f",
    "maxConcurrency": 32,
    "maxContextTokens": 8192,
    "maxReplicas": 2,
    "extraArgs": ["--max-num-seqs", "64"],
}
SGLANG = {"name": "qwen-7b", "runtime": "sglang", "source": "Qwen/Qwen2.5-7B-Instruct", "dtype": "bfloat16"}
TWO_MODELS = load_values(CHART_DIR / "ci" / "two-models-values.yaml")
#: The settings #25 adds, as annotation keys (the gateway knows the others already).
OPENAI_KEYS = {"protocol", "upstream-model", "health-path", "max-concurrency"}


def _pod(chart: helm_python.Chart, model: dict[str, Any], **values: Any) -> tuple[Manifest, Manifest]:
    """(Deployment, pod spec) of the one model entry rendered."""
    rendered = render(chart, {"models": [model], **values})
    deployment = next(d for d in rendered.of_kind("Deployment") if d["metadata"]["labels"].get("kaltstart.dev/enabled"))
    return deployment, deployment["spec"]["template"]["spec"]


def _env(container: Manifest) -> dict[str, str]:
    return {item["name"]: item.get("value", "<from a Secret>") for item in container["env"]}


def test_a_vllm_model_runs_the_pinned_vllm_server(chart: helm_python.Chart) -> None:
    _, pod = _pod(chart, VLLM)
    (server,) = pod["containers"]
    assert server["name"] == "vllm"
    assert server["image"] == "vllm/vllm-openai:v0.29.0"
    assert server["command"] == ["vllm", "serve"]
    assert server["args"] == [
        "--model", "meta-llama/Llama-3.1-8B-Instruct",
        "--revision", "0e9e39f",
        "--served-model-name", "llama-8b",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--dtype", "auto",
        "--max-model-len", "8192",
        "--max-num-seqs", "64",
    ]  # fmt: skip
    assert server["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_an_sglang_model_runs_the_pinned_sglang_server(chart: helm_python.Chart) -> None:
    _, pod = _pod(chart, SGLANG)
    (server,) = pod["containers"]
    assert (server["name"], server["image"]) == ("sglang", "lmsysorg/sglang:v0.5.19-cu129")
    assert server["command"] == ["python3", "-m", "sglang.launch_server"]
    assert server["args"] == [
        "--model-path", "Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name", "qwen-7b",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--dtype", "bfloat16",
    ]  # fmt: skip
    assert _pod(chart, SGLANG | {"maxContextTokens": 4096})[1]["containers"][0]["args"][-2:] == [
        "--context-length",
        "4096",
    ]


@pytest.mark.parametrize("model", [VLLM, SGLANG], ids=["vllm", "sglang"])
def test_the_probes_ask_the_servers_health_route_with_the_runtimes_budget(
    chart: helm_python.Chart, model: dict[str, Any]
) -> None:
    (server,) = _pod(chart, model)[1]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
        assert server[probe]["timeoutSeconds"] == 5
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    custom = _pod(chart, model | {"healthPath": "/ping"})[1]["containers"][0]
    assert custom["readinessProbe"]["httpGet"]["path"] == "/ping"


@pytest.mark.parametrize("model", [VLLM, SGLANG], ids=["vllm", "sglang"])
def test_hf_home_is_on_the_models_node_local_cache(chart: helm_python.Chart, model: dict[str, Any]) -> None:
    name = model["name"]
    _, pod = _pod(chart, model, runtime={"hfToken": {"existingSecret": "hf"}})
    (server,) = pod["containers"]
    env = _env(server)
    assert env["HF_HOME"] == f"{CACHE_DIR}/huggingface"
    assert (env["HOME"], env["USER"], env["HF_TOKEN"]) == ("/tmp", "kaltstart", "<from a Secret>")
    assert {"name": "model-cache", "mountPath": CACHE_DIR} in server["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["hostPath"] == {"path": f"{CACHE_DIR}/kaltstart-{name}", "type": "DirectoryOrCreate"}
    (chown,) = pod["initContainers"]  # the directory a kubelet creates is root's: handed to user 10001 first
    assert chown["command"] == ["chown", "10001:10001", CACHE_DIR]


def test_the_deployment_carries_the_openai_protocols_annotations(chart: helm_python.Chart) -> None:
    deployment, _ = _pod(chart, VLLM)
    assert deployment["spec"]["replicas"] == 0
    assert deployment["metadata"]["annotations"] == {
        "kaltstart.dev/models": "llama-8b,llama",
        "kaltstart.dev/service": "kaltstart-llama-8b",
        "kaltstart.dev/port": "http",
        "kaltstart.dev/protocol": "openai",
        "kaltstart.dev/upstream-model": "llama-8b",  # the --served-model-name
        "kaltstart.dev/health-path": "/health",
        "kaltstart.dev/max-concurrency": "32",
        "kaltstart.dev/max-replicas": "2",
    }
    sglang, _ = _pod(chart, SGLANG | {"upstreamModel": "Qwen/Qwen2.5-7B-Instruct"})
    annotations = sglang["metadata"]["annotations"]
    assert annotations["kaltstart.dev/upstream-model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert "kaltstart.dev/max-concurrency" not in annotations  # the gateway's default
    (server,) = sglang["spec"]["template"]["spec"]["containers"]
    assert server["args"][server["args"].index("--served-model-name") + 1] == "Qwen/Qwen2.5-7B-Instruct"


@pytest.mark.parametrize("model", [VLLM, SGLANG], ids=["vllm", "sglang"])
def test_the_server_pods_pass_the_chart_checks_of_model_pods(chart: helm_python.Chart, model: dict[str, Any]) -> None:
    """What test_manifests asks of the kaltstart runtime's pods: restricted container, user 10001, read-only root
    file system with /tmp and a memory-backed /dev/shm, a GPU, resources, no service links or token, the Service
    and NetworkPolicy port."""
    rendered = render(chart, {"models": [model]})
    name = f"kaltstart-{model['name']}"
    deployment = rendered.get("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    context = server["securityContext"]
    assert (context["runAsUser"], context["runAsNonRoot"], context["allowPrivilegeEscalation"]) == (10001, True, False)
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["automountServiceAccountToken"], pod["enableServiceLinks"]) == (False, False)
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert (mounts["tmp"], mounts["dshm"]) == ("/tmp", "/dev/shm")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    assert server["resources"]["requests"] and server["resources"]["limits"]["memory"] == "32Gi"
    service = rendered.get("Service", deployment["metadata"]["annotations"]["kaltstart.dev/service"])
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    (policy,) = [p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"] == "kaltstart-models"]
    assert [port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]] == [8000]
    assert "KALTSTART_RUNTIME_TOKEN" not in _env(server)  # the servers know no such token (docs/vllm.md)


def test_a_preset_may_loosen_the_security_context(chart: helm_python.Chart) -> None:
    runtimes = {"vllm": {"securityContext": {"readOnlyRootFilesystem": False}, "image": "mirror/vllm@sha256:ab"}}
    (server,) = _pod(chart, VLLM, runtimes=runtimes)[1]["containers"]
    assert server["securityContext"]["readOnlyRootFilesystem"] is False
    assert server["securityContext"]["runAsUser"] == 10001  # the rest stays
    assert server["image"] == "mirror/vllm@sha256:ab"


def test_env_comes_from_the_preset_then_runtime_then_the_model(chart: helm_python.Chart) -> None:
    model = VLLM | {"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]}
    (server,) = _pod(chart, model, runtime={"env": [{"name": "TZ", "value": "UTC"}]})[1]["containers"]
    names = [item["name"] for item in server["env"]]
    assert names[-4:] == ["VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "TZ", "HF_HUB_OFFLINE"]


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (
            {"name": "m", "source": "a/b", "protocol": "openai"},
            'models: "m": protocol "openai" needs an OpenAI-compatible server: set runtime: vllm or sglang',
        ),
        (
            {"name": "m", "source": "a/b", "runtime": "kaltstart", "maxConcurrency": 8},
            'models: "m": maxConcurrency applies to runtime vllm or sglang only',
        ),
        ({"name": "m", "source": "a/b", "upstreamModel": "x"}, "upstreamModel applies to runtime vllm or sglang"),
        ({"name": "m", "source": "a/b", "healthPath": "/health"}, "healthPath applies to runtime vllm or sglang"),
        (
            {"name": "m", "source": "a/b", "runtime": "vllm", "protocol": "kaltstart"},
            'models: "m": runtime vllm speaks protocol openai, not "kaltstart"',
        ),
        (
            {"name": "m", "source": "a/b", "runtime": "sglang", "maxBatchSize": 16},
            'models: "m": maxBatchSize is a setting of the kaltstart runtime, not of runtime sglang',
        ),
        ({"name": "m", "source": "a/b", "runtime": "vllm", "device": "cuda"}, "device is a setting of the kaltstart"),
    ],
)
def test_settings_that_contradict_the_runtime_do_not_render(
    chart: helm_python.Chart, model: dict[str, Any], why: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=why):
        render(chart, {"models": [model]})


@pytest.mark.parametrize(
    ("model", "where", "why"),
    [
        ({"runtime": "tgi"}, "/models/0/runtime", "must be one of"),
        ({"protocol": "http"}, "/models/0/protocol", "must be one of"),
        ({"healthPath": "health"}, "/models/0/healthPath", "pattern"),
        ({"maxConcurrency": 0}, "/models/0/maxConcurrency", "minimum"),
        ({"upstreamModel": "a b"}, "/models/0/upstreamModel", "pattern"),
    ],
)
def test_the_schema_rejects_unknown_runtimes_and_bad_settings(
    chart: helm_python.Chart, model: dict[str, Any], where: str, why: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema({"models": [{"name": "m", "source": "a/b", "runtime": "vllm"} | model]})
    assert f"at '{where}'" in str(caught.value) and why in str(caught.value)


def test_protocol_kaltstart_by_hand_is_the_default_spelled_out(chart: helm_python.Chart) -> None:
    deployment, _ = _pod(chart, {"name": "tiny", "source": "org/tiny", "protocol": "kaltstart"})
    assert deployment["metadata"]["annotations"]["kaltstart.dev/protocol"] == "kaltstart"
    plain, _ = _pod(chart, {"name": "tiny", "source": "org/tiny", "runtime": "kaltstart"})
    assert not any(key.startswith("kaltstart.dev/protocol") for key in plain["metadata"]["annotations"])
    assert plain["spec"]["template"]["spec"]["containers"][0]["name"] == "runtime"


def test_an_entry_without_runtime_renders_as_before(chart: helm_python.Chart) -> None:
    """``runtime: kaltstart`` (or none) is the runtime's rendering, and a vLLM entry beside them changes nothing in
    theirs."""
    alone = render(chart, TWO_MODELS)
    spelled = render(chart, {**TWO_MODELS, "models": [m | {"runtime": "kaltstart"} for m in TWO_MODELS["models"]]})
    beside = render(chart, {**TWO_MODELS, "models": [*TWO_MODELS["models"], VLLM]})
    for name in ("kaltstart-qwen2-5-0-5b", "kaltstart-llama-3-2-1b"):
        assert spelled.get("Deployment", name) == alone.get("Deployment", name)
        assert beside.get("Deployment", name) == alone.get("Deployment", name)


def test_prefetch_fills_the_servers_hugging_face_cache(chart: helm_python.Chart, tmp_path: Path) -> None:
    """The DaemonSet's fill for a vLLM model writes where the server's HF_HOME reads: its command, run here
    offline against a seeded cache under that HF_HOME, resolves the snapshot, and so does huggingface_hub's
    snapshot_download (what vLLM and SGLang call) with the server's environment."""
    local = {"name": "local", "runtime": "sglang", "source": "/models/local"}
    rendered = render(chart, {"prefetch": {"enabled": True}, "models": [VLLM | {"source": "org/tiny"}, local]})
    pod = rendered.get("DaemonSet", "kaltstart-prefetch")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["cache-permissions", "fill-0"]  # a directory: no fill
    (fill,) = pod["initContainers"][1:]
    assert fill["command"][:3] == ["hf", "download", "org/tiny"]
    assert {"name": "model-cache-0", "mountPath": CACHE_DIR} in fill["volumeMounts"]
    (server,) = _pod(chart, VLLM | {"source": "org/tiny"})[1]["containers"]
    assert _env(fill)["HF_HOME"] == _env(server)["HF_HOME"]

    node_cache = tmp_path / "node"  # the model's hostPath directory, as both containers mount it
    snapshot = _seed_hub_cache(node_cache / "huggingface", "org/tiny")
    inherited = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    offline = inherited | {"HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    hf = Path(sys.executable).parent / "hf"
    fill_env = offline | {"HF_HOME": _env(fill)["HF_HOME"].replace(CACHE_DIR, str(node_cache))}
    filled = subprocess.run(
        [str(hf), *fill["command"][1:]], env=fill_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert filled.returncode == 0, filled.stderr
    assert str(snapshot) in filled.stdout
    server_env = offline | {"HF_HOME": _env(server)["HF_HOME"].replace(CACHE_DIR, str(node_cache))}
    lookup = "from huggingface_hub import snapshot_download; print(snapshot_download('org/tiny'))"
    found = subprocess.run(
        [sys.executable, "-c", lookup], env=server_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(snapshot)


def _seed_hub_cache(hf_home: Path, repo: str) -> Path:
    """Hugging Face's cache layout for one downloaded revision of ``repo`` (what ``hf download`` leaves)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


@pytest.mark.skipif("protocol" not in KNOWN_KEYS, reason="the gateway reads kaltstart.dev/protocol from #25 on")
def test_the_gateway_routes_a_rendered_vllm_model(chart: helm_python.Chart) -> None:
    deployment, _ = _pod(chart, VLLM)
    found = routes_of(deployment)
    assert not isinstance(found, RouteError), found.message
    assert sorted(route.model.name for route in found) == ["llama", "llama-8b"]


def _documented_deployment() -> tuple[Manifest, Manifest]:
    """The hand-written Deployment and Service of docs/vllm.md."""
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "docs" / "vllm.md").read_text(), flags=re.DOTALL)
    objects = [doc for block in blocks for doc in yaml.safe_load_all(block) if isinstance(doc, dict) and "kind" in doc]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (service,) = [o for o in objects if o["kind"] == "Service"]
    return deployment, service


def test_the_documented_deployment_says_what_the_chart_renders(chart: helm_python.Chart) -> None:
    """docs/vllm.md's hand-written alternative: the same annotations, probes, served name, port and user."""
    deployment, service = _documented_deployment()
    annotations = deployment["metadata"]["annotations"]
    keys = {key.removeprefix("kaltstart.dev/") for key in annotations}
    assert keys <= KNOWN_KEYS | OPENAI_KEYS
    rendered, _ = _pod(chart, VLLM)
    assert keys >= OPENAI_KEYS and annotations["kaltstart.dev/protocol"] == "openai"
    assert deployment["metadata"]["labels"] == {"kaltstart.dev/enabled": "true"}
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    args = server["args"]
    assert args[args.index("--served-model-name") + 1] == annotations["kaltstart.dev/upstream-model"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == annotations["kaltstart.dev/health-path"]
    assert server["image"] == rendered["spec"]["template"]["spec"]["containers"][0]["image"]
    assert (pod["securityContext"]["runAsUser"], server["securityContext"]["readOnlyRootFilesystem"]) == (10001, True)
    assert service["metadata"]["name"] == annotations["kaltstart.dev/service"]
    assert service["spec"]["ports"][0]["name"] == annotations["kaltstart.dev/port"] == server["ports"][0]["name"]


@pytest.mark.skipif("protocol" not in KNOWN_KEYS, reason="the gateway reads kaltstart.dev/protocol from #25 on")
def test_the_gateway_routes_the_documented_deployment() -> None:
    deployment, _ = _documented_deployment()
    found = routes_of(deployment)
    assert not isinstance(found, RouteError), found.message
    assert sorted(route.model.name for route in found) == ["qwen", "qwen2.5-7b"]


def test_strict_lint_with_a_vllm_and_an_sglang_model() -> None:
    report = helm_python.lint(CHART_DIR, {"models": [VLLM, SGLANG], "prefetch": {"enabled": True}}, strict=True)
    problems = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    assert problems + list(report["errors"]) == []
