"""What a fake pod runs: the argv and environment for one container process.

By default the kubelet runs the first container's ``command`` + ``args`` from the pod template, with the
container's literal ``env`` values, the downward-API fields it can fill (``metadata.name``,
``metadata.namespace``, ``status.podIP``) and ``PORT`` set to the pod's own port. Tests usually replace that
with ``kubelet.command_for = lambda deployment, port: PodCommand([...])``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TINY_POD = Path(__file__).with_name("tiny_pod.py")


@dataclass(frozen=True)
class PodCommand:
    """A container's process: argv, and environment added on top of the double's own environment."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


CommandFactory = Callable[[dict[str, Any], int], PodCommand]


@dataclass(frozen=True)
class PodIdentity:
    name: str
    namespace: str
    port: int
    ip: str = "127.0.0.1"


def first_container(template: dict[str, Any]) -> dict[str, Any]:
    containers = (template.get("spec") or {}).get("containers") or [{}]
    first: dict[str, Any] = containers[0]
    return first


def default_command(deployment: dict[str, Any], port: int) -> PodCommand:
    """The first container's command and args, with its literal env values."""
    container = first_container(deployment["spec"]["template"])
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    env = {item["name"]: str(item["value"]) for item in container.get("env") or [] if "value" in item}
    return PodCommand(argv, env)


def tiny_pod_command(deployment: dict[str, Any], port: int) -> PodCommand:
    """A cheap stand-in for a runtime: ``tiny_pod.py``, an HTTP server that answers /readyz."""
    return PodCommand([sys.executable, "-I", str(TINY_POD)])


def _downward_api(container: dict[str, Any], pod: PodIdentity) -> dict[str, str]:
    fields = {"metadata.name": pod.name, "metadata.namespace": pod.namespace, "status.podIP": pod.ip}
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        path = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if path in fields:
            env[item["name"]] = fields[path]
    return env


def process_env(command: PodCommand, template: dict[str, Any], pod: PodIdentity) -> dict[str, str]:
    return {
        **os.environ,
        **_downward_api(first_container(template), pod),
        **command.env,
        "PORT": str(pod.port),
        "POD_NAME": pod.name,
        "POD_NAMESPACE": pod.namespace,
    }
