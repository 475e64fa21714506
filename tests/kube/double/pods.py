"""One fake pod: a Pod object, a real process running its container, readiness probes and its EndpointSlice.

Life of a pod: created Pending -> held while ``hold_pending`` applies, then ``start_delay`` -> process started,
phase Running, endpoint published not ready -> ready once its readiness probe passes -> on a crash (process
exit) not ready, restartCount + 1 and restarted in place on the same port after a short backoff -> on
termination SIGTERM, then SIGKILL after the grace period, endpoint and Pod object removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Protocol

import httpx

from .commands import PodCommand, PodIdentity, first_container, process_env
from .endpoints import PodEndpoint, service_for
from .errors import ApiError
from .processes import PodProcess, free_port
from .resources import PODS
from .settings import KubeletSettings
from .store import Store, now_timestamp

logger = logging.getLogger(__name__)
_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_HASH_ALPHABET[byte % len(_HASH_ALPHABET)] for byte in digest[:10])


class PodHost(Protocol):
    """What a pod needs from the kubelet that runs it."""

    store: Store
    settings: KubeletSettings
    http: httpx.AsyncClient

    def command(self, deployment: dict[str, Any], port: int) -> PodCommand: ...

    def log_path(self, namespace: str, pod: str) -> Path: ...

    async def wait_scheduled(self, deployment: dict[str, Any]) -> None: ...

    def pod_changed(self, pod: PodRunner) -> None: ...


class PodRunner:
    def __init__(self, host: PodHost, deployment: dict[str, Any], sequence: int) -> None:
        self._host = host
        self.deployment = copy.deepcopy(deployment)
        self.template: dict[str, Any] = self.deployment["spec"]["template"]
        self.template_hash = template_hash(self.template)
        self.sequence = sequence  # creation order, to stop the newest pods first
        self.namespace: str = deployment["metadata"]["namespace"]
        self.deployment_name: str = deployment["metadata"]["name"]
        self.name = ""
        self.port = 0
        self.process: PodProcess | None = None
        self.started = False  # the container has started at least once
        self.running = False
        self.serving = False  # the last readiness verdict
        self.terminating = False
        self.restart_count = 0
        self._turned_ready = False  # the current container run has passed a readiness probe
        self._pod: dict[str, Any] = {}
        self._endpoint: PodEndpoint | None = None
        self._container_state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self._last_state: dict[str, Any] = {}
        self._conditions: dict[str, tuple[bool, str]] = {}
        self._scheduled_at = now_timestamp()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.running and self.serving and not self.terminating

    @property
    def _container(self) -> dict[str, Any]:
        return first_container(self.template)

    # -- start -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._pod = self._host.store.create(PODS, self.namespace, self._manifest())
        self.name = self._pod["metadata"]["name"]
        self._publish()
        self._task = asyncio.create_task(self._lifecycle(), name=f"pod {self.namespace}/{self.name}")
        self._task.add_done_callback(self._log_crash)

    def _manifest(self) -> dict[str, Any]:
        metadata = self.template.get("metadata") or {}
        owner = self.deployment["metadata"]
        return {
            "metadata": {
                "generateName": f"{self.deployment_name}-{self.template_hash}-",
                "labels": {**(metadata.get("labels") or {}), "pod-template-hash": self.template_hash},
                "annotations": dict(metadata.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": owner["name"],
                        "uid": owner["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**copy.deepcopy(self.template.get("spec") or {}), "nodeName": self._host.settings.node_name},
        }

    @staticmethod
    def _log_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("fake pod lifecycle failed", exc_info=task.exception())

    async def _lifecycle(self) -> None:
        await self._host.wait_scheduled(self.deployment)
        self.port = free_port()
        labels = self._pod["metadata"]["labels"]
        service, port_name = service_for(self._host.store, self.namespace, labels, self.deployment_name)
        self._endpoint = PodEndpoint(self._host.store, self._pod, service, port_name, self.port)
        settings = self._host.settings
        backoff = settings.restart_backoff_s
        while True:
            if await self._run_container():
                backoff = settings.restart_backoff_s
            self.restart_count += 1
            self._publish()
            await asyncio.sleep(backoff)  # CrashLoopBackOff, simulated
            backoff = min(backoff * 2, settings.max_restart_backoff_s)

    async def _run_container(self) -> bool:
        """Run the container once, until its process exits; True if it turned ready meanwhile."""
        try:
            self.process = await self._spawn()
        except (OSError, ValueError) as exc:
            self._container_state = {"waiting": {"reason": "CreateContainerError", "message": str(exc)}}
            self._publish()
            return False
        self.started = self.running = True
        self._turned_ready = False
        self._container_state = {"running": {"startedAt": now_timestamp()}}
        self._publish()
        probes = asyncio.create_task(self._probe_loop())
        try:
            code = await self.process.wait()
        finally:
            probes.cancel()
        self.running = self.serving = False
        reason = "Completed" if code == 0 else "Error"
        self._last_state = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now_timestamp()}}
        self._container_state = {"waiting": {"reason": "CrashLoopBackOff"}}
        return self._turned_ready

    async def _spawn(self) -> PodProcess:
        command = self._host.command(self.deployment, self.port)
        if not command.argv:
            raise ValueError("the container has no command: the double cannot run images")
        identity = PodIdentity(self.name, self.namespace, self.port)
        env = process_env(command, self.template, identity)
        return await PodProcess.spawn(command.argv, env, self._host.log_path(self.namespace, self.name))

    # -- readiness -------------------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        settings = self._host.settings
        threshold = int((self._container.get("readinessProbe") or {}).get("failureThreshold") or 3)
        failures = 0
        while True:
            passed = await self._probe()
            failures = 0 if passed else failures + 1
            serving = passed or (self.serving and failures < threshold)
            if serving != self.serving:
                self.serving = serving
                self._turned_ready = self._turned_ready or serving
                self._publish()
            await asyncio.sleep(settings.readiness_period_s if self.serving else settings.readiness_poll_s)

    async def _probe(self) -> bool:
        probe = self._container.get("readinessProbe") or {}
        if "exec" in probe:
            return True  # the double cannot exec into a process: such pods are ready once running
        try:
            if "tcpSocket" in probe:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), self._host.settings.probe_timeout_s
                )
                writer.close()
                return True
            path = (probe.get("httpGet") or {}).get("path") or "/readyz"
            response = await self._host.http.get(
                f"http://127.0.0.1:{self.port}{path}", timeout=self._host.settings.probe_timeout_s
            )
        except (httpx.HTTPError, OSError, TimeoutError):
            return False
        return 200 <= response.status_code < 400

    # -- stop ------------------------------------------------------------------------------------------

    def crash(self) -> None:
        """Kill the container's process, as if it crashed; the lifecycle restarts it in place."""
        if self.process is None or self.process.returncode is not None:
            raise LookupError(f"pod {self.namespace}/{self.name} has no running container")
        self.process.kill()

    async def terminate(self, grace_s: float, delete_object: bool = True) -> None:
        """Stop the pod: endpoint not ready, SIGTERM, SIGKILL after ``grace_s``, then remove its objects."""
        self.terminating = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if delete_object:
            self._mark_deleting(grace_s)
        self._publish()
        if self.process is not None and self.process.returncode is None:
            await self.process.terminate(grace_s)
        self.running = False
        if self._endpoint is not None:
            self._endpoint.remove()
        if delete_object:
            with contextlib.suppress(ApiError):
                self._host.store.delete(PODS, self.namespace, self.name)

    def _mark_deleting(self, grace_s: float) -> None:
        def mark(pod: dict[str, Any]) -> None:
            pod["metadata"].update(deletionTimestamp=now_timestamp(), deletionGracePeriodSeconds=int(grace_s))

        with contextlib.suppress(ApiError):
            self._host.store.update(PODS, self.namespace, self.name, mark)

    # -- publishing ------------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Write the Pod's status and its endpoint, and tell the kubelet (for the Deployment's status)."""
        try:
            self._host.store.update(PODS, self.namespace, self.name, self._set_status, status=True)
        except ApiError as error:
            if error.code != 404:  # a deleted Pod is the kubelet's to notice, through its watch
                raise
        if self._endpoint is not None and self.started:
            self._endpoint.publish(self.ready, self.serving, self.terminating)
        self._host.pod_changed(self)

    def _set_status(self, pod: dict[str, Any]) -> None:
        pod["status"] = self._status()

    def _condition(self, kind: str, value: bool) -> dict[str, Any]:
        previous = self._conditions.get(kind)
        if previous is None or previous[0] != value:
            self._conditions[kind] = (value, now_timestamp())
        return {"type": kind, "status": str(value), "lastTransitionTime": self._conditions[kind][1]}

    def _status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "phase": "Running" if self.started else "Pending",
            "conditions": [
                self._condition("PodScheduled", True),
                self._condition("Initialized", self.started),
                self._condition("ContainersReady", self.ready),
                self._condition("Ready", self.ready),
            ],
            "startTime": self._scheduled_at,
            "containerStatuses": [self._container_status()],
        }
        if self.started:
            status.update(hostIP="127.0.0.1", podIP="127.0.0.1", podIPs=[{"ip": "127.0.0.1"}])
        return status

    def _container_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self._container.get("name", ""),
            "image": self._container.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": self._container_state,
            "lastState": self._last_state,
        }
        if self.running and self.process is not None:
            status["containerID"] = f"double://{self.process.pid}"
        return status
