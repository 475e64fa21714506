"""Timing and behaviour of the fake controller and kubelet, one documented field per concern."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KubeletSettings:
    # Seconds between a pod being scheduled and its process starting (image pull + container create).
    # Default 0: tests that need a slow start use ``hold_pending`` (deterministic) or per-Deployment
    # ``FakeKubelet.start_delays``.
    start_delay_s: float = 0.0
    # Seconds between readiness probes until the first success: short, so a pod turns ready as soon as its
    # server answers. A real kubelet uses the probe's periodSeconds (10 s by default); that is far too slow.
    readiness_poll_s: float = 0.05
    # Seconds between readiness probes once the pod is ready (a pod that stops answering turns unready after
    # failureThreshold misses, 3 by default, as on a real kubelet).
    readiness_period_s: float = 0.5
    # Seconds one readiness probe may take before it counts as a failure.
    probe_timeout_s: float = 1.0
    # Seconds between SIGTERM and SIGKILL when a pod is stopped by scale-down or deletion. None: the pod
    # template's terminationGracePeriodSeconds, or 30 s, as on a real kubelet.
    termination_grace_s: float | None = None
    # Seconds between SIGTERM and SIGKILL when the whole double stops (test teardown should be quick).
    shutdown_grace_s: float = 2.0
    # Seconds before restarting a crashed container; doubles per crash up to the maximum (a short
    # CrashLoopBackOff), and resets once a restarted container has turned ready.
    restart_backoff_s: float = 0.1
    max_restart_backoff_s: float = 5.0
    # The node every pod is "scheduled" to.
    node_name: str = "double-node"
    # Where pod logs go (one file per pod). None: a temporary folder, removed when the double stops.
    log_dir: Path | None = None
