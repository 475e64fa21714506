"""kaltstart's gateway: one OpenAI-compatible endpoint in front of models that scale to zero.

The public surface is small: build ``GatewaySettings``, a backend with its builder (``build_local``,
``build_kubernetes``), and call ``create_app``. The modules show the
architecture: ``routes`` (HTTP) -> ``service`` (admit, enqueue, await) -> ``queue`` (Redis Streams) ->
``dispatch`` (batches to runtimes) and ``scaling``/``policy`` (replicas), with ``backends`` behind a Protocol.
"""

from gateway.app import create_app
from gateway.settings import GatewaySettings, ModelSettings

__all__ = ["GatewaySettings", "ModelSettings", "create_app"]
