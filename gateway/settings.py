"""Settings, built once at start-up and passed in. Nothing here reads the environment at import time.

Two kinds:
- ``GatewaySettings``: the process (listen address, Redis, limits), from ``KALTSTART_*`` environment variables.
- ``ModelSettings``: how one model is scaled and batched. The same setting names are used by the local
  backend's config file (``idle-timeout = "300s"``) and by Deployment annotations
  (``kaltstart.dev/idle-timeout: "300s"``), and parsed by the one function ``ModelSettings.parse``.
"""

from __future__ import annotations

import math
import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def parse_duration_s(text: str | int | float) -> float:
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


def _parse_int(text: str | int | float, minimum: int) -> int:
    if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
        raise ValueError(f"not an integer: {text!r}")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise ConfigError(f"invalid model name {name!r}: letters, digits and ._:/- only, at most 128")
    return name


@dataclass(frozen=True)
class ModelSettings:
    """How one model is scaled and batched. Field names map to setting keys with ``_`` -> ``-``."""

    name: str
    #: Replicas kept even when idle. 0 means the model costs nothing while idle.
    min_replicas: int = 0
    #: Upper bound for scale-out on queue depth.
    max_replicas: int = 1
    #: Scale to ``min_replicas`` after this long with nothing queued or in flight.
    idle_timeout_s: float = 300.0
    #: A request not dispatched to a ready replica within this long gets 503 + Retry-After. Generous by
    #: default: a cold GPU node can take minutes to join and pull an image.
    cold_start_timeout_s: float = 600.0
    #: Most requests forwarded to a runtime in one batch (one forward pass per decoding step for all).
    max_batch_size: int = 16
    #: How long a dispatcher waits for more requests to fill a batch once it has one. Small: it adds latency.
    max_batch_delay_s: float = 0.01
    #: Queued + in-flight requests per replica above which another replica is asked for (up to max).
    target_queue_per_replica: int = 32

    #: The setting keys, as written in config files and (after ``kaltstart.dev/``) in annotations.
    KEYS = (
        "min-replicas",
        "max-replicas",
        "idle-timeout",
        "cold-start-timeout",
        "max-batch-size",
        "max-batch-delay",
        "target-queue-per-replica",
    )

    @classmethod
    def parse(cls, name: str, values: Mapping[str, str | int | float]) -> ModelSettings:
        """Build from setting keys (unknown keys are not this function's business and are ignored).

        Raises ``ConfigError`` naming the key and the reason, so callers can say which annotation is wrong.
        """
        check_model_name(name)
        kwargs: dict[str, int | float] = {}
        parsers: dict[str, tuple[str, Callable[[str | int | float], int | float]]] = {
            "min-replicas": ("min_replicas", lambda v: _parse_int(v, 0)),
            "max-replicas": ("max_replicas", lambda v: _parse_int(v, 1)),
            "idle-timeout": ("idle_timeout_s", parse_duration_s),
            "cold-start-timeout": ("cold_start_timeout_s", parse_duration_s),
            "max-batch-size": ("max_batch_size", lambda v: _parse_int(v, 1)),
            "max-batch-delay": ("max_batch_delay_s", parse_duration_s),
            "target-queue-per-replica": ("target_queue_per_replica", lambda v: _parse_int(v, 1)),
        }
        for key, (attr, parse) in parsers.items():
            if key in values:
                try:
                    kwargs[attr] = parse(values[key])
                except ValueError as exc:
                    raise ConfigError(f"{key}: {exc}", key=key) from None
        settings = cls(name=name, **kwargs)  # type: ignore[arg-type]
        if settings.min_replicas > settings.max_replicas:
            raise ConfigError(
                f"min-replicas ({settings.min_replicas}) exceeds max-replicas ({settings.max_replicas})",
                key="min-replicas",
            )
        return settings

    @property
    def retry_after_s(self) -> int:
        """What a 503 during a cold start tells the client to wait before trying again."""
        return max(1, min(30, math.ceil(self.cold_start_timeout_s / 4)))


