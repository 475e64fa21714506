"""``python -m runtime [flags]``: serve one model to the kaltstart gateway. ``--help`` lists the flags."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from runtime import logs, tracing
from runtime.errors import SettingsError
from runtime.settings import RuntimeSettings

__all__ = ["main", "serve"]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = RuntimeSettings.from_args(sys.argv[1:] if argv is None else argv, os.environ)
    except SettingsError as exc:
        print(f"python -m runtime: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level.upper(), "json" if settings.log_format == "json" else "text")
    tracing.configure(os.environ)
    if not settings.batch_log:
        logging.getLogger("runtime.scheduling.batches").setLevel(logging.WARNING)
    return serve(settings)


def serve(settings: RuntimeSettings) -> int:
    """Run uvicorn until SIGINT/SIGTERM (exit 0) or until the model fails to load (exit 1)."""
    import uvicorn

    from runtime.server.app import create_app

    failed = False

    def on_fatal() -> None:
        nonlocal failed
        failed = True
        server.should_exit = True

    config = uvicorn.Config(
        create_app(settings, on_fatal=on_fatal),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the logging set up in main(); uvicorn's loggers propagate to it
        access_log=False,  # /readyz polling would drown the log; batches log one line each
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        tracing.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
