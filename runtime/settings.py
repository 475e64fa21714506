"""The runtime's settings: one frozen dataclass, built once at start-up from flags and the environment.

Every flag has a ``KALTSTART_RUNTIME_<NAME>`` environment variable that supplies its default, so a Kubernetes
Deployment can configure the runtime through ``env:`` while a local backend passes flags. Flags win.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn, TypeVar

from runtime.errors import SettingsError
from runtime.output.toolcalls import ToolParserName
from runtime.weights.cache import VERIFY_MODES, CacheVerify
from wire import (
    MAX_ANNOUNCE_INTERVAL_S,
    MAX_ANNOUNCED_MODELS,
    MAX_LOADED_ADAPTERS,
    MAX_MODEL_NAME_LENGTH,
    SchedulerKind,
)

__all__ = ["ENV_PREFIX", "Device", "Dtype", "EngineKind", "PoolSettings", "RuntimeSettings", "SchedulerKind"]

ENV_PREFIX = "KALTSTART_RUNTIME_"

Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
EngineKind = Literal["torch", "echo"]
WeightLoader = Literal["direct", "from_pretrained"]

_DEVICES: tuple[Device, ...] = ("auto", "cpu", "cuda")
_DTYPES: tuple[Dtype, ...] = ("auto", "float32", "float16", "bfloat16")
_ENGINES: tuple[EngineKind, ...] = ("torch", "echo")
_WEIGHT_LOADERS: tuple[WeightLoader, ...] = ("direct", "from_pretrained")
_SCHEDULERS: tuple[SchedulerKind, ...] = ("continuous", "static")
_TOOL_PARSERS: tuple[ToolParserName, ...] = ("auto", "hermes", "llama3_json", "none")
_Choice = TypeVar("_Choice", bound=str)
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
#: The shortest token taken (a guessable token guards nothing).
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """A pool runtime (``--pool``): several models in one process, each active, parked or absent
    (``runtime.pool``)."""

    models: tuple[tuple[str, str], ...]
    """``(name, source)`` of every model, in the order given (``--model NAME=SOURCE``, repeated; or
    ``KALTSTART_RUNTIME_MODELS=a=SRC,b=SRC``). The first is loaded and warmed up at start; the others start absent
    (their weights fetched into the node-local cache) and are loaded on their first batch."""

    device_budget_bytes: int | None = None
    """Most weight bytes active (on the device) at once; making a model active beyond it parks the least recently
    used idle ones. Default (None): half the device's memory (the GPU's total; on CPU, half the RAM), the other
    half left for KV caches and activations. Every model must fit it alone, or the runtime does not start."""

    host_budget_bytes: int | None = None
    """Most weight bytes parked (in host memory, pinned on a GPU) at once; parking beyond it drops the least
    recently used parked ones to the disk cache (absent). 0: never park, an evicted model goes absent. Default
    (None): a quarter of the RAM."""

    wait_s: float = 30.0
    """How long a batch for a model that is not active waits for room when every active model that would have to
    go holds requests (a model with rows in its running batch is never evicted). At the bound the batch is answered
    503 with ``Retry-After``. Default 30 s."""


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    model_name: str
    """The model name this runtime serves, or several comma-separated (one Deployment may serve a model under
    several names, as ``kaltstart.dev/models`` allows); ``/readyz`` reports the first, and batches for any other
    name get 404. Default: the last part of ``source`` (``"echo"`` for the echo engine without a source)."""

    source: str | None
    """Where the weights come from: a local directory or a Hugging Face id ``org/name[@revision]``. Read once,
    on the first start on a node; later starts use ``cache_dir`` only. Required for the torch engine."""

    cache_dir: Path
    """Node-local weight cache (a hostPath or local SSD in Kubernetes). Default: ``~/.cache/kaltstart/models``."""

    host: str = "127.0.0.1"
    """Interface to listen on. Default loopback, so nothing is exposed by accident; containers set 0.0.0.0."""

    port: int = 8000
    """TCP port to listen on. Default 8000."""

    device: Device = "auto"
    """``cuda`` if a GPU is visible, else ``cpu`` (``auto``, the default), or forced either way."""

    dtype: Dtype = "auto"
    """Weight and activation dtype. ``auto`` (default): bfloat16 on CUDA, float32 on CPU, where half precision
    is slow and inexact."""

    weight_loader: WeightLoader = "direct"
    """``direct`` (default): build the model on the ``meta`` device and read the safetensors straight into it
    (``runtime.weights.fastload``), falling back to ``from_pretrained`` for checkpoints it cannot take;
    ``from_pretrained``:
    always the latter."""

    weight_read_threads: int = 4
    """Threads that read the safetensors files in the ``direct`` load, each asking for 16 MiB at a time (on CUDA
    each also copies its chunks to the device from a pinned buffer). Default 4: NVMe drives and network volumes
    deliver their bandwidth only with several reads in flight, and even the 2-core dev VM's virtual disk loaded
    faster with 4 than with 1 (docs/runtime.md, "Where the load time goes")."""

    max_batch_size: int = 16
    """Most requests one ``POST /v1/batch`` may carry (more is answered 413), and with the continuous scheduler
    also the most rows in the running batch (requests of several batches together; the rest wait). Default 16.
    ``/readyz`` reports it; the gateway sizes batches from its own per-model ``max-batch-size`` setting, and its
    local backend passes that setting here."""

    scheduler: SchedulerKind = "continuous"
    """``continuous`` (default): one decoding loop; the requests of every open ``POST /v1/batch`` join the running
    batch between decoding steps and leave it as soon as they finish, within ``max_batch_size`` rows and
    ``max_batch_tokens``. ``static``: one batch at a time, start to finish, later batches wait (the behaviour before
    continuous batching, kept for comparison)."""

    max_batch_tokens: int | None = None
    """Continuous scheduler: most KV-cache tokens the running batch may hold, counted as its rows times the longest
    row's prompt + ``max_tokens`` (the padded cache's worst case). A request that does not fit waits. Default
    (None): 16384 on CPU; on CUDA 70% of the device memory free after loading and warm-up, divided by the model's
    KV bytes per token."""

    prefill_chunk_tokens: int = 128
    """Prompt tokens per row that one forward pass prefills (torch engine). With the continuous scheduler a joining
    request's prompt is prefilled one chunk per decoding step, so a long prompt delays the running rows' next token
    by one chunk's compute at a time, not by the whole prompt's. Default 128."""

    max_context_tokens: int | None = None
    """Cap on prompt tokens plus ``max_tokens`` per request, below the model's own context length. Default:
    none (the model's ``max_position_embeddings``). Lower it when a long-context model would not fit a GPU."""

    tool_parser: ToolParserName = "auto"
    """How this model writes tool calls (``runtime.output.toolcalls``): ``hermes`` (``<tool_call>{json}</tool_call>``
    blocks: Hermes, Qwen 2 and later, the demo model), ``llama3_json`` (the answer is ``{"name", "parameters"}``:
    Llama 3.1 and later), or ``none`` (requests with tools are refused). ``auto`` (default): from the chat template,
    ``hermes`` if it writes ``<tool_call>``, ``llama3_json`` if it writes ``<|python_tag|>`` or an ``ipython``
    turn with ``"parameters"``, else ``none``. It decides how calls are parsed out of the text and the grammar that
    forces a call (``tool_choice`` ``required`` or named)."""

    engine: EngineKind = "torch"
    """``torch`` runs the model; ``echo`` answers at once with the prompt's words and never imports torch, to
    measure the gateway's own overhead. Default torch."""

    warmup: bool = True
    """Run one tiny generation before reporting ready, so the first real batch does not pay for lazy kernel
    set-up. Default on."""

    shutdown_grace_s: int = 30
    """Seconds a SIGTERM waits for running batches to finish before connections are closed. Default 30."""

    log_level: str = "info"
    """Python logging level name for the runtime and uvicorn. Default info."""

    log_format: str = "text"
    """``text`` or ``json`` (one object per line; ``runtime.logs``). Default: ``KALTSTART_LOG_FORMAT`` if set (the
    gateway's setting, which the local backend passes on), else text."""

    batch_log: bool = True
    """Log one INFO line per batch (size, tokens, tokens/s). Default on. With continuous batching a batch is often
    one request, so at a high request rate this is a line per request: the local backend turns it off unless the
    gateway's access log is on (``KALTSTART_ACCESS_LOG``)."""

    standby: bool = False
    """Start without a model: bind the port, import the engine (torch, transformers and the modelling code of
    ``standby_families``) and wait for ``POST /v1/claim`` to say which model to serve, with the flags it would
    have been started with. Pays the fixed cost of a start before any model is asked for. Default off."""

    standby_families: tuple[str, ...] = ("llama", "qwen2", "mistral")
    """Standby: model families (``transformers.models.<family>``) whose modelling code is imported ahead. The
    first costs about a second here, each further one little. Default llama, qwen2, mistral."""

    announce_to: str | None = None
    """A Redis URL (the gateway's queue) to announce this replica on (``wire.Announcement``): its start-up phase,
    the moment it is ready and every ``announce_interval_s`` after, so gateways dispatch to it at once instead
    of at their next readiness probe. Default: none (gateways find the replica by probing only)."""

    advertise_url: str | None = None
    """The base URL gateways reach this replica at, as announced. Default ``http://host:port``; required with
    ``announce_to`` when ``host`` is a wildcard (``0.0.0.0``), e.g. ``http://$(POD_IP):8000`` in a pod."""

    announce_interval_s: float = 2.0
    """Seconds between two announcements of a ready replica; a gateway forgets a replica after three missed.
    Default 2."""

    token: str | None = field(default=None, repr=False)
    """The token every call to ``/v1/*`` must carry (``Authorization: Bearer <token>``, else 401); the gateway
    sends its ``KALTSTART_RUNTIME_TOKEN``. From the environment only (``KALTSTART_RUNTIME_TOKEN``), never a flag:
    a command line is visible to every user of the machine. ``/healthz`` and ``/readyz`` stay open (a kubelet's
    probes cannot carry a secret). Default: none, and any call is taken (only a NetworkPolicy protects it)."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body taken; a larger one gets 413 before it is read whole (by its Content-Length, or as
    it arrives). Default 64 MiB: a batch of ``max_batch_size`` requests of the gateway's largest body (1 MiB by
    default) each, with room; raise it with either of those."""

    cache_verify: CacheVerify = "size"
    """What a weight-cache hit checks against the file list its fill recorded (``runtime.weights.cache``): ``size``
    (default) every file's size, one ``stat`` each; ``sha256`` also every file's hash, reading every byte once
    more per start (seconds per GB). A cache that does not match is filled again."""

    max_adapters: int = 8
    """LoRA adapters (``GenerationRequest.adapter``) resident on the device at once, each loaded on its first
    request; beyond it the least recently used one that no running row uses is evicted, and a row whose adapter
    finds every slot held by running rows waits for one (docs/runtime.md, "LoRA adapters"). 0: adapters are refused
    (``adapter_invalid``). Default 8; at most 64 (``wire.MAX_LOADED_ADAPTERS``, what ``/readyz`` may report)."""

    max_adapter_rank: int = 64
    """Highest LoRA rank taken; an adapter of a higher rank is refused (``adapter_invalid``). The device keeps every
    slot's weights padded to the largest rank resident, so this bounds that padding. Default 64."""

    adapter_bytes: int | None = None
    """Most bytes the resident adapters' weights (at their own ranks, in the dtype served) may take on the device;
    loading one beyond it evicts least recently used ones as ``max_adapters`` does. Default (None): no byte bound,
    ``max_adapters`` alone."""

    pool: PoolSettings | None = None
    """A pool runtime (``--pool``) serving every model of ``PoolSettings.models``; ``model_name`` then lists
    their names and ``source`` is the first one's. Default: None, one model."""

    fault_exit_on: str | None = None
    """For tests only: exit at once with status 70, like a crash, on receiving a batch with a request whose
    prompt or chat message text contains this. Lets the gateway's failure tests kill a replica at a chosen
    request with the real runtime and either engine. Default: off."""

    def __post_init__(self) -> None:
        if self.engine == "torch" and not self.source and not self.standby:
            raise SettingsError("the torch engine needs --source (a directory or a Hugging Face id)")
        if not 0 < self.port < 65536:
            raise SettingsError(f"port must be in 1..65535, got {self.port}")
        if self.max_batch_size < 1:
            raise SettingsError(f"max batch size must be at least 1, got {self.max_batch_size}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 2:
            raise SettingsError(f"max batch tokens must be at least 2, got {self.max_batch_tokens}")
        if self.weight_read_threads < 1:
            raise SettingsError(f"weight read threads must be at least 1, got {self.weight_read_threads}")
        if self.prefill_chunk_tokens < 1:
            raise SettingsError(f"prefill chunk tokens must be at least 1, got {self.prefill_chunk_tokens}")
        if self.max_context_tokens is not None and self.max_context_tokens < 2:
            raise SettingsError(f"max context tokens must be at least 2, got {self.max_context_tokens}")
        if not 0 < self.announce_interval_s <= MAX_ANNOUNCE_INTERVAL_S:
            raise SettingsError(
                f"announce interval must be in (0, {MAX_ANNOUNCE_INTERVAL_S:g}] seconds, got {self.announce_interval_s}"
            )
        self._check_names()
        if self.announce_to and self.advertise_url is None and self.host in _WILDCARDS:
            raise SettingsError(f"--advertise-url is needed to announce a replica listening on {self.host}")
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise SettingsError(f"{ENV_PREFIX}TOKEN must have at least {MIN_TOKEN_CHARS} characters")
        if self.max_body_bytes < 1024:
            raise SettingsError(f"max body bytes must be at least 1024, got {self.max_body_bytes}")
        if self.shutdown_grace_s < 0:
            raise SettingsError(f"shutdown grace must not be negative, got {self.shutdown_grace_s}")
        _check_adapters(self)
        _check_pool(self.pool, self)

    @property
    def served_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.model_name.split(",") if name.strip())

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> RuntimeSettings:
        """Parse ``argv`` (without the program name), taking defaults from ``KALTSTART_RUNTIME_*`` in
        ``environ``. Raises ``SettingsError`` on anything invalid."""
        args = _parser(environ).parse_args(list(argv))
        source: str | None = args.source or None
        model_name = args.model_name or _default_model_name(source, args.engine)
        pool = _pool_settings(args) if args.pool else None
        if pool is not None:
            if args.model_name or source:
                raise SettingsError("--pool takes its models from --model NAME=SOURCE, not --model-name/--source")
            model_name, source = ",".join(name for name, _ in pool.models), pool.models[0][1]
        elif args.model or args.models_from_env:
            raise SettingsError("--model NAME=SOURCE is for a pool runtime (--pool)")
        return cls(
            model_name=model_name,
            source=source,
            cache_dir=Path(args.cache_dir).expanduser(),
            host=args.host,
            port=args.port,
            device=args.device,
            dtype=args.dtype,
            weight_loader=args.weight_loader,
            weight_read_threads=args.weight_read_threads,
            max_batch_size=args.max_batch_size,
            scheduler=args.scheduler,
            max_batch_tokens=args.max_batch_tokens or None,
            prefill_chunk_tokens=args.prefill_chunk_tokens,
            max_context_tokens=args.max_context_tokens or None,
            tool_parser=args.tool_parser,
            engine=args.engine,
            warmup=args.warmup,
            shutdown_grace_s=args.shutdown_grace_s,
            log_level=args.log_level,
            log_format=args.log_format,
            batch_log=args.batch_log,
            standby=args.standby,
            standby_families=tuple(f.strip() for f in args.standby_families.split(",") if f.strip()),
            announce_to=args.announce_to or None,
            advertise_url=args.advertise_url or None,
            announce_interval_s=args.announce_interval_s,
            token=environ.get(ENV_PREFIX + "TOKEN", "").strip() or None,
            max_body_bytes=args.max_body_bytes,
            cache_verify=args.cache_verify,
            max_adapters=args.max_adapters,
            max_adapter_rank=args.max_adapter_rank,
            adapter_bytes=args.adapter_bytes or None,
            pool=pool,
            fault_exit_on=args.fault_exit_on or None,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _check_names(self) -> None:
        """The names fit what a gateway reads back (``wire.ReadyBody``, ``wire.Announcement``)."""
        names = self.served_names
        if not names or len(names) > MAX_ANNOUNCED_MODELS:
            raise SettingsError(f"--model-name takes 1 to {MAX_ANNOUNCED_MODELS} names, got {len(names)}")
        if too_long := [name for name in names if len(name) > MAX_MODEL_NAME_LENGTH]:
            raise SettingsError(f"model name longer than {MAX_MODEL_NAME_LENGTH} characters: {too_long[0][:40]}...")

    @property
    def public_url(self) -> str:
        """Where gateways reach this replica: ``advertise_url``, else ``url``."""
        return (self.advertise_url or self.url).rstrip("/")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    env = _EnvDefaults(environ)
    p = _Parser(prog="python -m runtime", description="Serve one model to the kaltstart gateway.")
    p.add_argument("--model-name", default=env.text("MODEL_NAME", ""), help="model name served")
    p.add_argument("--source", default=env.text("SOURCE", ""), help="weights: a directory or org/name[@rev]")
    p.add_argument("--cache-dir", default=env.text("CACHE_DIR", "~/.cache/kaltstart/models"))
    p.add_argument("--host", default=env.text("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=env.integer("PORT", 8000))
    p.add_argument("--device", choices=_DEVICES, default=env.choice("DEVICE", _DEVICES, "auto"))
    p.add_argument("--dtype", choices=_DTYPES, default=env.choice("DTYPE", _DTYPES, "auto"))
    p.add_argument(
        "--weight-loader",
        choices=_WEIGHT_LOADERS,
        default=env.choice("WEIGHT_LOADER", _WEIGHT_LOADERS, "direct"),
        help="direct (default): meta-device model filled from the safetensors; from_pretrained: transformers' loader",
    )
    p.add_argument(
        "--weight-read-threads",
        type=int,
        default=env.integer("WEIGHT_READ_THREADS", 4),
        help="threads reading the safetensors files in the direct load (16 MiB reads)",
    )
    p.add_argument("--max-batch-size", type=int, default=env.integer("MAX_BATCH_SIZE", 16))
    p.add_argument("--scheduler", choices=_SCHEDULERS, default=env.choice("SCHEDULER", _SCHEDULERS, "continuous"))
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=env.integer("MAX_BATCH_TOKENS", 0),
        help="KV-cache token budget of the running batch (0: derived from the device)",
    )
    p.add_argument("--prefill-chunk-tokens", type=int, default=env.integer("PREFILL_CHUNK_TOKENS", 128))
    p.add_argument("--max-context-tokens", type=int, default=env.integer("MAX_CONTEXT_TOKENS", 0))
    p.add_argument(
        "--tool-parser",
        choices=_TOOL_PARSERS,
        default=env.choice("TOOL_PARSER", _TOOL_PARSERS, "auto"),
        help="how the model writes tool calls (auto: from its chat template)",
    )
    p.add_argument("--engine", choices=_ENGINES, default=env.choice("ENGINE", _ENGINES, "torch"))
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=env.boolean("WARMUP", True))
    p.add_argument("--shutdown-grace-s", type=int, default=env.integer("SHUTDOWN_GRACE_S", 30))
    p.add_argument("--log-level", default=env.text("LOG_LEVEL", "info"))
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=env.text("LOG_FORMAT", environ.get("KALTSTART_LOG_FORMAT", "text")),
        help="text, or one JSON object per line",
    )
    p.add_argument(
        "--batch-log",
        action=argparse.BooleanOptionalAction,
        default=env.boolean("BATCH_LOG", True),
        help="one INFO line per batch",
    )
    p.add_argument(
        "--standby",
        action=argparse.BooleanOptionalAction,
        default=env.boolean("STANDBY", False),
        help="start without a model, engine imported, and wait for POST /v1/claim",
    )
    p.add_argument("--standby-families", default=env.text("STANDBY_FAMILIES", "llama,qwen2,mistral"))
    p.add_argument("--announce-to", default=env.text("ANNOUNCE_TO", ""), metavar="REDIS_URL")
    p.add_argument("--advertise-url", default=env.text("ADVERTISE_URL", ""), metavar="URL")
    p.add_argument("--announce-interval-s", type=float, default=env.number("ANNOUNCE_INTERVAL_S", 2.0))
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=env.integer("MAX_BODY_BYTES", 64 * 1024 * 1024),
        help="larger request bodies get 413",
    )
    p.add_argument(
        "--cache-verify",
        choices=VERIFY_MODES,
        default=env.choice("CACHE_VERIFY", VERIFY_MODES, "size"),
        help="what a weight-cache hit checks: every file's size, or also its sha256",
    )
    p.add_argument(
        "--max-adapters",
        type=int,
        default=env.integer("MAX_ADAPTERS", 8),
        help="LoRA adapters resident on the device at once, least recently used evicted (0: none served)",
    )
    p.add_argument(
        "--max-adapter-rank", type=int, default=env.integer("MAX_ADAPTER_RANK", 64), help="highest LoRA rank taken"
    )
    p.add_argument(
        "--adapter-bytes",
        type=int,
        default=env.integer("ADAPTER_BYTES", 0),
        help="most bytes of resident adapter weights (0: no bound but --max-adapters)",
    )
    p.add_argument(
        "--pool",
        action=argparse.BooleanOptionalAction,
        default=env.boolean("POOL", False),
        help="serve several models (--model NAME=SOURCE, repeated), parking idle ones in host memory",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=SOURCE",
        help="a pool's model: its name and weights (a directory or org/name[@rev]); repeat for each",
    )
    p.set_defaults(models_from_env=_split_models(env.text("MODELS", "")))
    p.add_argument("--pool-device-bytes", type=int, default=env.integer("POOL_DEVICE_BYTES", 0), help="0: default")
    p.add_argument("--pool-host-bytes", type=int, default=env.integer("POOL_HOST_BYTES", -1), help="-1: default")
    p.add_argument("--pool-wait-s", type=float, default=env.number("POOL_WAIT_S", 30.0))
    p.add_argument(
        "--fault-exit-on",
        default=env.text("FAULT_EXIT_ON", ""),
        metavar="TEXT",
        help="for tests only: exit with status 70 on a batch whose prompt or messages contain TEXT",
    )
    return p


