"""The processes a benchmark starts: gateways (``python -m gateway``) and runtimes (``python -m runtime``).

Each child runs in its own process group with its output in a log file. ``stop`` ends the whole group, so a
gateway's runtime replicas and embedded Valkey go with it: SIGTERM to the child, a grace period, then SIGKILL to
the group. Children also
get PR_SET_PDEATHSIG, so even a load test killed with SIGKILL leaves nothing behind. Use them through the
``running_*`` context managers, which stop them however the block is left (errors, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.backends.local.config import LocalConfig, LocalModel, write_local_config
from gateway.processes import die_with_parent, free_port, probe_until_ready
from gateway.settings import ModelSettings

__all__ = [
    "TRANSFORMERS_SERVE",
    "Child",
    "GatewayProcess",
    "LogFile",
    "RuntimeProcess",
    "StartError",
    "gateway_child",
    "local_model",
    "openai_model",
    "running_gateway",
    "running_runtime",
    "scratch_dir",
    "wait_until_ready",
    "write_config",
]

#: Where ``python -m gateway`` / ``python -m runtime`` are importable from, installed or not.
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: How often a starting child's readiness endpoint is probed (another process: there is no event to wait on).
_PROBE_S = 0.05
_STOP_GRACE_S = 15.0


class StartError(Exception):
    """A child did not become ready: it exited, or its deadline passed. The message carries its log's tail."""


class LogFile:
    """A child's log, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def text(self, offset: int = 0) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    async def wait_for(self, pattern: re.Pattern[str], offset: int, timeout_s: float) -> re.Match[str]:
        """The first match of ``pattern`` after ``offset``; the file is re-read until the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            match = pattern.search(self.text(offset))
            if match is not None:
                return match
            if time.monotonic() > deadline:
                raise StartError(f"no {pattern.pattern!r} in {self.path} within {timeout_s:.0f} s:\n{self.tail()}")
            await asyncio.sleep(_PROBE_S)  # a file another process writes: polled with a deadline


