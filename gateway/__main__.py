"""``python -m gateway``: the gateway, configured from the environment (see docs/configuration.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import uvicorn

from gateway.app import Backend, create_app
from gateway.backends.kubernetes.backend import KubernetesBackend, KubernetesSettings
from gateway.backends.kubernetes.leader import LeaseSettings
from gateway.backends.local import LocalBackend, load_local_config
from gateway.catalog import ModelCatalog
from gateway.embedded import EmbeddedRedis
from gateway.endpoints import ReadyEndpoints
from gateway.errors import ConfigError
from gateway.settings import GatewaySettings

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


def _local(settings: GatewaySettings, endpoints: ReadyEndpoints) -> tuple[Backend, ModelCatalog, str]:
    config = load_local_config(settings.config_path)
    backend = LocalBackend(config, endpoints)
    return backend, ModelCatalog(backend.models), config.models[0].settings.name


def _kubernetes(settings: GatewaySettings, endpoints: ReadyEndpoints) -> tuple[Backend, ModelCatalog, str]:
    catalog = ModelCatalog()
    lease = LeaseSettings(
        name=settings.lease_name,
        namespace=settings.namespaces[0],
        identity=settings.gateway_id,
        duration_s=settings.lease_duration_s,
    )
    kube = KubernetesSettings(namespaces=settings.namespaces, lease=lease, kubeconfig=settings.kubeconfig)
    return KubernetesBackend(kube, catalog, endpoints), catalog, "<model>"


def main() -> int:
    try:
        settings = GatewaySettings.from_env(os.environ)
        endpoints = ReadyEndpoints()
        make = _local if settings.backend == "local" else _kubernetes
        backend, catalog, example_model = make(settings, endpoints)
        if settings.redis_url is None and settings.backend != "local":
            raise ConfigError("REDIS_URL is required with the kubernetes backend")
    except ConfigError as exc:
        print(f"kaltstart: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    with contextlib.ExitStack() as stack:
        redis_url = settings.redis_url or stack.enter_context(EmbeddedRedis())
        if settings.redis_url is None:
            log.info("REDIS_URL not set: started an embedded Valkey at %s", redis_url)
        app = create_app(settings, redis_url=redis_url, backend=backend, endpoints=endpoints, catalog=catalog)
        print(_banner(f"http://{settings.host}:{settings.port}", example_model), flush=True)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