def _split_models(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _pool_settings(args: argparse.Namespace) -> PoolSettings:
    models: list[tuple[str, str]] = []
    for spec in args.model or args.models_from_env:
        name, _, source = spec.partition("=")
        if not name.strip() or not source.strip():
            raise SettingsError(f"--model takes NAME=SOURCE, got {spec!r}")
        models.append((name.strip(), source.strip()))
    if not models:
        raise SettingsError("--pool needs at least one --model NAME=SOURCE")
    return PoolSettings(
        models=tuple(models),
        device_budget_bytes=args.pool_device_bytes or None,
        host_budget_bytes=None if args.pool_host_bytes == -1 else args.pool_host_bytes,
        wait_s=args.pool_wait_s,
    )


def _check_adapters(settings: RuntimeSettings) -> None:
    if not 0 <= settings.max_adapters <= MAX_LOADED_ADAPTERS:
        raise SettingsError(f"max adapters must be in 0..{MAX_LOADED_ADAPTERS}, got {settings.max_adapters}")
    if settings.max_adapter_rank < 1:
        raise SettingsError(f"max adapter rank must be at least 1, got {settings.max_adapter_rank}")
    if settings.adapter_bytes is not None and settings.adapter_bytes < 1:
        raise SettingsError(f"adapter bytes must be positive, got {settings.adapter_bytes}")


def _check_pool(pool: PoolSettings | None, settings: RuntimeSettings) -> None:
    if pool is None:
        return
    names = [name for name, _ in pool.models]
    if not names:
        raise SettingsError("--pool needs at least one --model NAME=SOURCE")
    if len(set(names)) != len(names) or any("," in name for name in names):
        raise SettingsError("a pool's model names must be unique and hold no comma")
    if settings.engine != "torch" or settings.standby:
        raise SettingsError("--pool needs the torch engine and cannot be a standby")
    if pool.device_budget_bytes is not None and pool.device_budget_bytes < 1:
        raise SettingsError(f"pool device bytes must be positive, got {pool.device_budget_bytes}")
    if pool.host_budget_bytes is not None and pool.host_budget_bytes < 0:
        raise SettingsError(f"pool host bytes must not be negative, got {pool.host_budget_bytes}")
    if not 0 < pool.wait_s <= 3600:
        raise SettingsError(f"pool wait must be in (0, 3600] seconds, got {pool.wait_s}")


def _default_model_name(source: str | None, engine: str) -> str:
    if not source:
        return engine
    return source.split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1] or source


class _EnvDefaults:
    """Reads ``KALTSTART_RUNTIME_<NAME>`` values, failing with the variable's name when one is malformed."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str) -> str:
        return self._environ.get(ENV_PREFIX + name, default)

    def integer(self, name: str, default: int) -> int:
        raw = self._environ.get(ENV_PREFIX + name)
        try:
            return default if raw is None else int(raw)
        except ValueError:
            raise SettingsError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None

    def number(self, name: str, default: float) -> float:
        raw = self._environ.get(ENV_PREFIX + name)
        try:
            return default if raw is None else float(raw)
        except ValueError:
            raise SettingsError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._environ.get(ENV_PREFIX + name)
        if raw is None:
            return default
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        raise SettingsError(f"{ENV_PREFIX}{name} must be true or false, got {raw!r}")

    def choice(self, name: str, choices: tuple[_Choice, ...], default: _Choice) -> _Choice:
        raw = self._environ.get(ENV_PREFIX + name, default)
        if raw not in choices:
            raise SettingsError(f"{ENV_PREFIX}{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw
