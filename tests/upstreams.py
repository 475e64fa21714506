"""Independent OpenAI-compatible servers the tests run as real upstreams (issue #25): `transformers serve`.

docs/upstreams.md says how `transformers serve` behaves (the model name it answers to, what it refuses, its SSE,
cancellation, concurrency); this module starts one the way that page writes it down."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from gateway.processes import free_port
from loadtest.children import Child, child_env, wait_until_ready

#: Loading the demo model and importing torch take about 8 s on an idle 2-core machine; several times that when
#: benchmarks share the cores.
START_TIMEOUT_S = 120.0
#: SIGTERM stops it in about a second (uvicorn, then its model process); the group is killed after this.
STOP_GRACE_S = 10.0
#: No update check against PyPI at start (`check_cli_update`), no Hub access: the model is a local directory.
OFFLINE = {"HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1"}


def serve_argv(model_dir: Path, port: int, args: Sequence[str] = ()) -> list[str]:
    """`transformers serve` with ``model_dir`` preloaded (the only model served: a request must name it exactly as
    given here, ``str(model_dir)``, or name none), on CPU, on 127.0.0.1:``port``."""
    return [
        sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir),
        "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args,
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def transformers_serve(
    model_dir: Path,
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    log_path: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> AsyncIterator[str]:
    """`transformers serve` serving ``model_dir`` on CPU as a child process (its own process group, its output in
    ``log_path``, by default a temporary file), once its ``/health`` answers 200, which it does only after the model
    loaded; yields its base URL (``http://127.0.0.1:PORT``, no ``/v1``). ``args`` are more `transformers serve` flags
    (``["--continuous-batching"]``). Stopped on exit: SIGTERM, then SIGKILL to its group (its model process)."""
    with contextlib.ExitStack() as scratch:
        if log_path is None:
            log_path = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="transformers-serve-"))) / "log"
        port = free_port() if port is None else port
        child = Child("transformers serve", serve_argv(model_dir, port, args), child_env(OFFLINE), log_path)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_until_ready(url + "/health", child, timeout_s)
            yield url
        finally:
            await asyncio.to_thread(child.stop, STOP_GRACE_S)
