"""A Kubernetes API double for kaltstart's tests: a real HTTP server that ``kubernetes_asyncio`` talks to.

Public surface::

    ApiDouble          the server, its store, test hooks, and ``kubelet``
    FakeKubelet        the Deployment controller + kubelet that runs pods as real processes
    KubeletSettings    its timings
    PodCommand         what a fake pod runs (``kubelet.command_for = lambda deployment, port: PodCommand(...)``)
    tiny_pod_command   a cheap stand-in container that serves /readyz

See docs/kubernetes-double.md.
"""

from .commands import PodCommand, default_command, tiny_pod_command
from .faults import RecordedRequest
from .kubelet import FakeKubelet
from .server import ApiDouble
from .settings import KubeletSettings

__all__ = [
    "ApiDouble",
    "FakeKubelet",
    "KubeletSettings",
    "PodCommand",
    "RecordedRequest",
    "default_command",
    "tiny_pod_command",
]
