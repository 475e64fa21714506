"""Settings, built once at start-up and passed in. Nothing here reads the environment at import time.

One frozen dataclass per concern, each field documented once, next to the name it is read from:

- ``ServerSettings``: the HTTP process (listen address, Redis, identity, request limits);
- ``QueueSettings``: the queue, its dispatch attempts, the autoscaler's and the heartbeat's periods;
- ``LocalSettings`` / ``KubernetesSettings``: what each backend needs;
- ``GatewaySettings``: the four together, from ``KALTSTART_*`` environment variables (``from_env``).

``ModelSettings`` says how one model is scaled and batched. Its setting names are used by the local backend's
config file (``idle-timeout = "300s"``) and by Deployment annotations (``kaltstart.dev/idle-timeout: "300s"``),
and parsed by the one function ``ModelSettings.parse``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from gateway.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_BYTES = re.compile(r"^\s*(\d+)\s*(KiB|MiB|GiB)?\s*$")
_UNIT_BYTES = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, None: 1}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")

Value = str | int | float
Parser = Callable[[Value], Any]


def parse_duration_s(text: Value) -> float:
    """``"300s"``, ``"20ms"``, ``"5m"``, ``"1h"`` or a bare number of seconds -> seconds."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if match is None:
            raise ValueError(f"not a duration: {text!r} (use e.g. '300s', '20ms', '5m')")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {text!r}")
    return seconds


def _parse_int(text: Value, minimum: int) -> int:
    if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
        raise ValueError(f"not an integer: {text!r}")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value


def _positive_duration_s(text: Value) -> float:
    """A duration of at least 1 ms."""
    seconds = parse_duration_s(text)
    if seconds < 0.001:
        raise ValueError(f"must be at least 1ms, got {text!r}")
    return seconds


def at_least(minimum: int) -> Parser:
    return lambda text: _parse_int(text, minimum)


def parse_bytes(text: Value) -> int:
    """``"64MiB"``, ``"512KiB"``, ``"1GiB"`` or a bare number of bytes -> bytes (at least 1)."""
    match = _BYTES.match(str(text)) if not isinstance(text, bool) else None
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. '64MiB', '512KiB' or bytes)")
    value = int(match.group(1)) * _UNIT_BYTES[match.group(2)]
    if value < 1:
        raise ValueError(f"must be at least 1 byte, got {text!r}")
    return value


def _fraction(text: Value) -> float:
    """A fraction in (0, 1]: ``0.85``."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"must be above 0 and at most 1, got {text!r}")
    return value


def _one_of(*choices: str) -> Parser:
    def parse(text: Value) -> str:
        word = str(text).strip().lower()
        if word not in choices:
            raise ValueError(f"{text!r}: use one of {', '.join(choices)}")
        return word

    return parse


def _upstream_model(text: Value) -> str:
    """A model name as an upstream serves it; empty: the model's own name."""
    name = str(text).strip()
    if len(name) > 256 or any(c.isspace() for c in name):
        raise ValueError(f"{text!r}: a model name, without spaces, at most 256 characters")
    return name


def _route(text: Value) -> str:
    path = str(text).strip()
    if not re.fullmatch(r"/[A-Za-z0-9._~/-]*", path):
        raise ValueError(f"{text!r}: a path starting with '/' (letters, digits and ._~/- only)")
    return path


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise ConfigError(f"invalid model name {name!r}: letters, digits and ._:/- only, at most 128")
    return name


def _key(key: str, parse: Parser) -> dict[str, Any]:
    """A dataclass field's metadata: it is read from ``key`` (a setting key or an environment variable) through
    ``parse``."""
    return {"key": key, "parse": parse}


T = TypeVar("T")


def _from_values(cls: type[T], values: Mapping[str, Value], **fixed: Any) -> T:
    """Build ``cls`` from the fields whose key is in ``values``; a bad value raises ``ConfigError(key=...)``."""
    kwargs: dict[str, Any] = dict(fixed)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f.metadata.get("key")
        if key is None or key not in values:
            continue
        try:
            kwargs[f.name] = f.metadata["parse"](values[key])
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}", key=key) from None
    return cls(**kwargs)


