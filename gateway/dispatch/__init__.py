"""Dispatch: reads a model's queue and forwards batches to its ready replicas.

``loop`` (``Dispatcher``: acquire a replica, read a batch, hand it on), ``window`` (the batching window),
``batches`` (``BatchRelay``: forward a batch, relay its events, retry or fail, settle), ``cancels``
(``RemoteCancels``: cancellations sent to the replica running a request) and ``supervisor`` (one dispatcher per
catalogued model, started and stopped with the catalog).

May import: queue, relay, replicas, store and the top-level modules; never scaling, backends or the API.
"""
