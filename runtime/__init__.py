"""The kaltstart model runtime: serves one model to the gateway over the ``wire`` format.

``python -m runtime --help`` starts it. Importing this package is cheap: torch is imported only when the torch
engine loads, and the HTTP server only by ``runtime.server.app``.
"""

from runtime.cancellation import Cancellation
from runtime.engine.factory import create_engine
from runtime.engine.interface import Engine, LoadReport
from runtime.errors import CacheError, EngineError, EngineNotLoaded, RuntimeServiceError, SettingsError
from runtime.settings import RuntimeSettings
from runtime.weights.cache import CachedModel, materialise, resolve

__all__ = [
    "CacheError",
    "CachedModel",
    "Cancellation",
    "Engine",
    "EngineError",
    "EngineNotLoaded",
    "LoadReport",
    "RuntimeServiceError",
    "RuntimeSettings",
    "SettingsError",
    "create_engine",
    "materialise",
    "resolve",
]
