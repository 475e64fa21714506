"""API keys: ``Authorization: Bearer <key>`` (what the OpenAI SDK sends) on every ``/v1/*`` route, when keys are
configured.

Keys come from ``KALTSTART_API_KEYS_FILE`` (a mounted Secret, re-read when it changes) and/or
``KALTSTART_API_KEYS``. A file line is ``KEY`` (every model) or ``KEY model-a,model-b`` (only those), then
optionally the key's name and quotas (``name=team-a max-requests=16 max-entries=64 max-queued-bytes=8MiB``, see
``gateway.queue.budget``; a name labels the key's metrics, which are otherwise labelled by a hash of it); ``#`` starts
a comment. The check runs in an ASGI middleware before the body is read, so a request without a valid
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
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.guards import refuse
from gateway.errors import ConfigError
from gateway.queue.budget import Quota, account_id
from gateway.settings import at_least, parse_bytes

log = logging.getLogger("kaltstart.auth")

#: How often the key file's metadata is looked at (a Secret update reaches the pod within about a minute).
RELOAD_CHECK_S = 1.0
STATE_KEY = "kaltstart.allowed_models"


NO_QUOTA = Quota()


@dataclass(frozen=True)
class Grant:
    """What one key may do: ``models`` None means every model. ``account``: the key's account (a hash of it; empty
    when no keys are configured), ``name`` its label in metrics, ``quota`` its own limits."""

    models: frozenset[str] | None = None
    account: str = ""
    name: str = ""
    quota: Quota = NO_QUOTA

    @property
    def label(self) -> str:
        return self.name or f"key-{self.account[:8]}"

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


ALL_MODELS = Grant()


#: A key-file line's fields after the key and its models: name -> parser.
_FIELDS: dict[str, Callable[[str], Any]] = {
    "name": str,
    "max-requests": at_least(1),
    "max-entries": at_least(1),
    "max-queued-bytes": parse_bytes,
}


def parse_keys(text: str, source: str) -> dict[str, Grant]:
    """``KEY [model,model...] [field=value...]`` per line. Raises ``ConfigError`` naming the line (never the
    key)."""
    keys: dict[str, Grant] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, *words = line.split()
        if len(key) < 8:
            raise ConfigError(f"{source}, line {number}: an API key must have at least 8 characters")
        try:
            fields = _fields([w for w in words if "=" in w])
        except ValueError as exc:
            raise ConfigError(f"{source}, line {number}: {exc}") from None
        listed = ",".join(w for w in words if "=" not in w)
        models = frozenset(m.strip() for m in listed.split(",") if m.strip()) if listed else None
        quota = Quota(fields.get("max-requests"), fields.get("max-entries"), fields.get("max-queued-bytes"))
        keys[key] = Grant(models, account_id(key), fields.get("name", ""), quota)
    return keys


def _fields(words: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for word in words:
        name, _, value = word.partition("=")
        if name not in _FIELDS:
            raise ValueError(f"unknown field {name!r} (known: {', '.join(_FIELDS)})")
        fields[name] = _FIELDS[name](value)
    return fields


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
        fixed = {key: Grant(account=account_id(key)) for key in keys}
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
