"""Helpers for the child processes local mode starts (runtimes, the embedded Valkey): their ports, their
environment (an allow-list: no API key, no Redis URL of the gateway's own), their readiness probe, and the
redaction of passwords from anything logged about them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping

import httpx

#: One probe's own timeout: a process that accepts but does not answer is not ready.
PROBE_TIMEOUT_S = 2.0

#: Variables a runtime child inherits by name: what Python, torch, CUDA and a Hugging Face download need. Any
#: other variable of the gateway (``KALTSTART_API_KEYS*``, ``REDIS_URL``, cloud credentials) stays with it.
CHILD_ENV_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "LD_LIBRARY_PATH",
        "PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS", "PYTHONFAULTHANDLER",
        "VIRTUAL_ENV", "XDG_CACHE_HOME", "TOKENIZERS_PARALLELISM", "HUGGING_FACE_HUB_TOKEN",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
        "KALTSTART_LOG_FORMAT",
    }
)  # fmt: skip
#: ... and by prefix: the runtime's own settings, the model hub's, the accelerator's and the BLAS libraries', and
#: OpenTelemetry's (a traced gateway's runtimes are traced to the same collector; ``OTEL_SERVICE_NAME`` is the
#: runtime's own, ``child_environment``).
CHILD_ENV_PREFIXES = (
    "KALTSTART_RUNTIME_", "LC_", "HF_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_", "CUBLAS_",
    "NCCL_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "COVERAGE_", "OTEL_",
)  # fmt: skip

_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@\s]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (``redis://:***@host``)."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)


def child_environment(parent: Mapping[str, str], settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of a runtime child: the allow-listed variables of ``parent``, then ``settings`` (which
    win, and carry what must not go on the command line: ``ps`` shows any user's argv)."""
    inherited = {
        name: value for name, value in parent.items() if name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES)
    }
    inherited.pop("OTEL_SERVICE_NAME", None)  # the gateway's name: the runtime names itself
    return inherited | {"PYTHONUNBUFFERED": "1"} | dict(settings)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn``: the child gets SIGTERM when its parent dies, however the parent dies."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def probe_until_ready(
    url: str,
    *,
    exited: Callable[[], bool],
    period_s: float,
    timeout_s: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> bool:
    """GET ``url`` (with ``headers``) every ``period_s`` until it answers 200 (True) or ``exited()`` says the
    process is gone (False); ``TimeoutError`` after ``timeout_s``. Another process's state has no event to wait
    on, so this polls, as a kubelet's readiness probe does."""
    client = httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, headers=dict(headers or {}))
    async with client, asyncio.timeout(timeout_s):
        while not exited():
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(period_s)
    return False
