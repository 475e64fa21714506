"""Dispatch: reads a model's queue and forwards batches to its ready replicas.

``loop`` (``Dispatcher``: acquire a replica, read a batch, forward it, relay its events, retry or fail, settle)
and ``supervisor`` (one dispatcher per catalogued model, started and stopped with the catalog).

May import: queue, relay, replicas, store and the top-level modules; never scaling, backends or the API.
"""
