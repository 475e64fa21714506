"""The direct weight load (``runtime.fastload``) against ``from_pretrained``: same tensors, same greedy outputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from runtime.settings import RuntimeSettings
from tests.runtime.support import greedy, mixed_batch, run_batch
from wire import FinishEvent

torch = pytest.importorskip("torch")


def _reference(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    return model.eval()


def _assert_same_tensors(direct: Any, reference: Any) -> None:
    ours, theirs = direct.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].device == tensor.device and ours[name].dtype == tensor.dtype, name
        assert torch.equal(ours[name], tensor), name
    ours_buffers, their_buffers = dict(direct.named_buffers()), dict(reference.named_buffers())
    assert ours_buffers.keys() == their_buffers.keys()  # non-persistent ones too (rotary inv_freq)
    for name, buffer in their_buffers.items():
        assert torch.equal(ours_buffers[name], buffer), name
    assert not any(t.is_meta for t in [*direct.parameters(), *direct.buffers()])
    assert direct.generation_config.eos_token_id == reference.generation_config.eos_token_id
    assert not direct.training


def test_direct_load_gives_from_pretrained_tensors(demo_model_dir: Path) -> None:
    from runtime.fastload import load_without_init

    direct = load_without_init(demo_model_dir, torch.float32, torch.device("cpu"))
    assert direct is not None
    _assert_same_tensors(direct, _reference(demo_model_dir))


def test_tied_embeddings_are_tied_again(demo_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from runtime.fastload import load_without_init

    tied_dir = tmp_path / "tied"
    shutil.copytree(demo_model_dir, tied_dir)
    config = json.loads((tied_dir / "config.json").read_text())
    (tied_dir / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    state = load_file(tied_dir / "model.safetensors")
    del state["lm_head.weight"]  # a tied checkpoint holds the embedding only
    save_file(state, tied_dir / "model.safetensors", metadata={"format": "pt"})
    direct = load_without_init(tied_dir, torch.float32, torch.device("cpu"))
    assert direct is not None
    assert direct.lm_head.weight is direct.model.embed_tokens.weight
    _assert_same_tensors(direct, _reference(tied_dir))


def test_sharded_checkpoints_load_and_unknown_keys_fall_back(demo_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from runtime.fastload import load_without_init

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(demo_model_dir).save_pretrained(sharded, max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file()
    direct = load_without_init(sharded, torch.float32, torch.device("cpu"))
    assert direct is not None
    _assert_same_tensors(direct, _reference(sharded))

    renamed = tmp_path / "renamed"
    shutil.copytree(demo_model_dir, renamed)
    from safetensors.torch import load_file, save_file

    state = load_file(renamed / "model.safetensors")
    state["model.extra.weight"] = torch.zeros(1)
    save_file(state, renamed / "model.safetensors", metadata={"format": "pt"})
    assert load_without_init(renamed, torch.float32, torch.device("cpu")) is None

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert load_without_init(no_weights, torch.float32, torch.device("cpu")) is None


def test_direct_and_from_pretrained_engines_decode_the_same(
    torch_engine: Any, demo_model_dir: Path, demo_settings: RuntimeSettings
) -> None:
    from runtime.torch_engine import TorchEngine

    assert demo_settings.weight_loader == "direct"  # the session's engine
    reference = TorchEngine(demo_model_dir, dataclasses.replace(demo_settings, weight_loader="from_pretrained"))
    reference.load()
    requests = [*mixed_batch(6, max_tokens=12), greedy("chat", chat="hello there", max_tokens=12)]
    ours = [e for e in run_batch(torch_engine, requests) if isinstance(e, FinishEvent)]
    theirs = [e for e in run_batch(reference, requests) if isinstance(e, FinishEvent)]
    assert len(ours) == len(requests)
    assert ours == theirs