def keys_of(cls: type[Any]) -> tuple[str, ...]:
    """The setting keys (or environment variables) a settings class reads."""
    return tuple(f.metadata["key"] for f in dataclasses.fields(cls) if "key" in f.metadata)


#: Longest adapter source (a directory or a hub id), as ``wire.AdapterRef`` takes it.
MAX_ADAPTER_SOURCE_CHARS = 1024


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter served as a model of its own by its base model's replicas: its requests queue under its own
    name and go to the base's replicas in the base's batches (``wire.AdapterRef``); its scaling unit is the base's."""

    #: The base model's name (a model of the same backend, served by our runtime).
    base: str
    #: A local directory or a hub id ``org/repo[@rev]``, fetched into the runtime's node-local cache like a base's.
    source: str

    @classmethod
    def parse(cls, base: str, source: str) -> Adapter:
        """Raises ``ConfigError`` (key ``adapter``) for a source the wire would not carry."""
        source = source.strip()
        if not 0 < len(source) <= MAX_ADAPTER_SOURCE_CHARS or any(c.isspace() or c == "," for c in source):
            limit = MAX_ADAPTER_SOURCE_CHARS
            message = f"adapter: {source!r}: a directory or a hub id, 1 to {limit} characters, no spaces"
            raise ConfigError(message, key="adapter")
        return cls(base=check_model_name(base), source=source)


