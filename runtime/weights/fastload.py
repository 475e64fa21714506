"""Loading a cached safetensors checkpoint without ``from_pretrained``'s fixed cost.

The model is built from its config with its parameters on the ``meta`` device (no memory, no random
initialisation), then the checkpoint's tensors are read straight onto the target device by ``runtime.weights.reader``
(large parallel reads; pinned buffers on CUDA) and put in place with ``load_state_dict(assign=True)``. Buffers
that are not in the checkpoint (rotary ``inv_freq``) are computed at construction as usual, on the CPU, and moved
to the device with the model. Tied weights (``lm_head.weight`` = ``embed_tokens.weight``) are tied again
afterwards.

``load_without_init`` returns None for a checkpoint this path cannot take (no safetensors, a quantized model, keys
that need ``from_pretrained``'s renaming or conversion, a dtype the reader does not know); the caller then uses
``from_pretrained``. A malformed or truncated file raises ``CheckpointError``.

transformers imports a model type's configuration and modelling modules on first use (~1.4 s for Llama on the
dev VM, three times the read of a 0.55 GB checkpoint); ``import_model_code`` does that ahead of the load.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM, GenerationConfig

from runtime.errors import UnknownDtype
from runtime.weights.reader import read_checkpoint, read_header

__all__ = ["checkpoint_bytes", "import_model_code", "load_without_init"]

log = logging.getLogger(__name__)

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"


def import_model_code(model_dir: Path) -> None:
    """Import the modules transformers needs for the model in ``model_dir`` (its config class, its causal-LM
    class), so that loading it later does not pay for them. Best effort: a model this cannot resolve is left for
    the load to report."""
    try:
        config = AutoConfig.from_pretrained(model_dir)
        MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (OSError, ValueError, KeyError) as exc:
        log.debug("no model code imported ahead of the load: %s", exc)


def load_without_init(model_dir: Path, dtype: torch.dtype, device: torch.device, read_threads: int) -> Any | None:
    """The model in ``model_dir`` on ``device`` as ``dtype``, in eval mode, its weights read on ``read_threads``
    threads; None if this path cannot load it."""
    files = _checkpoint_files(model_dir)
    if files is None:
        return None
    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, "quantization_config", None) is not None:
        return None
    # The disk reads while this thread builds the model (~0.06 s for 140 M parameters, a tenth of their read). The
    # reading threads create no parameters, so _parameters_on_meta's patch does not reach them.
    with ThreadPoolExecutor(1, thread_name_prefix="checkpoint") as pool:
        reading = pool.submit(read_checkpoint, files, dtype, device, read_threads)
        with _parameters_on_meta():
            model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    try:
        state = reading.result()
    except UnknownDtype as exc:
        log.info("loading with from_pretrained: %s", exc)
        return None
    expected = set(model.state_dict())
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing, unexpected = expected - set(state) - tied, set(state) - expected
    if missing or unexpected:
        log.info(
            "loading with from_pretrained: the checkpoint's keys differ from the model's (%d missing, %d unexpected)",
            len(missing),
            len(unexpected),
        )
        return None
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shapes differ: let from_pretrained say why, or convert
        log.info("loading with from_pretrained: %s", str(exc).splitlines()[0])
        return None
    model.tie_weights()
    model.to(device)  # the buffers computed at construction, on the CPU
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"loading {model_dir} left {len(left)} tensors on the meta device: {', '.join(left[:5])}")
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    return model.eval()


def checkpoint_bytes(model_dir: Path, dtype: torch.dtype) -> int:
    """Bytes the checkpoint's tensors take once loaded as ``dtype`` (floating-point ones converted, as the load
    does), from the safetensors headers alone; without safetensors, the size of the files there."""
    files = _checkpoint_files(model_dir)
    if files is None:
        return sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    total = 0
    for entry in (entry for path in files for entry in read_header(path)):
        converted = entry.dtype.is_floating_point and entry.dtype != dtype
        total += entry.nbytes // entry.dtype.itemsize * dtype.itemsize if converted else entry.nbytes
    return total


def _checkpoint_files(model_dir: Path) -> list[Path] | None:
    """The safetensors files of the checkpoint: one file, or the shards its index names; None if neither."""
    if (model_dir / _SINGLE).is_file():
        return [model_dir / _SINGLE]
    index = model_dir / _INDEX
    if not index.is_file():
        return None
    weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    return [model_dir / name for name in sorted(set(weight_map.values()))]


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the ``meta`` device (no memory, initialisers do nothing); buffers
    stay real, so values computed at construction (rotary frequencies) are right. Not thread-safe: it patches
    ``nn.Module.register_parameter`` while it is open."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            held = module._parameters[name]
            assert held is not None
            module._parameters[name] = nn.Parameter(held.to("meta"), requires_grad=held.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]
