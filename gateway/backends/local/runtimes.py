"""Runtime processes of the local backend, and the standby kept ready for the next cold start.

``RuntimeProcess`` is one ``python -m runtime`` child on a free 127.0.0.1 port, its output relayed to our log.
``StandbyPool`` keeps one (or ``size``) started with ``--standby``: interpreter up, torch and transformers
imported, no model. A cold start then *claims* it (``POST /v1/claim`` with the model's flags) instead of starting
a process, which saves the process start and the imports: most of a small model's cold start. The pool starts
the next standby only once the claimed replica is ready (or gone), so the two do not compete for the CPU.

Secrets never go on a child's command line (``ps`` shows it to every user of the machine) nor into the log: the
Redis URL to announce on and the runtimes' token travel in the child's environment (``RuntimeEnvironment``),
which holds nothing else of the gateway's but an allow-list (``gateway.processes.child_environment``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

import wire
from gateway.backends.local.config import LocalConfig
from gateway.background import Background
from gateway.processes import child_environment, die_with_parent, free_port, probe_until_ready, redact
from gateway.replicas.client import runtime_headers

log = logging.getLogger("kaltstart.local")

#: Grace between SIGTERM and SIGKILL when stopping a runtime process.
STOP_GRACE_S = 10.0
#: How often a just-started standby is probed until its port answers (before a claim can be sent).
PORT_PROBE_S = 0.02
#: Longest wait for a claimed standby's port; a standby slower than that is dropped and a process started.
CLAIM_TIMEOUT_S = 10.0
#: Back-off before replacing a standby that died on its own: doubles from the first value up to the second.
STANDBY_BACKOFF_S = (1.0, 60.0)

#: The runtime's settings (``runtime.settings``) that carry secrets, set in a child's environment, never as flags.
ANNOUNCE_TO_ENV = "KALTSTART_RUNTIME_ANNOUNCE_TO"
TOKEN_ENV = "KALTSTART_RUNTIME_TOKEN"


@dataclass(frozen=True)
class RuntimeEnvironment:
    """What every runtime child is given besides its flags: the Redis URL to announce on (None: no announcing)
    and the token its API requires (None: none), both through the environment."""

    announce_to: str | None = None
    token: str | None = None

    def environ(self, parent: Mapping[str, str]) -> dict[str, str]:
        # Set even when None: an operator's own KALTSTART_RUNTIME_ANNOUNCE_TO or _TOKEN would otherwise reach the
        # child through the allow-list; empty is the runtime's "not set".
        return child_environment(parent, {ANNOUNCE_TO_ENV: self.announce_to or "", TOKEN_ENV: self.token or ""})

    @property
    def headers(self) -> dict[str, str]:
        """The headers of the gateway's own calls to its children (claims, probes)."""
        return runtime_headers(self.token)


