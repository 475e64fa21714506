"""What a backend is: the seam between the gateway and whatever runs the replicas.

A backend reports each model's replicas (``Replicas``) and changes their count (``ReplicaControl``); the app
starts and stops it and asks whether this gateway replica may scale down (``Backend``). ``BackendParts`` is what
one backend's builder hands the app: the backend, the catalog of models it serves, and the ready endpoints it
keeps current. Both backends (``local``: processes on this machine; ``kubernetes``: annotated Deployments) answer
alike for a model they do not serve: ``replicas`` says 0/0 and the scale calls raise ``UnknownModel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from prometheus_client.registry import Collector

from gateway.catalog import ModelCatalog
from gateway.replicas.endpoints import ReadyEndpoints


@dataclass(frozen=True)
class Replicas:
    """A model's replicas as its backend sees them."""

    #: Replicas asked for (Deployment ``spec.replicas``; local processes wanted).
    desired: int
    #: Replicas ready to take batches.
    ready: int

    @property
    def starting(self) -> int:
        return max(0, self.desired - self.ready)


NO_REPLICAS = Replicas(desired=0, ready=0)


class ReplicaControl(Protocol):
    def replicas(self, model: str) -> Replicas:
        """The replicas of the model's scaling unit as last seen (cheap: no I/O). ``NO_REPLICAS`` for a model
        the backend does not serve."""
        ...

    async def scale_up(self, model: str, at_least: int, *, fresh: bool = False) -> bool:
        """Make sure at least ``at_least`` replicas are wanted; never lowers a count. ``fresh``: do not trust a
        cached count (a scale-down may just have been written). True if this call raised the count. Raises
        ``UnknownModel`` for a model the backend does not serve, ``BackendError`` if the change failed."""
        ...

    async def scale_down(self, model: str, to: int) -> bool:
        """Lower the wanted count to ``to``; False if it was not lowered (e.g. someone raised it meanwhile).
        Raises like ``scale_up``."""
        ...


class Backend(ReplicaControl, Protocol):
    """What the app needs of a backend beyond scaling: its start, its stop, and whether this gateway replica
    may scale down (only one replica at a time should)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def is_leader(self) -> bool: ...


@dataclass(frozen=True)
class BackendParts:
    """One backend, wired: built together by the backend's own builder, used by ``python -m gateway`` and the
    tests alike."""

    backend: Backend
    #: The models served: the local backend fills it once, the Kubernetes backend keeps it current.
    catalog: ModelCatalog
    #: The ready replicas per model, as the backend reports them.
    endpoints: ReadyEndpoints
    #: A model name for the start-up banner's example requests.
    example_model: str
    #: The backend's own metrics, which the app serves with its others.
    collectors: tuple[Collector, ...] = ()
