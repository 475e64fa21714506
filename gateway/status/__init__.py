"""``python -m gateway status``: one table (or JSON) of every catalogued model, read and never changed.

``report`` joins what Redis holds (queue depth, in flight, last activity, learned idle gaps, the typical cold start)
with the replicas a ``sources`` module reads (the local backend: the running gateway's ``/metrics``, since its
replicas are that gateway's children; the Kubernetes backend: the Deployments, listed once); ``table`` renders it,
``command`` is the CLI. Nothing here scales, takes a Lease or writes a key. Above ``backends`` and ``scaling``,
beside ``app`` (docs/architecture.md).
"""