def _namespaces(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("no namespace given")
    return names


_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace(environ: Mapping[str, str]) -> str:
    """The namespace this pod runs in (its service account says), else POD_NAMESPACE, else ``default``."""
    if _SERVICE_ACCOUNT_NAMESPACE.exists():
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return environ.get("POD_NAMESPACE") or "default"


def _default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway process. Each field names its environment variable."""

    #: KALTSTART_HOST: address to listen on.
    host: str = "127.0.0.1"
    #: KALTSTART_PORT: port to listen on.
    port: int = 8080
    #: REDIS_URL: an external Redis/Valkey. None starts an embedded Valkey (local mode only).
    redis_url: str | None = None
    #: KALTSTART_BACKEND: ``local`` (runtime processes on this machine) or ``kubernetes`` (annotated
    #: Deployments, scaled through the API).
    backend: str = "local"
    #: KALTSTART_CONFIG: the local backend's model file (TOML).
    config_path: Path = Path("kaltstart.toml")
    #: KALTSTART_GATEWAY_ID: this replica's name in Redis (consumer name, reply channel). Unique per process.
    gateway_id: str = field(default_factory=_default_gateway_id)
    #: KALTSTART_REQUEST_TIMEOUT: a request not finished this long after arrival gets 504.
    request_timeout_s: float = 600.0
    #: KALTSTART_MAX_QUEUE: queued + in-flight requests per model beyond which new ones get 429.
    max_queue_per_model: int = 1000
    #: KALTSTART_MAX_BODY_BYTES: larger request bodies get 413.
    max_body_bytes: int = 1 << 20
    #: KALTSTART_DEFAULT_MAX_TOKENS: ``max_tokens`` when a chat request gives none (completions use 16, as
    #: OpenAI does).
    default_max_tokens: int = 256
    #: KALTSTART_SCALE_INTERVAL: how often the autoscaler looks at queue depth and idleness.
    scale_interval_s: float = 1.0
    #: KALTSTART_MAX_ATTEMPTS: dispatches of one request before it fails (a replica died mid-batch each time).
    max_attempts: int = 3
    #: KALTSTART_LOG_LEVEL
    log_level: str = "INFO"
    #: KALTSTART_HEARTBEAT_INTERVAL: how often this replica says it is alive; one silent for 5 intervals is
    #: taken for dead and the requests its dispatchers held are given to others.
    heartbeat_interval_s: float = 2.0
    #: KALTSTART_NAMESPACES (kubernetes): comma-separated namespaces to serve; default: the pod's own.
    namespaces: tuple[str, ...] = ()
    #: KALTSTART_LEASE_NAME (kubernetes): the Lease whose holder scales models down.
    lease_name: str = "kaltstart-gateway"
    #: KALTSTART_LEASE_DURATION (kubernetes): how long scale-downs pause when the leader dies (whole seconds).
    lease_duration_s: int = 15
    #: KUBECONFIG (kubernetes): a kubeconfig file; unset inside a pod: in-cluster config.
    kubeconfig: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        def get(name: str) -> str | None:
            value = environ.get(name)
            return value if value not in (None, "") else None

        kwargs: dict[str, object] = {}
        simple: dict[str, tuple[str, object]] = {
            "KALTSTART_HOST": ("host", str),
            "KALTSTART_PORT": ("port", lambda v: _parse_int(v, 0)),
            "REDIS_URL": ("redis_url", str),
            "KALTSTART_BACKEND": ("backend", str),
            "KALTSTART_CONFIG": ("config_path", Path),
            "KALTSTART_GATEWAY_ID": ("gateway_id", str),
            "KALTSTART_REQUEST_TIMEOUT": ("request_timeout_s", parse_duration_s),
            "KALTSTART_MAX_QUEUE": ("max_queue_per_model", lambda v: _parse_int(v, 1)),
            "KALTSTART_MAX_BODY_BYTES": ("max_body_bytes", lambda v: _parse_int(v, 1024)),
            "KALTSTART_DEFAULT_MAX_TOKENS": ("default_max_tokens", lambda v: _parse_int(v, 1)),
            "KALTSTART_SCALE_INTERVAL": ("scale_interval_s", parse_duration_s),
            "KALTSTART_MAX_ATTEMPTS": ("max_attempts", lambda v: _parse_int(v, 1)),
            "KALTSTART_LOG_LEVEL": ("log_level", str.upper),
            "KALTSTART_HEARTBEAT_INTERVAL": ("heartbeat_interval_s", parse_duration_s),
            "KALTSTART_NAMESPACES": ("namespaces", _namespaces),
            "KALTSTART_LEASE_NAME": ("lease_name", str),
            "KALTSTART_LEASE_DURATION": ("lease_duration_s", lambda v: _parse_int(parse_duration_s(v), 2)),
            "KUBECONFIG": ("kubeconfig", str),
        }
        for env_name, (attr, parse) in simple.items():
            raw = get(env_name)
            if raw is not None:
                try:
                    kwargs[attr] = parse(raw)  # type: ignore[operator]
                except ValueError as exc:
                    raise ConfigError(f"{env_name}: {exc}", key=env_name) from None
        if "namespaces" not in kwargs:
            kwargs["namespaces"] = (own_namespace(environ),)
        settings = cls(**kwargs)  # type: ignore[arg-type]
        if settings.backend not in ("local", "kubernetes"):
            raise ConfigError(f"KALTSTART_BACKEND: unknown backend {settings.backend!r}", key="KALTSTART_BACKEND")
        return settings
