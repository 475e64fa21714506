from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.local import load_local_config
from gateway.errors import ConfigError
from gateway.settings import GatewaySettings, ModelSettings, parse_duration_s

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
    assert (s.port, s.redis_url, s.request_timeout_s) == (9000, "redis://x", 30.0)
    assert GatewaySettings.from_env({}).port == 8080
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
