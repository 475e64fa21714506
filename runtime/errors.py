"""Every error the runtime raises on purpose, in one tree.

    RuntimeServiceError
    ├── SettingsError        bad flags or KALTSTART_RUNTIME_* values; the process exits with status 2
    ├── CacheError           the weight source cannot be materialised into the node-local cache
    ├── EngineError          the model cannot be loaded or run
    │   ├── EngineNotLoaded  generate() or warmup() before load()
    │   └── CheckpointError  a safetensors file is malformed or truncated (the message names the file)
    │       └── UnknownDtype a tensor in a dtype the reader does not know: the load falls back to from_pretrained
    ├── PromptRejected       a request's prompt this model cannot take (a chat turn its template cannot render)
    ├── AdapterInvalid       a request's LoRA adapter cannot be used with this base (its ``adapter_invalid`` error)
    └── PoolError            a pool runtime cannot make a model active
        ├── ModelTooLarge    the model alone exceeds the pool's device budget (found at start: the runtime exits)
        ├── PoolBusy         no room within ``--pool-wait-s``: the models that would have to go hold requests (503)
        └── ModelBusy        a park or unload asked for a model that holds requests or is moving (409: try later)

Errors a single request causes (a prompt longer than the context) travel to the gateway as an ``ErrorEvent`` with
code ``invalid_request`` while the rest of the batch runs on; ``PromptRejected`` is raised only on the way to such
an event (``prepare`` turns it into one).
"""

from __future__ import annotations

__all__ = [
    "AdapterInvalid",
    "CacheError",
    "CheckpointError",
    "EngineError",
    "EngineNotLoaded",
    "ModelBusy",
    "ModelTooLarge",
    "PoolBusy",
    "PoolError",
    "PromptRejected",
    "RuntimeServiceError",
    "SettingsError",
    "UnknownDtype",
]


class RuntimeServiceError(Exception):
    """Root of the runtime's errors (named so it does not shadow the builtin ``RuntimeError``)."""


class SettingsError(RuntimeServiceError):
    pass


class CacheError(RuntimeServiceError):
    pass


class EngineError(RuntimeServiceError):
    pass


class EngineNotLoaded(EngineError):
    pass


class CheckpointError(EngineError):
    pass


class UnknownDtype(CheckpointError):
    pass


class PromptRejected(RuntimeServiceError):
    """The message says, for the client, why the model cannot take this prompt."""


class AdapterInvalid(RuntimeServiceError):
    """The message says, for the client, why the adapter cannot be used (files missing, not LoRA, a rank or shape
    the base model cannot take)."""


class PoolError(RuntimeServiceError):
    pass


class ModelTooLarge(PoolError):
    pass


class PoolBusy(PoolError):
    pass


class ModelBusy(PoolError):
    pass
