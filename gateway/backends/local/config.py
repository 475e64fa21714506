"""The local backend's model file (TOML): read by ``python -m gateway``, written by the load tests.

One module for both directions, so that a file written here reads back as the same config (a test checks it).
The file's format is described in docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.settings import Adapter, ModelSettings

DEFAULT_CACHE_DIR = Path(".cache/models")


@dataclass(frozen=True)
class LocalModel:
    """One model of the local config file: its scaling settings plus how to start its runtime."""

    settings: ModelSettings
    #: A local directory or a Hugging Face model id; the runtime copies it into its cache once.
    source: str
    #: ``torch`` (the real model) or ``echo`` (answers instantly; for measuring the gateway alone).
    engine: str = "torch"
    #: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``.
    device: str = "auto"
    #: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
    dtype: str = "auto"
    #: Extra ``python -m runtime`` arguments.
    args: tuple[str, ...] = ()
    #: ``protocol = "openai"`` only: the OpenAI-compatible server to start as a replica, one argument per item;
    #: ``{host}``, ``{port}``, ``{source}`` and ``{model}`` (the name it is to serve) are filled in.
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocalPool:
    """Models of the file served together by one pool runtime per replica (``python -m runtime --pool``): the pool
    is their scaling unit (its replicas are shared; each model keeps its own queue and settings)."""

    name: str
    #: Names of ``[models.*]`` entries, in the order given to the runtime (the first is loaded at its start).
    models: tuple[str, ...]
    #: ``auto``, ``cpu`` or ``cuda`` (for all its models: one process).
    device: str = "auto"
    #: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
    dtype: str = "auto"
    #: ``--pool-device-bytes``: most weight bytes active at once; None: the runtime's default.
    device_bytes: int | None = None
    #: ``--pool-host-bytes``: most weight bytes parked at once (0: never park); None: the runtime's default.
    host_bytes: int | None = None
    #: Extra ``python -m runtime`` arguments.
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocalConfig:
    models: tuple[LocalModel, ...]
    #: The runtimes' node-local weight cache.
    cache_dir: Path = DEFAULT_CACHE_DIR
    #: Interpreter that runs ``-m runtime`` (the gateway's own by default).
    python: str = field(default_factory=lambda: sys.executable)
    #: Standby runtimes kept started (interpreter up, engine imported, no model) for the next cold start to claim.
    #: Each holds the memory of an imported torch (no GPU memory); 0: every cold start starts a process.
    standby: int = 1
    #: Pools of models sharing runtime processes; a model in no pool has replicas of its own.
    pools: tuple[LocalPool, ...] = ()
    #: LoRA adapters served as models of their own by their base's replicas (``ModelSettings.adapter`` is set):
    #: ``[models.<name>]`` tables with ``base`` and ``adapter``. They have no replicas of their own.
    adapters: tuple[ModelSettings, ...] = ()

    def __post_init__(self) -> None:
        _check_pools(self)
        _check_adapters(self)

    def pool_of(self, model: str) -> LocalPool | None:
        return next((pool for pool in self.pools if model in pool.models), None)

    def units(self) -> dict[str, str]:
        """Each pooled model's scaling unit (its pool's name), each adapter's (its base's); the others are their own
        unit."""
        pooled = {model: pool.name for pool in self.pools for model in pool.models}
        return pooled | {a.name: a.adapter.base for a in self.adapters if a.adapter is not None}


_RUNTIME_KEYS = {"source", "engine", "device", "dtype", "args", "command"}
_POOL_KEYS = {"models", "device", "dtype", "device-bytes", "host-bytes", "args"}
#: Keys of a ``[models.*]`` entry that a pool sets for all its models (one process).
_POOLED_KEYS = {"engine", "device", "dtype", "args", "command"}
#: What a ``command`` may fill in.
COMMAND_FIELDS = ("host", "port", "source", "model")
#: The keys of an adapter's ``[models.*]`` table: its base and source, and the settings that are its own (its
#: requests' wait and its batches); the others are its base's, whose replicas and scaling unit it shares.
_ADAPTER_KEYS = {"base", "adapter"}
ADAPTER_OWN_KEYS = ("cold-start-timeout", "max-batch-size", "max-batch-delay")


def load_local_config(path: Path) -> LocalConfig:
    """Read the local backend's TOML file. Relative paths are relative to the file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    base = path.resolve().parent
    runtime = data.get("runtime", {})
    specs: dict[str, Any] = data.get("models", {})
    models = tuple(_local_model(name, spec, base) for name, spec in specs.items() if "base" not in spec)
    if not models:
        raise ConfigError(f"{path}: no [models.<name>] tables")
    adapters = tuple(_local_adapter(name, spec, specs, base) for name, spec in specs.items() if "base" in spec)
    pools = tuple(_local_pool(name, spec, data["models"]) for name, spec in data.get("pools", {}).items())
    cache_dir = Path(runtime.get("cache-dir", DEFAULT_CACHE_DIR))
    return LocalConfig(
        models=models,
        cache_dir=cache_dir if cache_dir.is_absolute() else base / cache_dir,
        python=runtime.get("python", sys.executable),
        standby=_standby(runtime.get("standby", 1)),
        pools=pools,
        adapters=adapters,
    )


