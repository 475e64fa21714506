"""``python -m gateway``: the gateway with the local backend, configured from the environment."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import uvicorn

from gateway.app import create_app
from gateway.backends.local import LocalBackend, load_local_config
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


def main() -> int:
    try:
        settings = GatewaySettings.from_env(os.environ)
        config = load_local_config(settings.config_path)
    except ConfigError as exc:
        print(f"kaltstart: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    with contextlib.ExitStack() as stack:
        redis_url = settings.redis_url or stack.enter_context(EmbeddedRedis())
        if settings.redis_url is None:
            log.info("REDIS_URL not set: started an embedded Valkey at %s", redis_url)
        endpoints = ReadyEndpoints()
        backend = LocalBackend(config, endpoints)
        app = create_app(settings, redis_url=redis_url, backend=backend, endpoints=endpoints, models=backend.models)
        print(_banner(f"http://{settings.host}:{settings.port}", config.models[0].settings.name), flush=True)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
