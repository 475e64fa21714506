from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from starlette.applications import Starlette

from gateway.api.serving import quiet_request_logs, uvicorn_config
from gateway.backends.kubernetes.claims import KNOWN_KEYS
from gateway.backends.local.config import LocalConfig, LocalModel, dump_local_config, load_local_config
from gateway.errors import ConfigError
from gateway.settings import (
    GatewaySettings,
    KubernetesSettings,
    LocalSettings,
    ModelSettings,
    QueueSettings,
    ServerSettings,
    keys_of,
    parse_duration_s,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "seconds"), [("300s", 300.0), ("20ms", 0.02), ("5m", 300.0), ("1h", 3600.0), ("2.5", 2.5), (7, 7.0)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-1s", "5d", "1e9999"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


def test_model_settings_from_keys() -> None:
    s = ModelSettings.parse(
        "llama",
        {"min-replicas": "1", "max-replicas": "3", "idle-timeout": "2m", "max-batch-delay": "5ms", "other": "x"},
    )
    assert (s.min_replicas, s.max_replicas, s.idle_timeout_s, s.max_batch_delay_s) == (1, 3, 120.0, 0.005)
    assert s.cold_start_timeout_s == 600.0  # default


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"max-replicas": "0"}, "max-replicas"),
        ({"idle-timeout": "soon"}, "idle-timeout"),
        ({"max-batch-size": "1.5"}, "max-batch-size"),
        ({"min-replicas": "2", "max-replicas": "1"}, "min-replicas"),
    ],
)
def test_model_settings_errors_name_the_key(values: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelSettings.parse("llama", values)
    assert info.value.key == key
    assert key in str(info.value)


def test_model_name_is_checked() -> None:
    with pytest.raises(ConfigError):
        ModelSettings.parse("bad name!", {})


def test_gateway_settings_from_env() -> None:
    s = GatewaySettings.from_env(
        {"KALTSTART_PORT": "9000", "REDIS_URL": "redis://x", "KALTSTART_REQUEST_TIMEOUT": "30s"}
    )
    assert (s.server.port, s.server.redis_url, s.server.request_timeout_s) == (9000, "redis://x", 30.0)
    assert GatewaySettings.from_env({}).server.port == 8080
    with pytest.raises(ConfigError, match="KALTSTART_MAX_QUEUE"):
        GatewaySettings.from_env({"KALTSTART_MAX_QUEUE": "many"})


def test_local_config(tmp_path: Path) -> None:
    path = tmp_path / "kaltstart.toml"
    path.write_text(
        '[runtime]\ncache-dir = "cache"\n[models.tiny]\nsource = "./model"\nidle-timeout = "10s"\nengine = "echo"\n'
    )
    config = load_local_config(path)
    (model,) = config.models
    assert model.settings.idle_timeout_s == 10.0
    assert model.source == str(tmp_path / "model")
    assert model.engine == "echo"
    assert config.cache_dir == tmp_path / "cache"


def test_local_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "kaltstart.toml"
    path.write_text('[models.tiny]\nsource = "x"\nidle-timout = "10s"\n')
    with pytest.raises(ConfigError, match="idle-timout"):
        load_local_config(path)
    path.write_text('[models.tiny]\nsource = "x"\nmax-replicas = 0\n')
    with pytest.raises(ConfigError, match=r"models\.tiny\.max-replicas"):
        load_local_config(path)


def test_settings_sections_and_overrides() -> None:
    s = GatewaySettings.from_env(
        {"KALTSTART_MAX_QUEUE": "5", "KALTSTART_NAMESPACES": "a, b", "KALTSTART_CONFIG": "m.toml"}
    )
    assert (s.queue.max_queue_per_model, s.kubernetes.namespaces, s.local.config_path) == (
        5,
        ("a", "b"),
        Path("m.toml"),
    )
    changed = s.replace(max_queue_per_model=2, port=1, backend="kubernetes")
    assert (changed.queue.max_queue_per_model, changed.server.port, changed.backend) == (2, 1, "kubernetes")
    with pytest.raises(TypeError):
        s.replace(no_such_setting=1)
    with pytest.raises(ConfigError, match="KALTSTART_BACKEND"):
        GatewaySettings.from_env({"KALTSTART_BACKEND": "nomad"})


def test_model_setting_keys_are_listed_once() -> None:
    assert ModelSettings.keys() == (
        "min-replicas",
        "max-replicas",
        "idle-timeout",
        "park-after",
        "cold-start-timeout",
        "max-batch-size",
        "max-batch-delay",
        "target-queue-per-replica",
        "idle-policy",
        "cold-start-cost",
        "protocol",
        "upstream-model",
        "health-path",
        "max-concurrency",
    )
    s = ModelSettings.parse("m", {"idle-timeout": "90s", "max-batch-delay": "5ms", "max-replicas": 4})
    assert ModelSettings.parse("m", s.to_values()) == s


def test_an_openai_model_names_its_upstream_health_route_and_concurrency() -> None:
    s = ModelSettings.parse(
        "m", {"protocol": "OpenAI", "upstream-model": "org/M-7B", "health-path": "/v1/models", "max-concurrency": 8}
    )
    assert (s.forwards, s.served_name, s.health_path, s.max_concurrency) == (True, "org/M-7B", "/v1/models", 8)
    assert ModelSettings.parse("m", s.to_values()) == s
    ours = ModelSettings.parse("m", {})
    assert (ours.forwards, ours.served_name, ours.health_path, ours.max_concurrency) == (False, "m", "/health", 64)
    bad_values = (("protocol", "grpc"), ("health-path", "health"), ("upstream-model", "a b"), ("max-concurrency", 0))
    for key, bad in bad_values:
        with pytest.raises(ConfigError, match=key):
            ModelSettings.parse("m", {key: bad})


def test_the_idle_policy_is_fixed_or_adaptive() -> None:
    s = ModelSettings.parse("m", {"idle-policy": "Adaptive", "cold-start-cost": "10m"})
    assert (s.idle_policy, s.cold_start_cost_s) == ("adaptive", 600.0)
    assert ModelSettings.parse("m", s.to_values()) == s
    assert ModelSettings(name="m").idle_policy == "fixed"
    with pytest.raises(ConfigError, match="idle-policy"):
        ModelSettings.parse("m", {"idle-policy": "clever"})


def test_local_config_written_reads_back_the_same(tmp_path: Path) -> None:
    model = LocalModel(
        settings=ModelSettings.parse("tiny", {"idle-timeout": "7s", "max-batch-delay": "20ms"}),
        source=str(tmp_path / "model"),
        engine="echo",
        device="cpu",
        args=("--max-prompt-tokens", "64"),
    )
    config = LocalConfig(models=(model,), cache_dir=tmp_path / "cache")
    path = tmp_path / "written.toml"
    path.write_text(dump_local_config(config))
    assert load_local_config(path) == config


def test_every_setting_is_documented() -> None:
    docs = Path(__file__).parents[2] / "docs"
    text = (docs / "configuration.md").read_text() + (docs / "kubernetes.md").read_text()
    names = [*keys_of(ServerSettings), *keys_of(QueueSettings), *keys_of(LocalSettings), *keys_of(KubernetesSettings)]
    names += [*ModelSettings.keys(), "KALTSTART_BACKEND"]
    assert [name for name in names if f"`{name}`" not in text] == []


def test_the_documented_annotations_are_the_ones_the_parser_accepts() -> None:
    repo = Path(__file__).parents[2]
    kubernetes_md = (repo / "docs" / "kubernetes.md").read_text()
    example = kubernetes_md.split("## Annotating a Deployment", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    assert set(re.findall(r"^\s+kaltstart\.dev/([a-z-]+):", example, re.MULTILINE)) == KNOWN_KEYS
    docs = [repo / "README.md", repo / "charts" / "kaltstart" / "README.md", *sorted((repo / "docs").rglob("*.md"))]
    named = {key for path in docs for key in re.findall(r"kaltstart\.dev/([a-z][a-z-]*[a-z])", path.read_text())}
    # ``max-replica`` is the docs' example of a typo the parser refuses.
    assert named - KNOWN_KEYS == {"max-replica"}
    settings = ModelSettings.keys()
    for guide in (repo / "docs" / "helm.md", repo / "charts" / "kaltstart" / "README.md"):
        text = guide.read_text()
        assert [key for key in settings if f"kaltstart.dev/{key}" not in text] == [], guide.name


def test_request_logs_are_off_unless_asked_for() -> None:
    quiet = GatewaySettings.from_env({}).server
    assert uvicorn_config(Starlette(), quiet).access_log is False
    loud = GatewaySettings.from_env({"KALTSTART_ACCESS_LOG": "true"}).server
    assert uvicorn_config(Starlette(), loud).access_log is False  # the gateway's own (``RequestIds``) instead
    assert loud.access_log is True
    quiet_request_logs(quiet)
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    with pytest.raises(ConfigError, match="KALTSTART_ACCESS_LOG"):
        GatewaySettings.from_env({"KALTSTART_ACCESS_LOG": "maybe"})


def test_byte_budget_settings() -> None:
    env = {
        "KALTSTART_MAX_QUEUED_BYTES_PER_MODEL": "128MiB",
        "KALTSTART_MAX_QUEUED_BYTES_PER_KEY": "512KiB",
        "KALTSTART_MAX_CHOICE_BYTES": "1000",
        "KALTSTART_REDIS_MEMORY_HIGH_WATER": "0.9",
    }
    settings = GatewaySettings.from_env(env)
    assert (settings.queue.max_queued_bytes_per_model, settings.queue.max_queued_bytes_per_key) == (
        128 << 20,
        512 << 10,
    )
    assert (settings.server.max_choice_bytes, settings.queue.redis_memory_high_water) == (1000, 0.9)
    for key, wrong in [("KALTSTART_MAX_QUEUED_BYTES_PER_KEY", "1MB"), ("KALTSTART_REDIS_MEMORY_HIGH_WATER", "1.5")]:
        with pytest.raises(ConfigError) as info:
            GatewaySettings.from_env({key: wrong})
        assert info.value.key == key


def test_the_route_allow_list_and_the_lease_namespace() -> None:
    environ = {
        "KALTSTART_ROUTE_ALLOW_LIST": '{"llama-70b": "models/llama", "qwen": ["team-a", "team-b/qwen"]}',
        "KALTSTART_NAMESPACES": "models,team-a",
        "KALTSTART_LEASE_NAMESPACE": "kaltstart",
    }
    kube = GatewaySettings.from_env(environ).kubernetes
    assert kube.route_allow_list == {"llama-70b": ("models/llama",), "qwen": ("team-a", "team-b/qwen")}
    assert (kube.namespaces, kube.lease_namespace) == (("models", "team-a"), "kaltstart")
    assert GatewaySettings.from_env({}).kubernetes.route_allow_list == {}


@pytest.mark.parametrize(
    "text",
    ['["models/llama"]', '{"llama": "Models/llama"}', '{"llama": []}', '{"bad name": "models"}', "{", '{"m": 3}'],
)
def test_a_bad_route_allow_list_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="KALTSTART_ROUTE_ALLOW_LIST"):
        GatewaySettings.from_env({"KALTSTART_ROUTE_ALLOW_LIST": text})


def test_the_replica_wait_is_off_by_default_and_never_unbounded() -> None:
    assert (GatewaySettings.from_env({}).queue.redis_wait_replicas, GatewaySettings().queue.redis_wait_timeout_s) == (
        0,
        0.5,
    )
    env = {"KALTSTART_REDIS_WAIT_REPLICAS": "1", "KALTSTART_REDIS_WAIT_TIMEOUT": "50ms"}
    queue = GatewaySettings.from_env(env).queue
    assert (queue.redis_wait_replicas, queue.redis_wait_timeout_s) == (1, 0.05)
    for key, wrong in [("KALTSTART_REDIS_WAIT_TIMEOUT", "0"), ("KALTSTART_REDIS_WAIT_REPLICAS", "-1")]:
        with pytest.raises(ConfigError) as info:
            GatewaySettings.from_env({key: wrong})
        assert info.value.key == key
