"""The local backend: a replica is a ``python -m runtime`` process on a free 127.0.0.1 port (or, for a model with
``protocol = "openai"``, the OpenAI-compatible server its ``command`` starts, ready when its ``health-path`` answers).
A pool's replica is one ``python -m runtime --pool`` process serving all its models; its replicas are ready for
each of them (``ReplicaGroup`` per scaling unit: a model of its own, or a pool). A LoRA adapter (``[models.*]`` with
``base`` and ``adapter``) has no replicas of its own: its base's group scales for it, its base's replicas serve it.

Started on demand (by claiming a standby runtime if one is up, see ``gateway.backends.local.runtimes``), ready when its
``/readyz`` answers 200 or it announces itself, restarted with back-off if it dies while wanted (like a kubelet's
restartPolicy Always), stopped (SIGTERM, then SIGKILL) on scale-down. Children get PR_SET_PDEATHSIG, so even a
gateway killed with SIGKILL leaves no runtime behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import wire
from gateway.backends import NO_REPLICAS, BackendParts, Replicas
from gateway.backends.local.config import LocalConfig, LocalModel, LocalPool
from gateway.backends.local.runtimes import RuntimeEnvironment, RuntimeProcess, StandbyPool
from gateway.catalog import ModelCatalog
from gateway.errors import UnknownModel
from gateway.processes import probe_until_ready
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.settings import ModelSettings

log = logging.getLogger("kaltstart.local")

#: How often a starting replica's /readyz is probed (what a kubelet's readinessProbe period does).
READY_PROBE_S = 0.1
#: Restart back-off for a replica that died: doubles from the first value up to the second.
RESTART_BACKOFF_S = (0.5, 30.0)


class LocalReplica:
    """One runtime process, kept alive while wanted: a claimed standby, or a process started for it."""

    def __init__(self, index: int, group: ReplicaGroup) -> None:
        self.name = f"{group.name}#{index}"
        self._group = group
        self.url: str | None = None
        self.ready = False
        self._process: RuntimeProcess | None = None
        self._stopping = False
        self._task = asyncio.create_task(self._keep_running(), name=f"replica-{self.name}")

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
        process = await self._group.runtime_for(self.name)
        if process is None:
            return None
        self._process, self.url = process, process.url
        self._group.publish()  # vouches for its announcements from now on
        waiter = asyncio.create_task(process.wait())
        try:
            if await self._became_ready(process.url, waiter):
                self.ready = True
                self._group.publish()
            self._group.replica_settled()
            await waiter
        finally:
            self.url, self.ready = None, False
            self._group.publish()
            waiter.cancel()
            self._group.replica_settled()
        return process.process.returncode

    async def _became_ready(self, url: str, exited: asyncio.Task[int]) -> bool:
        """Probe until ready; False at once if the process exits first (it may have been announced ready and
        got work already, so its exit must not wait for the next probe)."""
        route, headers = self._group.ready_route, self._group.env.headers
        probe = asyncio.create_task(
            probe_until_ready(url + route, exited=exited.done, period_s=READY_PROBE_S, headers=headers)
        )
        await asyncio.wait({probe, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not probe.done():
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            return False
        ready = probe.result()
        if ready:
            log.info("replica %s is ready at %s", self.name, url)
        return ready

    async def stop(self) -> None:
        self._stopping = True
        if self._process is not None:
            await self._process.stop()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def pid(self) -> int | None:
        """The process id of its runtime, while it has one."""
        return None if self._process is None else self._process.process.pid

    def kill(self) -> None:
        """Kill the process as a crash would (tests use this); it is restarted while wanted."""
        if self._process is not None:
            self._process.kill()


class ReplicaGroup:
    """The replicas of one scaling unit: one model (``models`` holds it alone), or a pool's models."""

    def __init__(
        self,
        *,
        models: Sequence[LocalModel],
        config: LocalConfig,
        endpoints: ReadyEndpoints,
        standbys: StandbyPool,
        env: RuntimeEnvironment,
        extra: Sequence[str],
        pool: LocalPool | None = None,
    ) -> None:
        self.models = tuple(models)
        self.pool = pool
        self.name = pool.name if pool is not None else models[0].settings.name
        self._config = config
        self._endpoints = endpoints
        self._standbys = standbys
        self.env = env
        self._extra = tuple(extra)
        self.replicas: list[LocalReplica] = []
        self.lock = asyncio.Lock()
        self._started = 0

    @property
    def ready_route(self) -> str:
        """What a replica's readiness probe asks for: our runtime's ``/readyz``, or an upstream's ``health-path``."""
        settings = self.models[0].settings
        return settings.health_path if settings.forwards else wire.READY_PATH

    def runtime_args(self) -> list[str]:
        """The ``python -m runtime`` flags, without ``--host``/``--port``."""
        if self.pool is not None:
            return self._pool_args(self.pool)
        m = self.models[0]
        return [
            "--model-name", m.settings.name,
            "--source", m.source,
            "--cache-dir", str(self._config.cache_dir),
            "--device", m.device,
            "--dtype", m.dtype,
            "--engine", m.engine,
            "--max-batch-size", str(m.settings.max_batch_size),
            *self._extra,
            *m.args,
        ]  # fmt: skip

    def _pool_args(self, pool: LocalPool) -> list[str]:
        """A pool runtime's flags: its models in order, one batch size (the largest of theirs: each model's
        dispatcher sends at most its own), the budgets if set."""
        budgets = {"--pool-device-bytes": pool.device_bytes, "--pool-host-bytes": pool.host_bytes}
        return [
            "--pool",
            *(flag for m in self.models for flag in ("--model", f"{m.settings.name}={m.source}")),
            "--cache-dir", str(self._config.cache_dir),
            "--device", pool.device,
            "--dtype", pool.dtype,
            "--max-batch-size", str(max(m.settings.max_batch_size for m in self.models)),
            *(word for flag, value in budgets.items() if value is not None for word in (flag, str(value))),
            *self._extra,
            *pool.args,
        ]  # fmt: skip

    async def runtime_for(self, name: str) -> RuntimeProcess | None:
        """A runtime process for replica ``name``: a claimed standby if there is one, else a new process. A pool
        claims none: a standby holds one model's start, and a pool replica is the standby of all its models."""
        m = self.models[0]
        if self.pool is not None:
            return await RuntimeProcess.spawn(self._config.python, self.runtime_args(), name, self.env)
        if m.settings.forwards:  # an OpenAI-compatible server: started as configured, never a standby of ours
            fields = {"source": m.source, "model": m.settings.served_name}
            return await RuntimeProcess.spawn_server(m.command, fields, name)
        args = self.runtime_args()
        claimed = await self._standbys.claim(name, args)
        return claimed or await RuntimeProcess.spawn(self._config.python, args, name, self.env)

    def replica_settled(self) -> None:
        """A replica became ready or exited: the CPU is free for the next standby to start."""
        self._standbys.replenish()

    def publish(self) -> None:
        """Every model of the group has its replicas (a pool's replica serves them all)."""
        started = [r.url for r in self.replicas if r.url]
        ready = [r.url for r in self.replicas if r.ready and r.url]
        for m in self.models:
            self._endpoints.vouch(m.settings.name, started)
            self._endpoints.set(m.settings.name, ready)

    async def resize(self, count: int) -> None:
        while len(self.replicas) < count:
            self.replicas.append(LocalReplica(self._started, self))
            self._started += 1
        while len(self.replicas) > count:
            replica = self.replicas.pop()
            self.publish()  # no more work, nor announcements, for the replica going away
            await replica.stop()
        self.publish()

    def status(self) -> Replicas:
        return Replicas(desired=len(self.replicas), ready=sum(r.ready for r in self.replicas))


