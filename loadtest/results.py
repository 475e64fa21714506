"""What the benchmarks measured, in the shapes both their reports and ``loadtest.plots`` read.

These live apart from the commands that produce them (``coldstart``, ``replay``, ``simulate``) so that the plots
can import them without importing the commands, which import the plots: results are the leaf both depend on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.client import Outcome
from loadtest.trace import TraceRequest

__all__ = ["Phase", "PolicyResult", "PoolFigures", "ReplayResult", "ReplicaSample", "RequestRecord"]


@dataclass(frozen=True)
class Phase:
    name: str
    #: Start, seconds after the request was sent.
    start_s: float
    seconds: float
    #: A step of the main timeline (True) or a part of one (False).
    main: bool = True


@dataclass(frozen=True)
class RequestRecord:
    index: int
    request: TraceRequest
    #: When it was actually sent, seconds after the replay started (its schedule is ``request.at_s``).
    sent_s: float
    #: Waited on a cold start (the rule is in ``loadtest.replay``'s docstring); None when the gateway's metrics
    #: were unavailable.
    cold: bool | None
    outcome: Outcome


@dataclass(frozen=True)
class ReplicaSample:
    t_s: float
    model: str
    desired: float
    ready: float


@dataclass
class ReplayResult:
    records: list[RequestRecord]
    samples: list[ReplicaSample]
    #: Increase of ``kaltstart_cold_starts_total`` over the run; None without metrics.
    cold_starts: int | None
    duration_s: float
    models: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PoolFigures:
    """What a pool replica (``simulate --pool``) adds to a policy's figures; its cold starts are model loads."""

    park_after_s: float
    #: Models on the device, integrated over the window (model-seconds).
    device_model_seconds: float
    #: Models parked in host memory, integrated over the window (model-seconds).
    host_memory_seconds: float
    #: Requests that arrived while their model was parked or waking.
    wake_requests: int
    #: Seconds those requests waited, arrival to dispatch, summed.
    wake_wait_s: float
    replica_starts: int
    loads: int
    wakes: int
    parks: int
    unloads: int


@dataclass
class PolicyResult:
    name: str
    min_replicas: int
    idle_timeout_s: float | None
    replica_seconds: float
    cold_start_requests: int
    #: Scale-ups from zero replicas (pre-warms included).
    cold_starts: int
    requests: int
    waits_s: list[float]
    #: (time, replicas asked for) at every change, summed over models.
    timeline: list[tuple[float, int]]
    #: Scale-ups from zero with nothing queued (the adaptive policy's pre-warms).
    prewarms: int = 0
    #: The adaptive policy's ``cold-start-cost``; None for a fixed timeout.
    cold_start_cost_s: float | None = None
    #: Seconds the requests that met a cold start waited (arrival to dispatch), summed.
    cold_start_wait_s: float = 0.0
    #: The most replicas the policy may run per model.
    max_replicas: int | None = None
    #: Set for a pool (every model in one replica): the pool's own figures.
    pool: PoolFigures | None = None
