"""An adapter's PEFT files, read and checked against the base model: ``adapter_config.json`` and
``adapter_model.safetensors`` as ``peft``'s ``save_pretrained`` writes them.

Only plain LoRA on linear layers is taken: ``peft_type`` ``LORA``, no DoRA, no bias, no ``modules_to_save``, no
``fan_in_fan_out`` (GPT-2's Conv1D). Each ``base_model.model.<module>.lora_A.weight`` (``[r, in]``) and
``lora_B.weight`` (``[out, r]``) pair must name a linear layer of the base with those ``in``/``out`` features, and
its rank must be the config's (``r``, or its ``rank_pattern`` entry) and at most ``--max-adapter-rank``. The scale
``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``; ``alpha_pattern`` per module) is folded into B here, so the
per-row product is ``B(A(x))``. Anything else is an ``AdapterInvalid`` whose message says what, for the client.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from runtime.errors import AdapterInvalid

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "AdapterWeights", "read_adapter"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
#: Config entries that ask for more than a per-row ``B(A(x))`` on linear layers: present and truthy, refused.
_UNSUPPORTED = (
    "use_dora",
    "fan_in_fan_out",
    "modules_to_save",
    "lora_bias",
    "target_parameters",
    "layer_replication",
    "trainable_token_indices",
)


@dataclass(frozen=True)
class AdapterWeights:
    """A checked adapter on the host: per target module, ``A`` (``[r, in]``) and ``B`` with the scale folded in
    (``[out, r]``), in the dtype served."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    base_model: str | None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.modules.values())


def read_adapter(
    directory: Path, shapes: Mapping[str, tuple[int, int]], max_rank: int, dtype: torch.dtype
) -> AdapterWeights:
    """The adapter in ``directory``, checked against the base's linear layers (``shapes``: module name ->
    ``(in, out)``). Raises ``AdapterInvalid``."""
    config = _config(directory)
    tensors = _tensors(directory)
    pairs = _pairs(tensors)
    modules = {name: _checked(name, a, b, config, shapes, max_rank, dtype) for name, (a, b) in pairs.items()}
    rank = max(a.shape[0] for a, _ in modules.values())
    base = config.get("base_model_name_or_path")
    return AdapterWeights(modules, rank, base if isinstance(base, str) else None)


def _config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterInvalid(f"no {CONFIG_FILE}") from None
    except (OSError, ValueError) as exc:
        raise AdapterInvalid(f"cannot read {CONFIG_FILE}: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterInvalid(f"{CONFIG_FILE} is not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterInvalid(f"peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("bias", "none") != "none":
        raise AdapterInvalid(f"bias {config.get('bias')!r} is not supported (only 'none')")
    if unsupported := [key for key in _UNSUPPORTED if config.get(key)]:
        raise AdapterInvalid(f"{unsupported[0]} is not supported")
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        raise AdapterInvalid(f"r must be a positive integer, got {config.get('r')!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise AdapterInvalid(f"{key} must be an object")
    return config


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterInvalid(f"no {WEIGHTS_FILE}")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterInvalid(f"cannot read {WEIGHTS_FILE}: {exc}") from None


def _pairs(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterInvalid(f"tensor {key} is not a LoRA A or B weight of a linear layer")
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if not parts:
        raise AdapterInvalid(f"{WEIGHTS_FILE} holds no LoRA weights")
    if incomplete := [name for name, found in parts.items() if set(found) != {"A", "B"}]:
        raise AdapterInvalid(f"module {incomplete[0]} lacks its lora_A or lora_B weight")
    return {name: (found["A"], found["B"]) for name, found in parts.items()}


def _checked(
    name: str,
    a: torch.Tensor,
    b: torch.Tensor,
    config: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, int]],
    max_rank: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in shapes:
        raise AdapterInvalid(f"target module {name} is not a linear layer of the base model")
    features_in, features_out = shapes[name]
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
        raise AdapterInvalid(f"module {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not pair up")
    rank = int(a.shape[0])
    if a.shape[1] != features_in or b.shape[0] != features_out:
        raise AdapterInvalid(
            f"module {name}: shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit the base's "
            f"{features_in} -> {features_out} layer (an adapter of another base model?)"
        )
    expected = int(_per_module(config, "rank_pattern", name, config["r"]))
    if rank != expected:
        raise AdapterInvalid(f"module {name}: rank {rank} in the weights, {expected} in {CONFIG_FILE}")
    if rank > max_rank:
        raise AdapterInvalid(f"rank {rank} is above this runtime's --max-adapter-rank {max_rank}")
    alpha = float(_per_module(config, "alpha_pattern", name, config.get("lora_alpha", 8)))
    scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    return a.to(dtype).contiguous(), (b.float() * scale).to(dtype).contiguous()


def _per_module(config: Mapping[str, Any], pattern_key: str, name: str, default: Any) -> Any:
    """A ``rank_pattern``/``alpha_pattern`` entry for ``name`` (matched as peft matches them: the pattern is the
    end of the module's dotted name), else ``default``."""
    for pattern, value in (config.get(pattern_key) or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default