class LocalBackend:
    """``env``: the Redis URL the runtimes announce themselves on (None: the gateway probes only) and the token
    their API requires, both given to them through their environment."""

    def __init__(
        self,
        *,
        config: LocalConfig,
        endpoints: ReadyEndpoints,
        env: RuntimeEnvironment,
        batch_log: bool = True,
    ) -> None:
        self.config = config
        extra = [] if batch_log else ["--no-batch-log"]
        self.standbys = StandbyPool(config=config, size=config.standby, env=env, extra_args=extra)
        self._groups: dict[str, ReplicaGroup] = {}
        by_name = {m.settings.name: m for m in config.models}
        for pool in config.pools:
            members = [by_name[name] for name in pool.models]
            group = ReplicaGroup(
                models=members,
                config=config,
                endpoints=endpoints,
                standbys=self.standbys,
                env=env,
                extra=extra,
                pool=pool,
            )
            self._groups |= dict.fromkeys(pool.models, group)
        for m in config.models:
            if m.settings.name not in self._groups:
                self._groups[m.settings.name] = ReplicaGroup(
                    models=[m], config=config, endpoints=endpoints, standbys=self.standbys, env=env, extra=extra
                )
        for adapter in config.adapters:  # served by its base's replicas, which are ready for it as for the base
            assert adapter.adapter is not None
            self._groups[adapter.name] = self._groups[adapter.adapter.base]
            endpoints.alias(adapter.name, adapter.adapter.base)

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

    @property
    def is_leader(self) -> bool:
        """One gateway process owns its local replicas."""
        return True

    async def start(self) -> None:
        """Only the standby runtimes start now; ``min-replicas`` are brought up by the autoscaler's first tick."""
        self.standbys.start()

    async def stop(self) -> None:
        await self.standbys.stop()
        for group in {id(g): g for g in self._groups.values()}.values():
            async with group.lock:
                await group.resize(0)


def build_local(
    config: LocalConfig, announce_to: str | None = None, *, token: str | None = None, batch_log: bool = True
) -> BackendParts:
    """The local backend serving ``config``'s models, with its catalog and ready endpoints; its runtimes announce
    themselves on the Redis at ``announce_to``, if given (the gateway's own), require ``token`` on their API, if
    given (the gateway's ``runtime_token``: the same, or its calls are refused), and log a line per batch if
    ``batch_log`` (relayed into the gateway's log)."""
    endpoints = ReadyEndpoints()
    backend = LocalBackend(
        config=config, endpoints=endpoints, env=RuntimeEnvironment(announce_to, token), batch_log=batch_log
    )
    catalog = ModelCatalog()
    pooled = [model for pool in config.pools for model in pool.models]  # a pool is one scaling unit
    catalog.replace([*backend.models, *config.adapters], config.units(), pooled=pooled)
    return BackendParts(backend, catalog, endpoints, config.models[0].settings.name)