class RuntimeProcess:
    """One runtime child process, serving (or on standby) at ``url``."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, name: str) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.name = name
        self._relay = asyncio.create_task(self._relay_output(), name=f"relay-{name}")

    @classmethod
    async def spawn(
        cls, python: str, args: Sequence[str], name: str, env: RuntimeEnvironment, role: str = "replica"
    ) -> RuntimeProcess | None:
        """Start ``python -m runtime ARGS --host 127.0.0.1 --port <free>`` with ``env``; None if it cannot be
        started."""
        port = free_port()
        argv = [python, "-m", "runtime", *args, "--host", "127.0.0.1", "--port", str(port)]
        return await cls._start(argv, port, name, env.environ(os.environ), role)

    @classmethod
    async def spawn_server(cls, command: Sequence[str], fields: Mapping[str, str], name: str) -> RuntimeProcess | None:
        """Start an OpenAI-compatible server (``protocol = openai``): ``command`` with ``{host}``, ``{port}`` (a free
        one) and ``fields`` filled in. It gets the allow-listed environment only: none of kaltstart's secrets."""
        port = free_port()
        values = {"host": "127.0.0.1", "port": str(port), **fields}
        argv = [word.format_map(values) for word in command]
        return await cls._start(argv, port, name, child_environment(os.environ, {}), "upstream server")

    @classmethod
    async def _start(
        cls, argv: Sequence[str], port: int, name: str, environ: Mapping[str, str], role: str
    ) -> RuntimeProcess | None:
        log.info("starting %s %s: %s", role, name, redact(" ".join(argv)))  # a model's own flags may hold a URL
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent,
                env=dict(environ),
            )
        except OSError as exc:
            log.error("cannot start %s: %s", name, exc)
            return None
        return cls(process, port, name)

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    async def wait(self) -> int:
        """The exit status, once the process exited and its output is relayed to the end. Cancelling a waiter
        leaves the relay running, so the pipe is read to its end and closed whatever waits for it."""
        code = await self.process.wait()
        await asyncio.shield(self._relay)
        return code

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE_S``."""
        if not self.exited:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        await self.wait()

    def kill(self) -> None:
        if not self.exited:
            self.process.kill()

    async def _relay_output(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            log.info("[%s] %s", self.name, redact(line.decode(errors="replace").rstrip()))


class StandbyPool:
    """Up to ``size`` standby runtimes (0: none; every cold start starts a process)."""

    def __init__(
        self, *, config: LocalConfig, size: int, env: RuntimeEnvironment, extra_args: Sequence[str] = ()
    ) -> None:
        self._config = config
        self._size = size
        self._env = env
        self._extra_args = tuple(extra_args)
        self._idle: list[RuntimeProcess] = []
        self._starting = 0
        self._spawned = 0
        self._backoff_s = STANDBY_BACKOFF_S[0]
        self._stopping = False
        self._background = Background()

    def start(self) -> None:
        self.replenish()

    @property
    def idle(self) -> tuple[RuntimeProcess, ...]:
        """The standbys started and not claimed yet."""
        return tuple(self._idle)

    def replenish(self) -> None:
        """Start standbys until there are ``size`` (call once a claimed one is ready, or gone)."""
        while not self._stopping and len(self._idle) + self._starting < self._size:
            self._starting += 1
            self._background.spawn(self._add())

    async def claim(self, name: str, args: Sequence[str]) -> RuntimeProcess | None:
        """A standby turned into ``name``, serving the model ``args`` describe; None if none could be claimed."""
        while self._idle:
            standby = self._idle.pop(0)
            if await self._claimed(standby, args):
                log.info("%s claimed standby runtime %s at %s", name, standby.name, standby.url)
                standby.name = name
                return standby
            self._background.spawn(standby.stop())
        return None

    async def stop(self) -> None:
        self._stopping = True
        await self._background.cancel()
        idle, self._idle = self._idle, []
        await asyncio.gather(*(standby.stop() for standby in idle))

    async def _add(self) -> None:
        self._spawned += 1
        args = ["--standby", "--cache-dir", str(self._config.cache_dir), *self._extra_args]
        name = f"standby#{self._spawned}"
        standby = await RuntimeProcess.spawn(self._config.python, args, name, self._env, "standby")
        self._starting -= 1
        if standby is None:
            return
        self._idle.append(standby)
        self._background.spawn(self._watch(standby))

    async def _watch(self, standby: RuntimeProcess) -> None:
        """A standby that dies before it is claimed is replaced, with back-off (it may die at every start)."""
        code = await standby.wait()
        if standby not in self._idle:
            return  # claimed (its replica watches it now) or being stopped
        self._idle.remove(standby)
        log.warning("standby runtime %s exited with %s; replacing it in %.0f s", standby.name, code, self._backoff_s)
        await asyncio.sleep(self._backoff_s)  # crash-loop back-off
        self._backoff_s = min(self._backoff_s * 2, STANDBY_BACKOFF_S[1])
        self.replenish()

    async def _claimed(self, standby: RuntimeProcess, args: Sequence[str]) -> bool:
        body = wire.ClaimRequest(args=tuple(args)).model_dump_json()
        try:
            up = await probe_until_ready(
                standby.url + wire.HEALTH_PATH,
                exited=lambda: standby.exited,
                period_s=PORT_PROBE_S,
                timeout_s=CLAIM_TIMEOUT_S,
                headers=self._env.headers,
            )
            if not up:
                return False
            async with httpx.AsyncClient(timeout=CLAIM_TIMEOUT_S, headers=self._env.headers) as client:
                response = await client.post(
                    standby.url + wire.CLAIM_PATH, content=body, headers={"content-type": "application/json"}
                )
        except (TimeoutError, httpx.HTTPError) as exc:
            log.warning("could not claim standby runtime %s: %r", standby.name, exc)
            return False
        if response.status_code != 202:
            log.warning(
                "standby runtime %s refused its claim: %s %s", standby.name, response.status_code, response.text
            )
            return False
        self._backoff_s = STANDBY_BACKOFF_S[0]
        return True
