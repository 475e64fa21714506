"""The kaltstart model runtime: serves one model to the gateway over the ``wire`` format.

``python -m runtime --help`` starts it. Importing this package is cheap: torch is imported only when the torch
engine loads, and the HTTP server only by ``runtime.server.app``.
"""
