"""Picks and builds the engine a runtime serves with.

Kept apart from ``runtime.engine.interface`` (the seam types every engine imports) so that the engines depend on the
seam and this factory depends on the engines, never the other way round. The engines are imported lazily, so
the echo engine never pays for importing torch.
"""

from __future__ import annotations

from pathlib import Path

from runtime.engine.interface import Engine
from runtime.settings import RuntimeSettings

__all__ = ["create_engine"]


def create_engine(settings: RuntimeSettings, model_dir: Path | None) -> Engine:
    """The engine ``settings.engine`` names; ``model_dir`` is the cached model (unused by the echo engine)."""
    if settings.engine == "echo":
        from runtime.engine.echo import EchoEngine

        return EchoEngine(max_context_tokens=settings.max_context_tokens, max_adapters=settings.max_adapters)
    if model_dir is None:
        raise ValueError("the torch engine needs a model directory")
    from runtime.torch_engine.engine import TorchEngine  # imports torch: only when a real model is served
    from runtime.weights.fastload import import_model_code

    import_model_code(model_dir)  # transformers' lazy imports for this model type: part of imports, not the load
    return TorchEngine(model_dir, settings)