@dataclass(frozen=True)
class ModelSettings:
    """How one model is scaled and batched."""

    name: str
    #: Replicas kept even when idle. 0 means the model costs nothing while idle.
    min_replicas: int = field(default=0, metadata=_key("min-replicas", at_least(0)))
    #: Upper bound for scale-out on queue depth.
    max_replicas: int = field(default=1, metadata=_key("max-replicas", at_least(1)))
    #: Scale to ``min_replicas`` after this long with nothing queued or in flight.
    idle_timeout_s: float = field(default=300.0, metadata=_key("idle-timeout", parse_duration_s))
    #: Pool models only (``gateway.scaling.pools``): after this long idle an active model is parked (weights moved
    #: to host memory: its next request waits for a wake, not a load), and after ``idle_timeout_s`` it is unloaded.
    #: A fifth of the default idle-timeout: a wake costs well under a second, and the device is free for the pool's
    #: other models or given back sooner. At or above ``idle_timeout_s``: never parked, unloaded at the timeout.
    park_after_s: float = field(default=60.0, metadata=_key("park-after", parse_duration_s))
    #: A request not dispatched to a ready replica within this long gets 503 + Retry-After. Generous by
    #: default: a cold GPU node can take minutes to join and pull an image.
    cold_start_timeout_s: float = field(default=600.0, metadata=_key("cold-start-timeout", parse_duration_s))
    #: Most requests forwarded to a runtime in one batch (one forward pass per decoding step for all).
    max_batch_size: int = field(default=16, metadata=_key("max-batch-size", at_least(1)))
    #: How long a dispatcher waits for more requests to fill a batch once it has one. Small: it adds latency.
    max_batch_delay_s: float = field(default=0.01, metadata=_key("max-batch-delay", parse_duration_s))
    #: Queued + in-flight requests per replica above which another replica is asked for (up to max).
    target_queue_per_replica: int = field(default=32, metadata=_key("target-queue-per-replica", at_least(1)))
    #: ``fixed``: scale to ``min_replicas`` after ``idle_timeout_s``. ``adaptive``: learn the model's idle gaps and
    #: choose the keep-alive, and a pre-warm before an expected request, from them (``gateway.scaling.keepalive``); the
    #: fixed timeout applies until enough gaps were seen, or when they show no pattern.
    idle_policy: str = field(default="fixed", metadata=_key("idle-policy", _one_of("fixed", "adaptive")))
    #: ``adaptive`` only: how many replica-seconds (GPU-seconds) one avoided cold start is worth. Higher: fewer
    #: cold starts, more GPU time. The default equals the default idle-timeout, the price a fixed timeout of that
    #: length implicitly pays.
    cold_start_cost_s: float = field(default=300.0, metadata=_key("cold-start-cost", parse_duration_s))
    #: What the replicas speak: ``kaltstart`` (our runtime's batch wire, ``POST /v1/batch``) or ``openai`` (any
    #: OpenAI-compatible server: vLLM, SGLang, TGI, llama.cpp, ``transformers serve``), to which each request is
    #: forwarded as it came (``gateway.dispatch.upstream``).
    protocol: str = field(default="kaltstart", metadata=_key("protocol", _one_of("kaltstart", "openai")))
    #: ``openai`` only: the model name the upstream serves, put into each forwarded body (and the client's name
    #: back into each answer). Empty: the model's own name.
    upstream_model: str = field(default="", metadata=_key("upstream-model", _upstream_model))
    #: ``openai`` only: the upstream's readiness route (200 when it can serve), probed by the local backend.
    health_path: str = field(default="/health", metadata=_key("health-path", _route))
    #: ``openai`` only: requests in flight to one replica from one gateway replica; the next waits in the queue.
    max_concurrency: int = field(default=64, metadata=_key("max-concurrency", at_least(1)))
    #: A LoRA adapter on another model (its base), served by the base's replicas; None: a model of its own. Not a
    #: setting key: the local file says ``base``/``adapter``, Kubernetes ``kaltstart.dev/adapters`` on the base.
    adapter: Adapter | None = None

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The setting keys, as written in config files and (after ``kaltstart.dev/``) in annotations."""
        return keys_of(cls)

    @classmethod
    def parse(cls, name: str, values: Mapping[str, Value]) -> ModelSettings:
        """Build from setting keys (unknown keys are not this function's business and are ignored).

        Raises ``ConfigError`` naming the key and the reason, so callers can say which annotation is wrong.
        """
        settings = _from_values(cls, values, name=check_model_name(name))
        if settings.min_replicas > settings.max_replicas:
            raise ConfigError(
                f"min-replicas ({settings.min_replicas}) exceeds max-replicas ({settings.max_replicas})",
                key="min-replicas",
            )
        return settings

    def to_values(self) -> dict[str, Value]:
        """The inverse of ``parse``: every setting by its key, durations as ``"0.01s"``."""
        values: dict[str, Value] = {}
        for f in dataclasses.fields(self):
            if "key" in f.metadata:
                value = getattr(self, f.name)
                values[f.metadata["key"]] = f"{value:g}s" if f.name.endswith("_s") else value
        return values

    @property
    def forwards(self) -> bool:
        """Whether requests are forwarded one by one to an OpenAI-compatible upstream (``protocol = openai``)."""
        return self.protocol == "openai"

    @property
    def served_name(self) -> str:
        """The model name the replicas serve: ``upstream_model``, or the model's own name."""
        return self.upstream_model or self.name

    @property
    def retry_after_s(self) -> int:
        """What a 503 during a cold start tells the client to wait before trying again."""
        return max(1, min(30, math.ceil(self.cold_start_timeout_s / 4)))


def _words(text: Value) -> tuple[str, ...]:
    return tuple(word for word in re.split(r"[\s,]+", str(text)) if word)


def _flag(text: Value) -> bool:
    word = str(text).strip().lower()
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(f"not a flag: {text!r} (use true or false)")
    return word in ("1", "true", "yes", "on")


def _path(text: Value) -> Path:
    return Path(str(text))


def is_loopback(host: str) -> bool:
    """``host`` is reachable from this machine only (127.0.0.0/8, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, it may be reached from elsewhere


#: The shortest runtime token taken (a guessable token guards nothing).
MIN_RUNTIME_TOKEN_CHARS = 16


def _default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP process: where it listens, which Redis it uses, who it is, and the limits of one request."""

    #: Address to listen on (``0.0.0.0`` in a pod).
    host: str = field(default="127.0.0.1", metadata=_key("KALTSTART_HOST", str))
    #: Port to listen on.
    port: int = field(default=8080, metadata=_key("KALTSTART_PORT", at_least(0)))
    #: An external Redis/Valkey. None starts an embedded Valkey (local backend only).
    redis_url: str | None = field(default=None, metadata=_key("REDIS_URL", str))
    #: This replica's name in Redis (consumer name, reply channel). Unique per process.
    gateway_id: str = field(default_factory=_default_gateway_id, metadata=_key("KALTSTART_GATEWAY_ID", str))
    #: A request not finished this long after arrival gets 504 and is cancelled.
    request_timeout_s: float = field(default=600.0, metadata=_key("KALTSTART_REQUEST_TIMEOUT", parse_duration_s))
    #: Larger request bodies get 413 (checked before the body is read when Content-Length says so).
    max_body_bytes: int = field(default=1 << 20, metadata=_key("KALTSTART_MAX_BODY_BYTES", at_least(1024)))
    #: A request's prompt bytes times its choices (``n``, and the prompts of a completions request) above this get
    #: 413 (``param: n``): every choice is sent to a runtime with its prompt, whose memory this bounds. The queue
    #: stores each prompt once whatever ``n`` is (``gateway.queue.stream``).
    max_choice_bytes: int = field(default=8 << 20, metadata=_key("KALTSTART_MAX_CHOICE_BYTES", parse_bytes))
    #: ``max_tokens`` when a chat request gives none (completions use 16, as OpenAI does).
    default_max_tokens: int = field(default=256, metadata=_key("KALTSTART_DEFAULT_MAX_TOKENS", at_least(1)))
    #: Python log level of the whole process.
    log_level: str = field(default="INFO", metadata=_key("KALTSTART_LOG_LEVEL", lambda v: str(v).upper()))
    #: ``text`` (the default, for people) or ``json`` (one object per line, for a log pipeline); either way a line
    #: about a client request names its ``request_id`` (``gateway.logs``). Local runtimes log the same way.
    log_format: str = field(default="text", metadata=_key("KALTSTART_LOG_FORMAT", _one_of("text", "json")))
    #: A log line per request (uvicorn's access log) and per batch sent to a runtime (httpx's request log). Off by
    #: default: at INFO they are a visible share of the gateway's CPU per request (docs/architecture.md, "The hot
    #: path, profiled").
    access_log: bool = field(default=False, metadata=_key("KALTSTART_ACCESS_LOG", _flag))
    #: API keys (comma-separated) valid for every model. With none here and no key file, the API is open.
    api_keys: tuple[str, ...] = field(default=(), metadata=_key("KALTSTART_API_KEYS", _words))
    #: A file of API keys, one ``KEY [model,model...]`` per line (a mounted Secret); re-read when it changes.
    api_keys_file: Path | None = field(default=None, metadata=_key("KALTSTART_API_KEYS_FILE", _path))
    #: A second port for ``/metrics``, ``/healthz`` and ``/readyz`` alone (then not served on ``port``), so that
    #: exposing the API never exposes them. None: everything on ``port``.
    metrics_port: int | None = field(default=None, metadata=_key("KALTSTART_METRICS_PORT", at_least(1)))
    #: A client must send a request's whole header block within this long, or gets 408 and is disconnected.
    header_timeout_s: float = field(default=10.0, metadata=_key("KALTSTART_HEADER_TIMEOUT", parse_duration_s))
    #: Requests with more header lines than this get 431.
    max_header_count: int = field(default=100, metadata=_key("KALTSTART_MAX_HEADERS", at_least(8)))
    #: Requests whose headers add up to more bytes than this get 431.
    max_header_bytes: int = field(default=32 * 1024, metadata=_key("KALTSTART_MAX_HEADER_BYTES", at_least(1024)))
    #: A request body not received within this long gets 408 (a client trickling its body holds no slot).
    body_timeout_s: float = field(default=30.0, metadata=_key("KALTSTART_BODY_TIMEOUT", parse_duration_s))
    #: A streaming request that meets a cold start gets its response headers at once and an SSE comment this often
    #: (phase, time waited), so proxies with idle timeouts keep the stream and people see progress. 0: off (the
    #: headers come with the first token, as for non-streaming requests).
    cold_start_progress_s: float = field(
        default=2.0, metadata=_key("KALTSTART_COLD_START_PROGRESS_INTERVAL", parse_duration_s)
    )
    #: An idle keep-alive connection is closed after this long.
    keep_alive_s: float = field(default=5.0, metadata=_key("KALTSTART_KEEP_ALIVE", parse_duration_s))
    #: Serve ``/v1/*`` without API keys on an address other than loopback. Off (the default), such a start is
    #: refused: an open endpoint lets anyone who reaches it start GPU replicas. Only behind a proxy of your own
    #: that authenticates clients.
    allow_anonymous: bool = field(default=False, metadata=_key("KALTSTART_ALLOW_ANONYMOUS", _flag))
    #: The token runtimes require on their API (``Authorization: Bearer <token>``; ``KALTSTART_RUNTIME_TOKEN``
    #: is the runtime's setting of the same name), sent on every call to a runtime. None: none is sent (a runtime
    #: without a token takes any call). The local backend makes a random one per start when none is set.
    runtime_token: str | None = field(
        default=None, repr=False, metadata=_key("KALTSTART_RUNTIME_TOKEN", lambda v: str(v).strip())
    )

    def __post_init__(self) -> None:
        if self.runtime_token is not None and len(self.runtime_token) < MIN_RUNTIME_TOKEN_CHARS:
            raise ConfigError(
                f"KALTSTART_RUNTIME_TOKEN: at least {MIN_RUNTIME_TOKEN_CHARS} characters", key="KALTSTART_RUNTIME_TOKEN"
            )
        if not (self.api_keys or self.api_keys_file or self.allow_anonymous or is_loopback(self.host)):
            raise ConfigError(
                f"KALTSTART_HOST={self.host} with no API keys would serve anyone who reaches it: configure "
                "KALTSTART_API_KEYS_FILE (or KALTSTART_API_KEYS), or set KALTSTART_ALLOW_ANONYMOUS=true if a "
                "proxy of yours authenticates clients",
                key="KALTSTART_HOST",
            )


@dataclass(frozen=True)
class QueueSettings:
    """The request queue and the loops that act on it."""

    #: Queued + in-flight requests per model beyond which new ones get 429.
    max_queue_per_model: int = field(default=1000, metadata=_key("KALTSTART_MAX_QUEUE", at_least(1)))
    #: Bytes of requests queued or in flight per model beyond which new ones get 429 (``gateway.queue.budget``).
    max_queued_bytes_per_model: int = field(
        default=64 << 20, metadata=_key("KALTSTART_MAX_QUEUED_BYTES_PER_MODEL", parse_bytes)
    )
    #: Bytes of one API key's requests queued or in flight, over every model, beyond which its new ones get 429.
    #: A key-file line may set its own (``max-queued-bytes=``).
    max_queued_bytes_per_key: int = field(
        default=32 << 20, metadata=_key("KALTSTART_MAX_QUEUED_BYTES_PER_KEY", parse_bytes)
    )
    #: Requests of one API key being served at once (accepted, not yet answered) beyond which its new ones get 429.
    #: A key-file line may set its own (``max-requests=``).
    max_requests_per_key: int = field(default=256, metadata=_key("KALTSTART_MAX_REQUESTS_PER_KEY", at_least(1)))
    #: Queue entries (choices) of one API key queued or in flight, over every model, beyond which its new requests
    #: get 429: below ``max_queue_per_model``, so that one key cannot fill a model's queue for everyone. A key-file
    #: line may set its own (``max-entries=``).
    max_entries_per_key: int = field(default=256, metadata=_key("KALTSTART_MAX_ENTRIES_PER_KEY", at_least(1)))
    #: Redis memory (``used_memory``) as a fraction of its ``maxmemory`` above which new requests get 503 +
    #: Retry-After, so that settles, which must not fail, keep the rest. No effect on a Redis without maxmemory.
    redis_memory_high_water: float = field(default=0.85, metadata=_key("KALTSTART_REDIS_MEMORY_HIGH_WATER", _fraction))
    #: Dispatches of one request before it fails with 502 (its replica died mid-batch each time).
    max_attempts: int = field(default=3, metadata=_key("KALTSTART_MAX_ATTEMPTS", at_least(1)))
    #: How often the autoscaler applies the scaling rules to queue depth and idleness.
    scale_interval_s: float = field(default=1.0, metadata=_key("KALTSTART_SCALE_INTERVAL", parse_duration_s))
    #: How often this replica says it is alive; one silent for 5 intervals is taken for dead and the requests its
    #: dispatchers held are given to others.
    heartbeat_interval_s: float = field(default=2.0, metadata=_key("KALTSTART_HEARTBEAT_INTERVAL", parse_duration_s))
    #: Most connections to Redis this process opens. At the bound a command waits (``redis_pool_timeout_s``)
    #: for a free one instead of failing. No command blocks (dispatchers wait for a work signal,
    #: ``gateway.queue.signals``),
    #: so this holds for any number of models; the pub/sub subscription keeps one.
    redis_max_connections: int = field(default=32, metadata=_key("KALTSTART_REDIS_MAX_CONNECTIONS", at_least(4)))
    #: How long a command waits for a free connection before the request gets 503 + Retry-After.
    redis_pool_timeout_s: float = field(default=5.0, metadata=_key("KALTSTART_REDIS_POOL_TIMEOUT", parse_duration_s))
    #: Longest wait for one Redis reply (and for a connection to open); a Redis that does not answer within it
    #: counts as down.
    redis_timeout_s: float = field(default=5.0, metadata=_key("KALTSTART_REDIS_TIMEOUT", parse_duration_s))
    #: Replicas of the Redis primary that must hold a request before it counts as accepted: after each enqueue
    #: (one ``WAIT`` per pipeline of enqueues) the gateway waits up to ``redis_wait_timeout_s`` for that many
    #: replicas to acknowledge it; fewer, and the request is withdrawn and refused with 503 + Retry-After. 0 (the
    #: default): no wait, as Redis's asynchronous replication is: a failover may lose the last acknowledged
    #: enqueues (docs/reliability.md). With Sentinel and one replica or more, 1 keeps every accepted request.
    redis_wait_replicas: int = field(default=0, metadata=_key("KALTSTART_REDIS_WAIT_REPLICAS", at_least(0)))
    #: How long an enqueue waits for ``redis_wait_replicas`` replicas to acknowledge it (``WAIT``'s timeout; at
    #: least 1 ms, as 0 would wait for ever). Bounds what a lagging or lost replica adds to a request's admission.
    redis_wait_timeout_s: float = field(
        default=0.5, metadata=_key("KALTSTART_REDIS_WAIT_TIMEOUT", _positive_duration_s)
    )


@dataclass(frozen=True)
class LocalSettings:
    """The local backend: runtime processes on this machine."""

    #: The model file (TOML, see docs/configuration.md).
    config_path: Path = field(default_factory=lambda: Path("kaltstart.toml"), metadata=_key("KALTSTART_CONFIG", _path))


def _namespaces(text: Value) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names:
        raise ValueError("no namespace given")
    return names


def _lease_seconds(text: Value) -> int:
    return _parse_int(parse_duration_s(text), 2)


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _allow_entry(entry: object) -> str:
    namespace, _, name = str(entry).partition("/")
    if not isinstance(entry, str) or not _DNS_LABEL.match(namespace) or (name and not _DNS_NAME.match(name)):
        raise ValueError(f"{entry!r}: use a namespace or namespace/Deployment")
    return entry


def _allow_list(text: Value) -> Mapping[str, tuple[str, ...]]:
    """``{"llama-70b": "models/llama", "qwen": ["team-a", "team-b/qwen"]}`` -> model name -> entries."""
    try:
        loaded = json.loads(str(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise ValueError("a JSON object of model name -> namespace[/Deployment] (or a list of them)")
    allow: dict[str, tuple[str, ...]] = {}
    for model, entries in loaded.items():
        try:
            check_model_name(model)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        listed = entries if isinstance(entries, list) else [entries]
        if not listed:
            raise ValueError(f"{model!r}: no namespace or Deployment given")
        allow[model] = tuple(_allow_entry(e) for e in listed)
    return MappingProxyType(allow)


@dataclass(frozen=True)
class KubernetesSettings:
    """The Kubernetes backend: annotated Deployments, scaled through the API."""

    #: Namespaces whose annotated Deployments are served; empty: the pod's own (see ``own_namespace``).
    namespaces: tuple[str, ...] = field(default=(), metadata=_key("KALTSTART_NAMESPACES", _namespaces))
    #: The Lease whose holder scales models down.
    lease_name: str = field(default="kaltstart-gateway", metadata=_key("KALTSTART_LEASE_NAME", str))
    #: The Lease's namespace; None: the first of ``namespaces``. The chart sets the release's own, so that the
    #: gateway needs no Lease rights in the namespaces it serves.
    lease_namespace: str | None = field(default=None, metadata=_key("KALTSTART_LEASE_NAMESPACE", str))
    #: How long scale-downs pause when the leader dies. Whole seconds (the Lease API's unit), at least 2.
    lease_duration_s: int = field(default=15, metadata=_key("KALTSTART_LEASE_DURATION", _lease_seconds))
    #: A kubeconfig file; None inside a pod: in-cluster config.
    kubeconfig: str | None = field(default=None, metadata=_key("KUBECONFIG", str))
    #: Which Deployments may serve a model name (JSON: model -> "namespace" or "namespace/Deployment", or a list
    #: of them). A listed name claimed by any other Deployment is refused (Event + metric); unlisted names follow
    #: the sticky rule alone (an owner keeps its name; a newcomer never takes it). Empty: no list.
    route_allow_list: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), metadata=_key("KALTSTART_ROUTE_ALLOW_LIST", _allow_list)
    )


_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace(environ: Mapping[str, str]) -> str:
    """The namespace this pod runs in (its service account says), else POD_NAMESPACE, else ``default``."""
    if _SERVICE_ACCOUNT_NAMESPACE.exists():
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return environ.get("POD_NAMESPACE") or "default"


BACKENDS = ("local", "kubernetes")


@dataclass(frozen=True)
class GatewaySettings:
    """The whole gateway process."""

    server: ServerSettings = field(default_factory=ServerSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    #: KALTSTART_BACKEND: ``local`` (runtime processes on this machine) or ``kubernetes`` (annotated
    #: Deployments, scaled through the API).
    backend: str = "local"
    local: LocalSettings = field(default_factory=LocalSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        """Read every section from ``environ``; empty variables count as unset."""
        values = {name: value for name, value in environ.items() if value != ""}
        kubernetes = _from_values(KubernetesSettings, values)
        if not kubernetes.namespaces:
            kubernetes = dataclasses.replace(kubernetes, namespaces=(own_namespace(environ),))
        backend = values.get("KALTSTART_BACKEND", "local")
        if backend not in BACKENDS:
            raise ConfigError(f"KALTSTART_BACKEND: unknown backend {backend!r}", key="KALTSTART_BACKEND")
        return cls(
            server=_from_values(ServerSettings, values),
            queue=_from_values(QueueSettings, values),
            backend=backend,
            local=_from_values(LocalSettings, values),
            kubernetes=kubernetes,
        )

    def replace(self, **changes: Any) -> GatewaySettings:
        """A copy with fields changed by name, whichever section holds them (``max_queue_per_model=2``)."""
        sections: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "backend":
                sections["backend"] = value
                continue
            section = next((s.name for s in dataclasses.fields(self) if _has_field(getattr(self, s.name), name)), None)
            if section is None:
                raise TypeError(f"no setting named {name!r}")
            current = sections.get(section, getattr(self, section))
            sections[section] = dataclasses.replace(current, **{name: value})
        return dataclasses.replace(self, **sections)


def _has_field(section: object, name: str) -> bool:
    return dataclasses.is_dataclass(section) and any(f.name == name for f in dataclasses.fields(section))