def _local_pool(name: str, spec: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]]) -> LocalPool:
    if unknown := set(spec) - _POOL_KEYS:
        raise ConfigError(f"pools.{name}: unknown settings {sorted(unknown)}")
    names = spec.get("models")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"pools.{name}.models: a non-empty list of [models.<name>] names", key="models")
    for model in names:
        if clash := _POOLED_KEYS & set(models.get(model, {})):
            message = f"models.{model}: {sorted(clash)} of a pooled model are set on its pool (pools.{name})"
            raise ConfigError(message, key=sorted(clash)[0])
    return LocalPool(
        name=name,
        models=tuple(names),
        device=str(spec.get("device", "auto")),
        dtype=str(spec.get("dtype", "auto")),
        device_bytes=_pool_bytes(name, "device-bytes", spec.get("device-bytes"), least=1),
        host_bytes=_pool_bytes(name, "host-bytes", spec.get("host-bytes"), least=0),
        args=tuple(str(a) for a in spec.get("args", ())),
    )


def _pool_bytes(pool: str, key: str, value: object, *, least: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"pools.{pool}.{key}: a whole number of bytes, at least {least}, got {value!r}", key=key)
    return value


def _check_pools(config: LocalConfig) -> None:
    """Every pooled model is a ``[models.*]`` entry served by our runtime, in one pool only; a pool is not named
    like a model (its name is the scaling unit's and its replicas')."""
    models = {m.settings.name: m for m in config.models}
    seen: set[str] = set()
    for pool in config.pools:
        if pool.name in models:
            raise ConfigError(f"pools.{pool.name}: a pool cannot have a model's name", key="pools")
        for name in pool.models:
            model = models.get(name)
            if model is None:
                raise ConfigError(f"pools.{pool.name}.models: no [models.{name}] entry", key="models")
            if model.settings.forwards or model.engine != "torch":
                raise ConfigError(f"pools.{pool.name}.models: {name} is not served by the torch runtime", key="models")
            if name in seen:
                raise ConfigError(f"pools.{pool.name}.models: {name} is in more than one pool", key="models")
            seen.add(name)


def _local_adapter(name: str, spec: Mapping[str, Any], specs: Mapping[str, Any], base: Path) -> ModelSettings:
    """An adapter's table: its base's settings, with its own name, source and ``ADAPTER_OWN_KEYS``."""
    if unknown := set(spec) - _ADAPTER_KEYS - set(ADAPTER_OWN_KEYS):
        message = f"models.{name}: {sorted(unknown)} are set on its base (an adapter takes {sorted(ADAPTER_OWN_KEYS)})"
        raise ConfigError(message, key=sorted(unknown)[0])
    parent, source = spec["base"], spec.get("adapter")
    if not isinstance(parent, str) or not isinstance(specs.get(parent), Mapping) or "base" in specs[parent]:
        raise ConfigError(f"models.{name}.base: {parent!r} is no [models.<name>] entry of a base model", key="base")
    if not isinstance(source, str):
        raise ConfigError(f"models.{name}: 'adapter' (a directory or a hub id) is required", key="adapter")
    if source.startswith((".", "/")):
        source = str((base / source).resolve())
    try:
        own = {key: spec[key] for key in ADAPTER_OWN_KEYS if key in spec}
        settings = ModelSettings.parse(name, {**specs[parent], **own})
        return dataclasses.replace(settings, adapter=Adapter.parse(parent, source))
    except ConfigError as exc:
        raise ConfigError(f"models.{name}.{exc}", key=exc.key) from None


def _check_adapters(config: LocalConfig) -> None:
    """Every adapter's base is a model of the file served by our runtime on replicas of its own (not a pool's: a
    pool runtime loads no adapters), and no adapter is named like a model or a pool."""
    models = {m.settings.name: m for m in config.models}
    taken = set(models) | {pool.name for pool in config.pools}
    for settings in config.adapters:
        name, adapter = settings.name, settings.adapter
        if adapter is None:
            raise ConfigError(f"models.{name}: listed as an adapter without one", key="adapter")
        if name in taken:
            raise ConfigError(f"models.{name}: an adapter cannot have a model's or a pool's name", key="base")
        taken.add(name)
        model = models.get(adapter.base)
        if model is None or model.settings.forwards or config.pool_of(adapter.base) is not None:
            message = f"models.{name}.base: {adapter.base!r} is no model with replicas of our runtime of its own"
            raise ConfigError(message, key="base")


def _standby(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"runtime.standby must be a whole number of standby runtimes (0 or more), got {value!r}")
    return value


def _local_model(name: str, spec: Mapping[str, Any], base: Path) -> LocalModel:
    unknown = set(spec) - _RUNTIME_KEYS - set(ModelSettings.keys())
    if unknown:
        raise ConfigError(f"models.{name}: unknown settings {sorted(unknown)}")
    if "source" not in spec:
        raise ConfigError(f"models.{name}: 'source' is required")
    try:
        settings = ModelSettings.parse(name, spec)
    except ConfigError as exc:
        raise ConfigError(f"models.{name}.{exc}", key=exc.key) from None
    source = str(spec["source"])
    if source.startswith((".", "/")):
        source = str((base / source).resolve())
    return LocalModel(
        settings=settings,
        source=source,
        engine=str(spec.get("engine", "torch")),
        device=str(spec.get("device", "auto")),
        dtype=str(spec.get("dtype", "auto")),
        args=tuple(str(a) for a in spec.get("args", ())),
        command=_command(name, settings, spec.get("command")),
    )


def _command(name: str, settings: ModelSettings, command: object) -> tuple[str, ...]:
    """An ``openai`` model's server command (required there, refused elsewhere), its placeholders checked."""
    if command is None:
        if settings.forwards:
            raise ConfigError(f"models.{name}: protocol 'openai' needs 'command', the server to start", key="command")
        return ()
    if not settings.forwards:
        raise ConfigError(f"models.{name}.command: for protocol 'openai' only (a runtime takes 'args')", key="command")
    if not isinstance(command, list) or not command or not all(isinstance(word, str) for word in command):
        raise ConfigError(f"models.{name}.command: a non-empty list of strings", key="command")
    for word in command:
        try:
            word.format_map(dict.fromkeys(COMMAND_FIELDS, ""))
        except (KeyError, ValueError, IndexError) as exc:
            fields = ", ".join(f"{{{f}}}" for f in COMMAND_FIELDS)
            message = f"models.{name}.command: {word!r}: {exc!r} (it may use {fields})"
            raise ConfigError(message, key="command") from None
    return tuple(command)


def _toml(value: str | int | float | list[str]) -> str:
    # A JSON string (or list of strings) is a valid TOML basic string (or array).
    return str(value) if isinstance(value, int | float) else json.dumps(value)


def dump_local_config(config: LocalConfig) -> str:
    """The TOML text that ``load_local_config`` reads back as ``config`` (paths absolute)."""
    lines = ["[runtime]", f"cache-dir = {_toml(str(config.cache_dir.resolve()))}"]
    if config.python != sys.executable:
        lines.append(f"python = {_toml(config.python)}")
    lines.append(f"standby = {config.standby}")
    for m in config.models:
        lines += ["", f"[models.{_toml(m.settings.name)}]"]
        fields: dict[str, Any] = {"source": m.source}
        if config.pool_of(m.settings.name) is None:  # a pool sets these for its models
            fields |= {"engine": m.engine, "device": m.device, "dtype": m.dtype}
            if m.args:
                fields["args"] = list(m.args)
        if m.command:
            fields["command"] = list(m.command)
        fields |= m.settings.to_values()
        lines.extend(f"{key} = {_toml(value)}" for key, value in fields.items())
    for adapter in config.adapters:
        assert adapter.adapter is not None
        lines += ["", f"[models.{_toml(adapter.name)}]", f"base = {_toml(adapter.adapter.base)}"]
        lines.append(f"adapter = {_toml(adapter.adapter.source)}")
        values = adapter.to_values()
        lines.extend(f"{key} = {_toml(values[key])}" for key in ADAPTER_OWN_KEYS)
    for pool in config.pools:
        lines += ["", f"[pools.{_toml(pool.name)}]", f"models = {_toml(list(pool.models))}"]
        lines += [f"device = {_toml(pool.device)}", f"dtype = {_toml(pool.dtype)}"]
        budgets = {"device-bytes": pool.device_bytes, "host-bytes": pool.host_bytes}
        lines.extend(f"{key} = {value}" for key, value in budgets.items() if value is not None)
        if pool.args:
            lines.append(f"args = {_toml(list(pool.args))}")
    return "\n".join(lines) + "\n"


def write_local_config(path: Path, config: LocalConfig) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_local_config(config))
    return path
