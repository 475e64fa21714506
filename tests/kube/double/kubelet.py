"""The double's Deployment controller and kubelet in one: it makes each Deployment's pods real processes.

It watches the store's Deployments; when ``spec.replicas`` differs from the pods it runs, it starts new
``PodRunner``s or stops surplus ones (pending first, then unready, then the newest, like a ReplicaSet), and it
keeps each Deployment's status (replicas, readyReplicas, availableReplicas, updatedReplicas,
observedGeneration, conditions) in step with its pods. ReplicaSets are not modelled: pods are owned by their
Deployment directly, and a changed pod template is not rolled out (running pods keep their template).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .commands import CommandFactory, PodCommand, default_command
from .pods import PodRunner
from .resources import DEPLOYMENTS, PODS
from .settings import KubeletSettings
from .status import deployment_status
from .store import Store, WatchScope
from .watches import StreamEnd, Watcher, WatchEvent

Key = tuple[str, str]  # (namespace, deployment name)


class FakeKubelet:
    def __init__(self, store: Store, settings: KubeletSettings | None = None) -> None:
        self.store = store
        self.settings = settings or KubeletSettings()
        # Replace to choose what pods run: called with the Deployment (as a dict) and the pod's port.
        self.command_for: CommandFactory = default_command
        # Per-Deployment start-up delay in seconds, overriding ``settings.start_delay_s``.
        self.start_delays: dict[str, float] = {}
        self.http = httpx.AsyncClient(trust_env=False)
        self._pods: dict[Key, list[PodRunner]] = {}
        self._holds: dict[tuple[str | None, str], asyncio.Event] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._sequence = itertools.count()
        self._watchers: list[Watcher] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._log_dir = self.settings.log_dir

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="kube-double-pods-"))
        deployments = self.store.watch(WatchScope(DEPLOYMENTS, None), None, internal=True)
        pods = self.store.watch(WatchScope(PODS, None), str(self.store.resource_version), internal=True)
        self._watchers = [deployments, pods]
        self._tasks = [
            asyncio.create_task(self._follow(deployments, self._on_deployment), name="double deployment controller"),
            asyncio.create_task(self._follow(pods, self._on_pod), name="double pod watch"),
        ]

    async def stop(self) -> None:
        """Stop every pod (SIGTERM, then SIGKILL after ``shutdown_grace_s``) and the controller."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for watcher in self._watchers:
            self.store.unwatch(watcher)
        for runner in [runner for runners in self._pods.values() for runner in runners]:
            if runner.terminating and runner.process is not None:
                runner.process.kill()
            elif not runner.terminating:
                self._stop(runner, self.settings.shutdown_grace_s)
        await asyncio.gather(*self._stopping, return_exceptions=True)
        await self.http.aclose()
        if self.settings.log_dir is None and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    async def _follow(self, watcher: Watcher, handle: Callable[[WatchEvent], None]) -> None:
        while not isinstance(item := await watcher.next(), StreamEnd):
            handle(item)

    # -- test hooks ------------------------------------------------------------------------------------

    def hold_pending(
        self, deployment: str, until: float | asyncio.Event | None = None, namespace: str | None = None
    ) -> asyncio.Event:
        """Keep the Deployment's new pods Pending until ``until`` (seconds, or an Event) or ``release``.

        Returns the gate; setting it releases the pods. ``namespace=None`` holds the name in every namespace.
        """
        gate = until if isinstance(until, asyncio.Event) else asyncio.Event()
        if isinstance(until, int | float):
            asyncio.get_running_loop().call_later(until, gate.set)
        self._holds[(namespace, deployment)] = gate
        return gate

    def release(self, deployment: str, namespace: str | None = None) -> None:
        gate = self._holds.pop((namespace, deployment), None)
        if gate is not None:
            gate.set()

    def kill_pod(self, name: str, namespace: str | None = None) -> None:
        """Kill a pod's process with SIGKILL, like a crash; the pod restarts it in place (restartPolicy Always)."""
        self.runner(name, namespace).crash()

    def runner(self, name: str, namespace: str | None = None) -> PodRunner:
        for (pod_namespace, _), runners in self._pods.items():
            for runner in runners:
                if runner.name == name and namespace in (None, pod_namespace):
                    return runner
        raise LookupError(f"no fake pod named {name!r}")

    def pod_log(self, namespace: str, name: str) -> str | None:
        if self._log_dir is None:
            return None
        path = self.log_path(namespace, name)
        return path.read_text(errors="replace") if path.exists() else None

    # -- PodHost ---------------------------------------------------------------------------------------

    def command(self, deployment: dict[str, Any], port: int) -> PodCommand:
        return self.command_for(deployment, port)

    def log_path(self, namespace: str, pod: str) -> Path:
        if self._log_dir is None:
            raise RuntimeError("the kubelet has not been started")
        return self._log_dir / f"{namespace}_{pod}.log"

    async def wait_scheduled(self, deployment: dict[str, Any]) -> None:
        namespace, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
        while gate := self._hold_for(namespace, name):
            await gate.wait()
        delay = self.start_delays.get(name, self.settings.start_delay_s)
        if delay > 0:
            await asyncio.sleep(delay)  # simulated image pull and container creation

    def _hold_for(self, namespace: str, name: str) -> asyncio.Event | None:
        for key in ((namespace, name), (None, name)):
            gate = self._holds.get(key)
            if gate is not None and not gate.is_set():
                return gate
        return None

    def pod_changed(self, pod: PodRunner) -> None:
        self._write_status(pod.namespace, pod.deployment_name)

    # -- reconciliation --------------------------------------------------------------------------------

    def _on_deployment(self, event: WatchEvent) -> None:
        metadata = event.object["metadata"]
        key = (metadata["namespace"], metadata["name"])
        if event.type == "DELETED":
            for runner in self._pods.get(key, []):
                if not runner.terminating:
                    self._stop(runner, self._grace_s(runner))
            return
        self._reconcile(event.object)

    def _on_pod(self, event: WatchEvent) -> None:
        if event.type != "DELETED":
            return
        metadata = event.object["metadata"]
        try:
            runner = self.runner(metadata["name"], metadata["namespace"])
        except LookupError:
            return
        if not runner.terminating:  # deleted through the API: stop it; the Deployment gets a new pod
            self._stop(runner, self._grace_s(runner), delete_object=False)
            deployment = self.store.find(DEPLOYMENTS, runner.namespace, runner.deployment_name)
            if deployment is not None:
                self._reconcile(deployment)

    def _reconcile(self, deployment: dict[str, Any]) -> None:
        metadata = deployment["metadata"]
        runners = self._pods.setdefault((metadata["namespace"], metadata["name"]), [])
        live = [runner for runner in runners if not runner.terminating]
        desired = deployment["spec"].get("replicas", 1)
        for _ in range(desired - len(live)):
            runner = PodRunner(self, deployment, next(self._sequence))
            runners.append(runner)
            runner.start()
        surplus = sorted(live, key=lambda r: (r.started, r.ready, -r.sequence))[: max(len(live) - desired, 0)]
        for runner in surplus:
            self._stop(runner, self._grace_s(runner))
        self._write_status(metadata["namespace"], metadata["name"])

    def _stop(self, runner: PodRunner, grace_s: float, delete_object: bool = True) -> None:
        runner.terminating = True
        task = asyncio.create_task(runner.terminate(grace_s, delete_object), name=f"stop pod {runner.name}")
        self._stopping.add(task)
        task.add_done_callback(lambda done: self._stopped(runner, done))

    def _stopped(self, runner: PodRunner, task: asyncio.Task[None]) -> None:
        self._stopping.discard(task)
        runners = self._pods.get((runner.namespace, runner.deployment_name), [])
        if runner in runners:
            runners.remove(runner)
        self._write_status(runner.namespace, runner.deployment_name)

    def _grace_s(self, runner: PodRunner) -> float:
        if self.settings.termination_grace_s is not None:
            return self.settings.termination_grace_s
        return float((runner.template.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    def _write_status(self, namespace: str, name: str) -> None:
        deployment = self.store.find(DEPLOYMENTS, namespace, name)
        if deployment is None:
            return
        status = deployment_status(deployment, self._pods.get((namespace, name), []))
        self.store.update(DEPLOYMENTS, namespace, name, lambda d: d.__setitem__("status", status), status=True)
