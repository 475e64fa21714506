"""``python -m gateway status [--json] [--redis-url URL] [--gateway URL]``: reads the settings the gateway reads.

Exit status: 0 the table was printed; 1 Redis (or the Kubernetes API) could not be read; 2 a usage or settings
error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TextIO

from gateway.backends.kubernetes.owners import RedisOwners
from gateway.backends.local.config import load_local_config
from gateway.errors import BackendError, ConfigError, QueueUnavailable
from gateway.processes import redact
from gateway.settings import GatewaySettings
from gateway.status.report import ReplicaSource, read_report
from gateway.status.sources import GatewayScrape, KubernetesSource, LocalSource
from gateway.status.table import render_json, render_table
from gateway.store.connection import connect
from gateway.store.embedded import UrlFile
from wire.redis_url import RedisClient

#: Hosts a gateway listens on for every interface; it is reached on loopback then.
_ANY_HOST = {"0.0.0.0", "::", ""}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway status",
        description="Every catalogued model: replicas, queue, last activity, keep-alive, cold start. Reads the "
        "gateway's own settings (REDIS_URL, KALTSTART_BACKEND, KALTSTART_CONFIG, ...); changes nothing.",
    )
    p.add_argument("--json", action="store_true", help="print JSON (schema kaltstart.status/v1) instead of a table")
    p.add_argument("--redis-url", help="the Redis to read (default: REDIS_URL, else the Valkey of `make run`)")
    p.add_argument(
        "--gateway",
        help="base URL of a running gateway whose /metrics give the local backend's replicas and pool states "
        "(default with the local backend: http://KALTSTART_HOST:KALTSTART_PORT; with kubernetes: none)",
    )
    return p


def run(argv: Sequence[str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the errors below say it once, on one line
    redis_url = None
    try:
        settings = GatewaySettings.from_env(environ)
        redis_url = args.redis_url or settings.server.redis_url or _make_run_url(settings, environ)
        text = asyncio.run(_status(settings, redis_url, args))
    except ConfigError as exc:
        print(f"kaltstart status: {exc}", file=err)
        return 2
    except QueueUnavailable as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        print(f"kaltstart status: cannot read Redis at {redact(str(redis_url))}{redact(cause)}", file=err)
        return 1
    except BackendError as exc:
        print(f"kaltstart status: {exc}", file=err)
        return 1
    out.write(text)
    return 0


def _make_run_url(settings: GatewaySettings, environ: Mapping[str, str]) -> str:
    """The URL ``python -m gateway`` on this port left for its embedded Valkey (local backend, no REDIS_URL)."""
    port = settings.server.port
    file = UrlFile(port, environ)
    url = file.read() if settings.backend == "local" else None
    if url is None:
        raise ConfigError(
            f"REDIS_URL is not set, and no gateway on port {port} left the URL of its embedded Valkey in "
            f"{file.path}: set REDIS_URL (or --redis-url), or KALTSTART_PORT to the gateway's port"
        )
    return url


async def _status(settings: GatewaySettings, redis_url: str, args: argparse.Namespace) -> str:
    redis = connect(redis_url, settings.queue)
    try:
        source = _source(settings, redis, args.gateway)
        statuses = await read_report(redis, source, shortest_keep_s=settings.queue.scale_interval_s)
    finally:
        await redis.aclose()
    if args.json:
        return render_json(statuses, settings.backend, source.describe)
    return render_table(statuses, source.describe)


def _source(settings: GatewaySettings, redis: RedisClient, gateway: str | None) -> ReplicaSource:
    if settings.backend == "local":
        return LocalSource(load_local_config(settings.local.config_path), GatewayScrape(gateway or _own_url(settings)))
    # Only read: the owners' records are written by the gateways alone.
    return KubernetesSource(settings.kubernetes, RedisOwners(redis), GatewayScrape(gateway) if gateway else None)


def _own_url(settings: GatewaySettings) -> str:
    """Where the gateway of these settings serves ``/metrics``."""
    server = settings.server
    host = "127.0.0.1" if server.host in _ANY_HOST else server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.metrics_port or server.port}"
