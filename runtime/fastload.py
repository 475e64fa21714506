"""Loading a cached safetensors checkpoint without ``from_pretrained``'s fixed cost.

The model is built from its config with its parameters on the ``meta`` device (no memory, no random
initialisation), then the checkpoint's tensors are read straight onto the target device and put in place with
``load_state_dict(assign=True)``. Buffers that are not in the checkpoint (rotary ``inv_freq``) are computed at
construction as usual, on the CPU, and moved to the device with the model. Tied weights (``lm_head.weight`` =
``embed_tokens.weight``) are tied again afterwards.

``load_without_init`` returns None for a checkpoint this path cannot take (no safetensors, a quantized model, keys
that need ``from_pretrained``'s renaming or conversion); the caller then uses ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

__all__ = ["load_without_init"]

log = logging.getLogger(__name__)

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"


def load_without_init(model_dir: Path, dtype: torch.dtype, device: torch.device) -> Any | None:
    """The model in ``model_dir`` on ``device`` as ``dtype``, in eval mode; None if this path cannot load it."""
    files = _checkpoint_files(model_dir)
    if files is None:
        return None
    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, "quantization_config", None) is not None:
        return None
    with _parameters_on_meta():
        model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file, device=str(device)))
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.dtype != dtype:
            state[name] = tensor.to(dtype)
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
