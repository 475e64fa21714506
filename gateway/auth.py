"""API keys: ``Authorization: Bearer <key>`` (what the OpenAI SDK sends) on every ``/v1/*`` route, when keys are
configured.

Keys come from ``KALTSTART_API_KEYS_FILE`` (a mounted Secret, re-read when it changes) and/or
``KALTSTART_API_KEYS``. A file line is ``KEY`` (every model) or ``KEY model-a,model-b`` (only those); ``#``
starts a comment. The check runs in an ASGI middleware before the body is read, so a request without a valid
key never reaches the queue and never scales anything. Keys are compared in constant time and never logged.

A reload that cannot read or parse the changed file fails closed: every key from the file is revoked (an error
is logged; the keys of ``KALTSTART_API_KEYS`` stay) until the file reads again, so that a revocation saved with
a typo elsewhere in the file still revokes, rather than leaving every old key valid.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ConfigError
from gateway.guards import refuse

log = logging.getLogger("kaltstart.auth")

#: How often the key file's metadata is looked at (a Secret update reaches the pod within about a minute).
RELOAD_CHECK_S = 1.0
STATE_KEY = "kaltstart.allowed_models"


@dataclass(frozen=True)
class Grant:
    """What one key may do: ``models`` None means every model."""

    models: frozenset[str] | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


ALL_MODELS = Grant()


def parse_keys(text: str, source: str) -> dict[str, Grant]:
    """``KEY [model,model...]`` per line. Raises ``ConfigError`` naming the line (never the key)."""
    keys: dict[str, Grant] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        key = parts[0]
        if len(key) < 8:
            raise ConfigError(f"{source}, line {number}: an API key must have at least 8 characters")
        models = frozenset(m.strip() for m in parts[1].split(",") if m.strip()) if len(parts) > 1 else None
        keys[key] = Grant(models)
    return keys


class ApiKeys:
    """The configured keys; ``lookup`` compares a presented key with every one of them (constant time)."""

    def __init__(
        self, fixed: Mapping[str, Grant], file: Path | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fixed = dict(fixed)
        self._clock = clock
        self._file = file
        self._from_file: dict[str, Grant] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        if file is not None:
            self._from_file = parse_keys(file.read_text(), str(file))  # a bad file stops the start-up
            self._signature = _signature(file)

    @classmethod
    def configured(cls, keys: Iterable[str], file: Path | None) -> ApiKeys | None:
        """None when no key is configured at all (the API is open, as for ``make run`` on 127.0.0.1)."""
        fixed = {key: ALL_MODELS for key in keys}
        for key in fixed:
            if len(key) < 8:
                raise ConfigError("KALTSTART_API_KEYS: an API key must have at least 8 characters")
        if not fixed and file is None:
            return None
        return cls(fixed, file)

    def lookup(self, presented: str) -> Grant | None:
        self._maybe_reload()
        found: Grant | None = None
        given = presented.encode()
        for key, grant in (self._fixed | self._from_file).items():
            if hmac.compare_digest(given, key.encode()):  # no early exit: every key is compared
                found = grant
        return found

    def _maybe_reload(self) -> None:
        now = self._clock()
        if self._file is None or now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            signature = _signature(self._file)
            if signature != self._signature:
                self._from_file = parse_keys(self._file.read_text(), str(self._file))
                self._signature = signature
                log.info("API keys reloaded from %s: %d key(s)", self._file, len(self._from_file))
        except (OSError, ValueError, ConfigError) as exc:  # ValueError: not UTF-8 text
            if self._signature is not None:  # once per failure, not at every check
                log.error(
                    "cannot reload API keys from %s, every key from it is revoked until it is fixed: %s",
                    self._file,
                    exc,
                )
            self._from_file, self._signature = {}, None  # fail closed; read again at the next check


def _signature(path: Path) -> tuple[int, int, int]:
    # A Secret volume swaps a symlink on update: the resolved file's inode, size and mtime change together.
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def allowed_models(scope: Scope) -> Grant:
    """The grant of the request's key (every model when no keys are configured)."""
    grant: Grant = scope.get("state", {}).get(STATE_KEY, ALL_MODELS)
    return grant


class ApiKeyAuth:
    """ASGI middleware: ``/v1/*`` needs a valid key; anything else passes (health and metrics are unguarded,
    and belong on ``KALTSTART_METRICS_PORT``)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self._app = app
        self._keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self._app(scope, receive, send)
            return
        grant = self._keys.lookup(_bearer(scope))
        if grant is None:
            message = "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'."
            await refuse(send, 401, message, "invalid_api_key", [(b"www-authenticate", b'Bearer realm="kaltstart"')])
            return
        scope.setdefault("state", {})[STATE_KEY] = grant
        await self._app(scope, receive, send)


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""
