"""``python -m gateway``: the gateway, configured from the environment (see docs/configuration.md);
``python -m gateway status``: every model's state, read-only (docs/operations.md, "What is broken now")."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys

from gateway import logs
from gateway.api.serving import quiet_request_logs, serve
from gateway.app import create_app
from gateway.backends import BackendParts
from gateway.backends.kubernetes.backend import build_kubernetes
from gateway.backends.kubernetes.owners import RedisOwners
from gateway.backends.local.backend import build_local
from gateway.backends.local.config import LocalConfig, load_local_config
from gateway.errors import ConfigError
from gateway.processes import redact
from gateway.settings import GatewaySettings
from gateway.status.command import run as run_status
from gateway.store.connection import connect
from gateway.store.embedded import EmbeddedRedis, UrlFile
from gateway.tracing import Tracing

log = logging.getLogger("kaltstart")


def _banner(base: str, model: str) -> str:
    return f"""
kaltstart is listening on {base}  (models: GET {base}/v1/models)

  curl {base}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 20}}'

  python -c "import openai; c = openai.OpenAI(base_url='{base}/v1', api_key='unused'); \\
print(c.completions.create(model='{model}', prompt='Once upon a time', max_tokens=20).choices[0].text)"

The first request starts a runtime replica (a cold start); after the idle timeout it is stopped again.
"""


def _local_config(settings: GatewaySettings) -> LocalConfig | None:
    """The local backend's model file (None for the Kubernetes backend), read before anything starts."""
    if settings.backend == "local":
        return load_local_config(settings.local.config_path)
    if settings.server.redis_url is None:
        raise ConfigError("REDIS_URL is required with the kubernetes backend")
    return None


def _with_runtime_token(settings: GatewaySettings, local: LocalConfig | None) -> GatewaySettings:
    """The local backend's runtimes are our own children: they get a random token per start, unless one is set."""
    if local is None or settings.server.runtime_token is not None:
        return settings
    return settings.replace(runtime_token=secrets.token_urlsafe(32))


def _backend(settings: GatewaySettings, local: LocalConfig | None, redis_url: str) -> BackendParts:
    if local is not None:
        # A runtime's line per batch is relayed into this log: per request, like the access log, so with it.
        return build_local(
            local, announce_to=redis_url, token=settings.server.runtime_token, batch_log=settings.server.access_log
        )
    owners = RedisOwners(connect(redis_url, settings.queue))
    return build_kubernetes(settings.kubernetes, identity=settings.server.gateway_id, owners=owners)


def _publish_url(stack: contextlib.ExitStack, port: int, redis_url: str) -> None:
    """Leave the embedded Valkey's URL where ``python -m gateway status`` on the same port finds it."""
    if port == 0:  # a random port: nobody could find the file by it
        return
    file = UrlFile(port, os.environ)
    try:
        stack.enter_context(file.published(redis_url))
    except (ConfigError, OSError) as exc:
        log.warning("could not leave the embedded Valkey's URL for `status` in %s (%s): it will need REDIS_URL",
                    file.path, exc)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["status"]:
        return run_status(args[1:], os.environ, sys.stdout, sys.stderr)
    try:
        settings = GatewaySettings.from_env(os.environ)
        local = _local_config(settings)
        settings = _with_runtime_token(settings, local)
    except ConfigError as exc:
        print(f"kaltstart: {exc}", file=sys.stderr)
        return 2
    server = settings.server
    logs.configure(server.log_level, "json" if server.log_format == "json" else "text")
    quiet_request_logs(server)
    try:
        tracing = Tracing.from_env(os.environ)
    except ConfigError as exc:
        print(f"kaltstart: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        redis_url = server.redis_url or stack.enter_context(EmbeddedRedis())
        if server.redis_url is None:
            log.info("REDIS_URL not set: started an embedded Valkey at %s", redact(redis_url))
            _publish_url(stack, server.port, redis_url)
        parts = _backend(settings, local, redis_url)
        app = create_app(settings, redis_url=redis_url, parts=parts, tracing=tracing)
        stack.callback(tracing.shutdown)
        print(_banner(f"http://{server.host}:{server.port}", parts.example_model), flush=True)
        serve(app, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
