"""Random LoRA adapters of the demo model, made with peft, and peft's merged models as the reference the runtime's
per-row LoRA is checked against (issue #29)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire import AdapterRef

#: name -> (rank, lora_alpha, target modules, extra LoraConfig fields): ranks 16 and 64 among them, different targets,
#: rsLoRA and a per-module rank (``rank_pattern``) in the third.
SPECS: dict[str, tuple[int, int, list[str], dict[str, Any]]] = {
    "attn16": (16, 32, ["q_proj", "v_proj"], {}),
    "all64": (64, 32, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], {}),
    "mlp8": (8, 8, ["gate_proj", "up_proj", "down_proj"], {"use_rslora": True, "rank_pattern": {"down_proj": 4}}),
}
#: The random weights' spread: large enough that every adapter changes the demo model's greedy output.
WEIGHT_STD = 0.15


@dataclass(frozen=True)
class MadeAdapter:
    name: str
    directory: Path
    merged: Path
    """The base model with this adapter merged in (peft's ``merge_and_unload``), saved with the base's tokenizer."""

    @property
    def ref(self) -> AdapterRef:
        return AdapterRef(name=self.name, source=str(self.directory))


def make_adapters(base_dir: Path, into: Path, seed: int = 7) -> dict[str, MadeAdapter]:
    """Every adapter of ``SPECS``, saved as peft saves them, with its merged model beside it."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    made = {}
    for index, (name, (rank, alpha, targets, extra)) in enumerate(SPECS.items()):
        torch.manual_seed(seed + index)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, **extra)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "lora_" in parameter_name:
                    parameter.normal_(0.0, WEIGHT_STD)
        adapter_dir = into / name
        model.save_pretrained(str(adapter_dir))
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
        merged_dir = into / f"{name}-merged"
        merged.merge_and_unload().save_pretrained(merged_dir)
        for tokenizer_file in base_dir.glob("tokenizer*"):
            shutil.copy(tokenizer_file, merged_dir / tokenizer_file.name)
        shutil.copy(base_dir / "generation_config.json", merged_dir / "generation_config.json")
        made[name] = MadeAdapter(name, adapter_dir, merged_dir)
    return made


def broken_copy(adapter: MadeAdapter, into: Path, how: str) -> AdapterRef:
    """A copy of ``adapter`` broken ``how``: ``rank`` (the config's r differs from the weights'), ``missing`` (no
    weights file), ``shape`` (a weight for a layer of another width, as from another base model)."""
    from safetensors.torch import load_file, save_file

    target = into / f"{adapter.name}-{how}"
    shutil.copytree(adapter.directory, target)
    if how == "rank":
        config = json.loads((target / "adapter_config.json").read_text())
        config["r"] = config["r"] * 2
        (target / "adapter_config.json").write_text(json.dumps(config))
    elif how == "missing":
        (target / "adapter_model.safetensors").unlink()
    elif how == "shape":
        tensors = load_file(target / "adapter_model.safetensors")
        key = next(k for k in sorted(tensors) if k.endswith("lora_A.weight"))
        tensors[key] = tensors[key][:, :64].contiguous()
        save_file(tensors, target / "adapter_model.safetensors")
    else:
        raise ValueError(how)
    return AdapterRef(name=f"{adapter.name}-{how}", source=str(target))
