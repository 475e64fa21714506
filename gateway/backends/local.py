"""The local backend: a replica is a ``python -m runtime`` process on a free 127.0.0.1 port.

Started on demand, ready when its ``/readyz`` answers 200, restarted with back-off if it dies while wanted
(like a kubelet's restartPolicy Always), stopped (SIGTERM, then SIGKILL) on scale-down. Children get
PR_SET_PDEATHSIG, so even a gateway killed with SIGKILL leaves no runtime behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence

import wire
from gateway.backends import NO_REPLICAS, BackendParts, Replicas
from gateway.backends.localconfig import LocalConfig, LocalModel
from gateway.catalog import ModelCatalog
from gateway.endpoints import ReadyEndpoints
from gateway.errors import UnknownModel
from gateway.processes import die_with_parent, free_port, probe_until_ready
from gateway.settings import ModelSettings

log = logging.getLogger("kaltstart.local")

#: How often a starting replica's /readyz is probed (what a kubelet's readinessProbe period does).
READY_PROBE_S = 0.1
#: Grace between SIGTERM and SIGKILL when stopping a replica.
STOP_GRACE_S = 10.0
#: Restart back-off for a replica that died: doubles from the first value up to the second.
RESTART_BACKOFF_S = (0.5, 30.0)


class LocalReplica:
    """One runtime process, kept alive while wanted."""

    def __init__(self, model: LocalModel, config: LocalConfig, index: int, group: ReplicaGroup) -> None:
        self._model = model
        self._config = config
        self.name = f"{model.settings.name}#{index}"
        self._group = group
        self.url: str | None = None
        self.ready = False
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task = asyncio.create_task(self._keep_running(), name=f"replica-{self.name}")

    def _argv(self, port: int) -> list[str]:
        m = self._model
        return [
            self._config.python, "-m", "runtime",
            "--model-name", m.settings.name,
            "--source", m.source,
            "--cache-dir", str(self._config.cache_dir),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--device", m.device,
            "--dtype", m.dtype,
            "--engine", m.engine,
            "--max-batch-size", str(m.settings.max_batch_size),
            *m.args,
        ]  # fmt: skip

    async def _keep_running(self) -> None:
        backoff = RESTART_BACKOFF_S[0]
        while not self._stopping:
            code = await self._run_once()
            if self._stopping:
                return
            log.warning("replica %s exited with %s; restarting in %.1f s", self.name, code, backoff)
            await asyncio.sleep(backoff)  # crash-loop back-off, as a kubelet does
            backoff = min(backoff * 2, RESTART_BACKOFF_S[1])

    async def _run_once(self) -> int | None:
        port = free_port()
        argv = self._argv(port)
        log.info("starting replica %s: %s", self.name, " ".join(argv))
        try:
            self._process = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            log.error("cannot start replica %s: %s", self.name, exc)
            return None
        relay = asyncio.create_task(self._relay_output(self._process))
        url = f"http://127.0.0.1:{port}"
        waiter = asyncio.create_task(self._process.wait())
        try:
            if await self._became_ready(url, waiter):
                self.url, self.ready = url, True
                self._group.publish()
                await waiter
        finally:
            self.url, self.ready = None, False
            self._group.publish()
            waiter.cancel()
            await relay
        return self._process.returncode

    async def _became_ready(self, url: str, exited: asyncio.Task[int]) -> bool:
        ready = await probe_until_ready(url + wire.READY_PATH, exited=exited.done, period_s=READY_PROBE_S)
        if ready:
            log.info("replica %s is ready at %s", self.name, url)
        return ready

    async def _relay_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            log.info("[%s] %s", self.name, line.decode(errors="replace").rstrip())

    async def stop(self) -> None:
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def kill(self) -> None:
        """Kill the process as a crash would (tests use this); it is restarted while wanted."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()


class ReplicaGroup:
    """The replicas of one model."""

    def __init__(self, model: LocalModel, config: LocalConfig, endpoints: ReadyEndpoints) -> None:
        self.model = model
        self._config = config
        self._endpoints = endpoints
        self.replicas: list[LocalReplica] = []
        self.lock = asyncio.Lock()
        self._started = 0

    def publish(self) -> None:
        self._endpoints.set(self.model.settings.name, [r.url for r in self.replicas if r.ready and r.url])

    async def resize(self, count: int) -> None:
        while len(self.replicas) < count:
            self.replicas.append(LocalReplica(self.model, self._config, self._started, self))
            self._started += 1
        while len(self.replicas) > count:
            replica = self.replicas.pop()
            await replica.stop()
        self.publish()

    def status(self) -> Replicas:
        return Replicas(desired=len(self.replicas), ready=sum(r.ready for r in self.replicas))


class LocalBackend:
    def __init__(self, config: LocalConfig, endpoints: ReadyEndpoints) -> None:
        self.config = config
        self._groups = {m.settings.name: ReplicaGroup(m, config, endpoints) for m in config.models}

    @property
    def models(self) -> list[ModelSettings]:
        return [m.settings for m in self.config.models]

    def _group(self, model: str) -> ReplicaGroup:
        try:
            return self._groups[model]
        except KeyError:
            raise UnknownModel(f"unknown model {model!r}") from None

    def replicas(self, model: str) -> Replicas:
        group = self._groups.get(model)
        return NO_REPLICAS if group is None else group.status()

    async def scale_up(self, model: str, at_least: int, *, fresh: bool = False) -> bool:
        group = self._group(model)
        async with group.lock:
            if len(group.replicas) >= at_least:
                return False
            log.info("scaling %s to %d replica(s)", model, at_least)
            await group.resize(at_least)
            return True

    async def scale_down(self, model: str, to: int) -> bool:
        group = self._group(model)
        async with group.lock:
            if len(group.replicas) <= to:
                return False
            await group.resize(to)
            return True

    def replica_processes(self, model: str) -> Sequence[LocalReplica]:
        return tuple(self._group(model).replicas)

    @property
    def is_leader(self) -> bool:
        """One gateway process owns its local replicas."""
        return True

    async def start(self) -> None:
        """Nothing runs until asked for; ``min-replicas`` are brought up by the autoscaler's first tick."""

    async def stop(self) -> None:
        for group in self._groups.values():
            async with group.lock:
                await group.resize(0)


def build_local(config: LocalConfig) -> BackendParts:
    """The local backend serving ``config``'s models, with its catalog and ready endpoints."""
    endpoints = ReadyEndpoints()
    backend = LocalBackend(config, endpoints)
    return BackendParts(backend, ModelCatalog(backend.models), endpoints, config.models[0].settings.name)