class Child:
    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log = LogFile(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as output:
            self.process = subprocess.Popen(
                list(argv),
                cwd=_PROJECT_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                process_group=0,  # our own group: stop() reaches grandchildren; a terminal's Ctrl-C does not
                preexec_fn=die_with_parent,
            )

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def stop(self, grace_s: float = _STOP_GRACE_S) -> None:
        """SIGTERM to the child, so that it stops its own children in order (a gateway its replicas, then its
        Valkey); then SIGKILL to whatever is left of its process group, at once or after ``grace_s``."""
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextlib.contextmanager
def scratch_dir(out: Path | None) -> Iterator[Path]:
    """Where logs and generated configs go: ``out`` when given (kept), else a temporary directory (removed)."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        yield out.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="kaltstart-loadtest-") as temporary:
        yield Path(temporary)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without kaltstart's own settings (a stray REDIS_URL or KALTSTART_* would change what is
    measured), plus ``extra``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KALTSTART_") and k != "REDIS_URL"}
    return inherited | {"PYTHONUNBUFFERED": "1"} | dict(extra)


async def wait_until_ready(url: str, child: Child, timeout_s: float) -> None:
    """Until ``url`` answers 200; StartError if the child exits or the deadline passes first."""
    try:
        ready = await probe_until_ready(
            url, exited=lambda: child.returncode is not None, period_s=_PROBE_S, timeout_s=timeout_s
        )
    except TimeoutError:
        raise StartError(f"{child.name} was not ready at {url} within {timeout_s:.0f} s:\n{child.log.tail()}") from None
    if not ready:
        raise StartError(f"{child.name} exited with {child.returncode}:\n{child.log.tail()}")


def local_model(
    name: str,
    source: str,
    *,
    engine: str = "torch",
    device: str = "cpu",
    dtype: str = "auto",
    args: Sequence[str] = (),
    **settings: str | int | float,
) -> LocalModel:
    """A model of a generated local-backend config. Benchmarks run on CPU unless told otherwise; ``args`` are
    extra ``python -m runtime`` flags for its replicas (``["--scheduler", "static"]``); ``settings`` use the
    config file's keys with ``_`` for ``-`` (``idle_timeout="5s"``)."""
    keys = {key.replace("_", "-"): value for key, value in settings.items()}
    return LocalModel(
        ModelSettings.parse(name, keys), source=source, engine=engine, device=device, dtype=dtype, args=tuple(args)
    )


#: ``transformers serve`` (transformers' own OpenAI-compatible server) as a local model's ``command``: the console
#: script installed next to this interpreter, on CPU, the model preloaded. It serves the model under its path.
TRANSFORMERS_SERVE = (
    str(Path(sys.executable).parent / "transformers"), "serve", "{source}", "--host", "{host}", "--port", "{port}",
    "--device", "cpu", "--log-level", "warning",
)  # fmt: skip


def openai_model(
    name: str, source: Path | str, command: Sequence[str] = TRANSFORMERS_SERVE, **settings: str | int | float
) -> LocalModel:
    """A local model whose replicas are an OpenAI-compatible server (``protocol = openai``) started by ``command``;
    ``transformers serve`` answers under the model's path, so that is the ``upstream-model`` unless given.
    ``settings`` use the config file's keys with ``_`` for ``-``."""
    keys: dict[str, str | int | float] = {"protocol": "openai", "upstream-model": str(source)}
    keys |= {key.replace("_", "-"): value for key, value in settings.items()}
    return LocalModel(ModelSettings.parse(name, keys), source=str(source), command=tuple(command))


def write_config(path: Path, models: Sequence[LocalModel], cache_dir: Path, *, standby: int = 0) -> Path:
    """The gateway's model file, written by the gateway's own writer (``gateway.backends.local.config``). No
    standby runtime unless asked: one that starts in the background would disturb what a benchmark measures."""
    config = LocalConfig(models=tuple(models), cache_dir=cache_dir.resolve(), standby=standby)
    return write_local_config(path, config)


@dataclass(frozen=True)
class GatewayProcess:
    url: str
    child: Child
    #: The token its runtimes require (``KALTSTART_RUNTIME_TOKEN``): a bench's direct side sends it as the gateway does.
    runtime_token: str

    @property
    def log(self) -> LogFile:
        return self.child.log


@contextlib.asynccontextmanager
async def running_gateway(
    config: Path,
    log_path: Path,
    *,
    scale_interval_s: float | None = None,
    redis_url: str | None = None,
    timeout_s: float = 60.0,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway`` with ``config`` (an absolute path) on a free port, with its own embedded Valkey unless
    ``redis_url`` is given. ``extra_env`` goes to the gateway and so to the replicas it starts (which inherit its
    environment), e.g. ``OMP_NUM_THREADS``."""
    port = free_port()
    env = dict(extra_env or {}) | {
        "KALTSTART_CONFIG": str(config),
        "KALTSTART_HOST": "127.0.0.1",
        "KALTSTART_PORT": str(port),
        "KALTSTART_LOG_LEVEL": "INFO",  # the cold-start phases are read from the log
    }
    if scale_interval_s is not None:
        env["KALTSTART_SCALE_INTERVAL"] = f"{scale_interval_s}s"
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    async with gateway_child(env, port, log_path, timeout_s) as gateway:
        yield gateway


@contextlib.asynccontextmanager
async def gateway_child(
    env: Mapping[str, str], port: int, log_path: Path, timeout_s: float
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway`` with ``env`` (its port among it: ``port``), once its ``/readyz`` answers. Its runtimes
    require a token (``env``'s ``KALTSTART_RUNTIME_TOKEN``, else a new one), which the result carries."""
    token = env.get("KALTSTART_RUNTIME_TOKEN") or secrets.token_urlsafe(24)
    child = Child(
        "gateway", [sys.executable, "-m", "gateway"], child_env({**env, "KALTSTART_RUNTIME_TOKEN": token}), log_path
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_until_ready(url + "/readyz", child, timeout_s)
        yield GatewayProcess(url, child, token)
    finally:
        child.stop()


@dataclass(frozen=True)
class RuntimeProcess:
    url: str
    child: Child


@contextlib.asynccontextmanager
async def running_runtime(
    flags: Sequence[str], log_path: Path, timeout_s: float = 300.0, env: Mapping[str, str] | None = None
) -> AsyncIterator[RuntimeProcess]:
    """``python -m runtime FLAGS`` on a free port (``env`` added to its environment), once its ``/readyz`` answers
    200 (weights loaded, warm)."""
    port = free_port()
    argv = [sys.executable, "-m", "runtime", *flags, "--host", "127.0.0.1", "--port", str(port)]
    child = Child("runtime", argv, child_env(env or {}), log_path)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_until_ready(url + "/readyz", child, timeout_s)
        yield RuntimeProcess(url, child)
    finally:
        child.stop()
