"""Annotated model Deployments and the runtime pods the fake kubelet runs for them."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.kube.double import PodCommand
from tests.kube.double.commands import CommandFactory


def model_deployment(name: str, models: str, replicas: int = 0, **settings: str) -> dict[str, Any]:
    """A model Deployment as a user would write it; ``settings`` are ``kaltstart.dev/*`` keys with ``_`` for
    ``-``."""
    annotations = {"kaltstart.dev/models": models}
    annotations |= {f"kaltstart.dev/{key.replace('_', '-')}": value for key, value in settings.items()}
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kaltstart.dev/enabled": "true", **labels},
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "runtime",
                            "image": "kaltstart-runtime",
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                        }
                    ]
                },
            },
        },
    }


def runtime_pods(
    cache_dir: Path, source: Path | None = None, pool: Mapping[str, Path] | None = None, pool_args: Sequence[str] = ()
) -> CommandFactory:
    """Pods run ``python -m runtime``: the torch engine on ``source`` if given, else the echo engine; a pool
    Deployment's (``kaltstart.dev/pool: "true"``) run ``python -m runtime --pool`` with each of its models' weights
    from ``pool`` (name -> directory), and ``pool_args``."""

    def command(deployment: dict[str, Any], port: int) -> PodCommand:
        annotations = deployment["metadata"]["annotations"]
        model = annotations["kaltstart.dev/models"]
        argv = [sys.executable, "-m", "runtime", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--cache-dir", str(cache_dir), "--device", "cpu"]
        if annotations.get("kaltstart.dev/pool") == "true":
            assert pool is not None, "a pool Deployment needs its models' weights"
            models = [f"{name}={pool[name]}" for name in model.split(",")]
            return PodCommand([*argv, "--pool", *(w for m in models for w in ("--model", m)), *pool_args])
        argv += ["--model-name", model]
        argv += ["--engine", "torch", "--source", str(source)] if source else ["--engine", "echo"]
        return PodCommand(argv)

    return command
