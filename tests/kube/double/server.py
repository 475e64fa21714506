"""``ApiDouble``: the store, the HTTP server and the fake kubelet, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import uvicorn

from .app import ApiApp, DropWatchAborts
from .control import control_routes
from .errors import bad_request
from .faults import RecordedRequest, RequestHooks
from .kubelet import FakeKubelet
from .resources import ResourceType, lookup_kind
from .selection import LabelSelector
from .settings import KubeletSettings
from .store import Store

T = TypeVar("T")
_DROP_WATCH_ABORTS = DropWatchAborts()


class _InLoopServer(uvicorn.Server):
    """uvicorn on the caller's event loop, leaving the process's signal handlers alone, and stopping as soon
    as asked rather than at its next 0.1 s tick."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self._exit = asyncio.Event()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit.set()

    async def main_loop(self) -> None:
        await self.on_tick(0)  # sets the default response headers
        await self._exit.wait()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class ApiDouble:
    """A kube-apiserver stand-in on 127.0.0.1, with a fake controller and kubelet that run real processes.

    Use as ``async with ApiDouble() as api:``; ``api.write_kubeconfig(path)`` for clients.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        history_size: int = 1000,
        token: str | None = "kaltstart-double-token",
        kubelet: KubeletSettings | None = None,
    ) -> None:
        self.store = Store(history_size)
        self.hooks = RequestHooks()
        self.kubelet = FakeKubelet(self.store, kubelet)
        self.token = token
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only for sockets that
        # say so, and without it every response waits ~40 ms for the client's delayed ACK.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port: int = self._socket.getsockname()[1]
        self._server: _InLoopServer | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        logging.getLogger("uvicorn.error").addFilter(_DROP_WATCH_ABORTS)
        api = ApiApp(self.store, self.hooks, self.kubelet.pod_log, lambda: f"127.0.0.1:{self.port}")
        app = api.build(control_routes(self), self.token)
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        self._server = _InLoopServer(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="kube api double")
        ready = asyncio.create_task(self._server.ready.wait())
        await asyncio.wait([ready, self._serving], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await self._serving  # raises whatever stopped the server from starting
        await self.kubelet.start()

    async def stop(self) -> None:
        """Stop all pods, end all watch streams, then the server."""
        await self.kubelet.stop()
        self.store.close_watches()
        if self._server is not None and self._serving is not None:
            self._server.request_exit()
            await self._serving
        self._socket.close()

    async def __aenter__(self) -> ApiDouble:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def write_kubeconfig(self, path: Path | str, namespace: str = "default") -> Path:
        """Write a kubeconfig (JSON, which is YAML) with one context pointing at this double."""
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": user}],
            "contexts": [
                {"name": "double", "context": {"cluster": "double", "user": "double", "namespace": namespace}}
            ],
            "current-context": "double",
            "preferences": {},
        }
        path = Path(path)
        path.write_text(json.dumps(kubeconfig, indent=2))
        return path

    # -- test hooks ------------------------------------------------------------------------------------

    def fail_next(
        self,
        verb: str,
        resource: str,
        status: int = 409,
        times: int = 1,
        *,
        name: str | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """Make the next ``times`` requests matching verb and resource (``"deployments/scale"``) fail.

        Verbs: get, list, watch, create, update (or replace), patch, delete, deletecollection, or ``*``;
        resource ``*`` matches any. A watch fault of 410 arrives as an ERROR event, others as HTTP errors.
        """
        self.hooks.fail_next(verb, resource, status, times, name=name, reason=reason, message=message)

    def expire_history(self) -> None:
        """Forget the history: a watch resuming from any resourceVersion so far (the latest too) gets 410."""
        self.store.expire_history()

    def break_watches(self, abrupt: bool = False) -> int:
        """End every open watch stream: cleanly (as on a server-side timeout) or ``abrupt``ly, dropping the
        connection mid-response. Returns the number of streams ended."""
        return self.store.close_watches(abrupt)

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.hooks.requests)

    def requests_for(self, verb: str, resource: str, name: str | None = None) -> list[RecordedRequest]:
        return self.hooks.matching(verb, resource, name)

    # -- direct access, bypassing HTTP -----------------------------------------------------------------

    def create(self, manifest: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create an object from a manifest (apiVersion and kind pick the resource)."""
        rt = lookup_kind(manifest.get("apiVersion", ""), manifest.get("kind", ""))
        if rt is None:
            raise bad_request(f"the double does not serve {manifest.get('apiVersion')} {manifest.get('kind')}")
        namespace = namespace or (manifest.get("metadata") or {}).get("namespace") or "default"
        return self.store.create(rt, namespace, manifest)

    def find(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.store.find(self._resource(api_version, kind), namespace, name)

    def objects(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        rt = self._resource(api_version, kind)
        return self.store.list(rt, namespace, LabelSelector.parse(label_selector))

    async def wait_for(self, check: Callable[[], T | None], timeout_s: float = 10.0, what: str = "condition") -> T:
        """Wait until ``check()`` returns something truthy, re-checking after every write to the store."""
        return await self.store.wait_until(check, timeout_s, what)

    @staticmethod
    def _resource(api_version: str, kind: str) -> ResourceType:
        rt = lookup_kind(api_version, kind)
        if rt is None:
            raise LookupError(f"the double does not serve {api_version} {kind}")
        return rt
