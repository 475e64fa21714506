"""Settings come from flags, with KALTSTART_RUNTIME_* variables as defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import SettingsError
from runtime.settings import RuntimeSettings

pytestmark = pytest.mark.unit

LOCAL_BACKEND_FLAGS = [
    "--model-name",
    "tiny",
    "--source",
    "/models/tiny",
    "--cache-dir",
    "/var/cache/kaltstart",
    "--host",
    "127.0.0.1",
    "--port",
    "9001",
    "--device",
    "cpu",
]


def test_the_flags_the_gateway_local_backend_passes() -> None:
    settings = RuntimeSettings.from_args([*LOCAL_BACKEND_FLAGS, "--engine", "echo"], {})
    assert settings.model_name == "tiny"
    assert settings.source == "/models/tiny"
    assert settings.cache_dir == Path("/var/cache/kaltstart")
    assert (settings.host, settings.port, settings.url) == ("127.0.0.1", 9001, "http://127.0.0.1:9001")
    assert (settings.device, settings.engine) == ("cpu", "echo")


def test_the_line_per_batch_can_be_quieted() -> None:
    assert RuntimeSettings.from_args(["--engine", "echo"], {}).batch_log
    assert not RuntimeSettings.from_args(["--engine", "echo", "--no-batch-log"], {}).batch_log
    assert not RuntimeSettings.from_args(["--engine", "echo"], {"KALTSTART_RUNTIME_BATCH_LOG": "0"}).batch_log


def test_defaults() -> None:
    settings = RuntimeSettings.from_args(["--source", "Qwen/Qwen2.5-0.5B-Instruct@main"], {})
    assert settings.model_name == "Qwen2.5-0.5B-Instruct"
    assert settings.cache_dir == Path("~/.cache/kaltstart/models").expanduser()
    assert (settings.host, settings.port, settings.device, settings.dtype) == ("127.0.0.1", 8000, "auto", "auto")
    assert (settings.engine, settings.warmup, settings.max_batch_size) == ("torch", True, 16)
    assert settings.max_context_tokens is None
    assert settings.fault_exit_on is None
    assert (settings.scheduler, settings.max_batch_tokens, settings.prefill_chunk_tokens) == ("continuous", None, 128)
    assert (settings.weight_loader, settings.weight_read_threads) == ("direct", 4)
    assert settings.tool_parser == "auto"


def test_weight_read_threads_come_from_a_flag_or_the_environment() -> None:
    environ = {"KALTSTART_RUNTIME_WEIGHT_READ_THREADS": "2"}
    assert RuntimeSettings.from_args(["--engine", "echo"], environ).weight_read_threads == 2
    assert (
        RuntimeSettings.from_args(["--engine", "echo", "--weight-read-threads", "8"], environ).weight_read_threads == 8
    )


def test_environment_supplies_defaults_and_flags_win() -> None:
    environ = {
        "KALTSTART_RUNTIME_SOURCE": "/models/a",
        "KALTSTART_RUNTIME_PORT": "7000",
        "KALTSTART_RUNTIME_DTYPE": "bfloat16",
        "KALTSTART_RUNTIME_WARMUP": "false",
        "KALTSTART_RUNTIME_MAX_BATCH_SIZE": "64",
        "KALTSTART_RUNTIME_MAX_CONTEXT_TOKENS": "4096",
        "KALTSTART_RUNTIME_TOOL_PARSER": "llama3_json",
    }
    settings = RuntimeSettings.from_args(["--port", "7001"], environ)
    assert (settings.source, settings.model_name, settings.port) == ("/models/a", "a", 7001)
    assert (settings.dtype, settings.warmup, settings.max_batch_size) == ("bfloat16", False, 64)
    assert settings.max_context_tokens == 4096
    assert settings.tool_parser == "llama3_json"
    assert RuntimeSettings.from_args(["--tool-parser", "none"], environ).tool_parser == "none"
    assert RuntimeSettings.from_args(["--warmup"], environ).warmup is True


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        ([], {}, "needs --source"),
        (["--source", "x", "--port", "0"], {}, "port"),
        (["--source", "x", "--device", "tpu"], {}, "invalid choice"),
        (["--source", "x"], {"KALTSTART_RUNTIME_DEVICE": "tpu"}, "KALTSTART_RUNTIME_DEVICE"),
        (["--source", "x"], {"KALTSTART_RUNTIME_PORT": "eighty"}, "KALTSTART_RUNTIME_PORT"),
        (["--source", "x"], {"KALTSTART_RUNTIME_WARMUP": "maybe"}, "KALTSTART_RUNTIME_WARMUP"),
        (["--source", "x", "--max-batch-size", "0"], {}, "batch size"),
        (["--source", "x", "--scheduler", "round-robin"], {}, "invalid choice"),
        (["--source", "x"], {"KALTSTART_RUNTIME_SCHEDULER": "dynamic"}, "KALTSTART_RUNTIME_SCHEDULER"),
        (["--source", "x", "--max-batch-tokens", "1"], {}, "max batch tokens"),
        (["--source", "x"], {"KALTSTART_RUNTIME_MAX_BATCH_TOKENS": "lots"}, "KALTSTART_RUNTIME_MAX_BATCH_TOKENS"),
        (["--source", "x", "--prefill-chunk-tokens", "0"], {}, "prefill chunk"),
        (["--source", "x", "--weight-read-threads", "0"], {}, "weight read threads"),
        (["--source", "x"], {"KALTSTART_RUNTIME_WEIGHT_READ_THREADS": "many"}, "KALTSTART_RUNTIME_WEIGHT_READ_THREADS"),
        (["--source", "x", "--tool-parser", "mistral"], {}, "invalid choice"),
        (["--source", "x", "--bogus"], {}, "unrecognized"),
        # What a gateway would drop from an announcement or a ready report (wire.MAX_*): refused at start instead.
        (["--source", "x", "--announce-interval-s", "61"], {}, r"announce interval must be in \(0, 60\]"),
        (["--source", "x", "--model-name", ",".join(f"m{i}" for i in range(33))], {}, "1 to 32 names"),
        (["--source", "x", "--model-name", "m" * 129], {}, "longer than 128"),
    ],
)
def test_invalid_settings_raise(argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        RuntimeSettings.from_args(argv, environ)


def test_echo_engine_needs_no_source() -> None:
    settings = RuntimeSettings.from_args(["--engine", "echo"], {})
    assert (settings.source, settings.model_name) == (None, "echo")


def test_settings_are_frozen() -> None:
    settings = RuntimeSettings.from_args(["--engine", "echo"], {})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_fault_injection_comes_from_a_flag_or_the_environment() -> None:
    from_env = RuntimeSettings.from_args(["--engine", "echo"], {"KALTSTART_RUNTIME_FAULT_EXIT_ON": "CRASH"})
    assert from_env.fault_exit_on == "CRASH"
    assert RuntimeSettings.from_args(["--engine", "echo", "--fault-exit-on", "BOOM"], {}).fault_exit_on == "BOOM"
    assert RuntimeSettings.from_args(["--engine", "echo", "--fault-exit-on", ""], {}).fault_exit_on is None


def test_scheduling_settings_come_from_flags_or_the_environment() -> None:
    environ = {
        "KALTSTART_RUNTIME_SCHEDULER": "static",
        "KALTSTART_RUNTIME_MAX_BATCH_TOKENS": "4096",
        "KALTSTART_RUNTIME_PREFILL_CHUNK_TOKENS": "64",
    }
    from_env = RuntimeSettings.from_args(["--engine", "echo"], environ)
    assert (from_env.scheduler, from_env.max_batch_tokens, from_env.prefill_chunk_tokens) == ("static", 4096, 64)
    flags = ["--engine", "echo", "--scheduler", "continuous", "--max-batch-tokens", "0", "--prefill-chunk-tokens", "8"]
    from_flags = RuntimeSettings.from_args(flags, environ)
    assert (from_flags.scheduler, from_flags.max_batch_tokens, from_flags.prefill_chunk_tokens) == (
        "continuous",
        None,  # 0: derive it from the device
        8,
    )


def test_a_pool_takes_its_models_as_name_equals_source() -> None:
    settings = RuntimeSettings.from_args(
        ["--pool", "--model", "a=/m/a", "--model", "b=org/b@main", "--pool-device-bytes", "100"], {}
    )
    assert settings.pool is not None
    assert settings.pool.models == (("a", "/m/a"), ("b", "org/b@main"))
    assert (settings.served_names, settings.source) == (("a", "b"), "/m/a")
    assert (settings.pool.device_budget_bytes, settings.pool.host_budget_bytes) == (100, None)
    from_env = RuntimeSettings.from_args([], {"KALTSTART_RUNTIME_POOL": "1", "KALTSTART_RUNTIME_MODELS": "a=/x,b=/y"})
    assert from_env.pool is not None and from_env.pool.models == (("a", "/x"), ("b", "/y"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--pool"],
        ["--pool", "--model", "a"],
        ["--pool", "--model", "a=/x", "--model", "a=/y"],
        ["--pool", "--model", "a=/x", "--source", "/y"],
        ["--model", "a=/x"],
        ["--pool", "--model", "a=/x", "--engine", "echo"],
        ["--pool", "--model", "a=/x", "--pool-host-bytes", "-5"],
    ],
)
def test_a_pool_without_a_clear_model_list_is_refused(argv: list[str]) -> None:
    with pytest.raises(SettingsError):
        RuntimeSettings.from_args(argv, {})
