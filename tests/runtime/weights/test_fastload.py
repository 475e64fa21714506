"""The direct weight load (``runtime.weights.fastload`` with ``runtime.weights.reader``) against ``from_pretrained``:
same tensors, same
greedy outputs; sharded, tied and converted checkpoints; a checkpoint the reader cannot take falls back or fails
with the file's name."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.settings import RuntimeSettings
from tests.runtime.support import greedy, mixed_batch, run_batch
from wire import FinishEvent

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.unit


def _reference(model_dir: Path, dtype: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or torch.float32, use_safetensors=True)
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
    from runtime.weights.fastload import load_without_init

    direct = load_without_init(demo_model_dir, torch.float32, torch.device("cpu"), 2)
    assert direct is not None
    _assert_same_tensors(direct, _reference(demo_model_dir))


def test_tied_embeddings_are_tied_again(demo_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from runtime.weights.fastload import load_without_init

    tied_dir = tmp_path / "tied"
    shutil.copytree(demo_model_dir, tied_dir)
    config = json.loads((tied_dir / "config.json").read_text())
    (tied_dir / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    state = load_file(tied_dir / "model.safetensors")
    del state["lm_head.weight"]  # a tied checkpoint holds the embedding only
    save_file(state, tied_dir / "model.safetensors", metadata={"format": "pt"})
    direct = load_without_init(tied_dir, torch.float32, torch.device("cpu"), 2)
    assert direct is not None
    assert direct.lm_head.weight is direct.model.embed_tokens.weight
    _assert_same_tensors(direct, _reference(tied_dir))


def test_sharded_checkpoints_load_and_unknown_keys_fall_back(demo_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from runtime.weights.fastload import load_without_init

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(demo_model_dir).save_pretrained(sharded, max_shard_size="1MB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    direct = load_without_init(sharded, torch.float32, torch.device("cpu"), 3)
    assert direct is not None
    _assert_same_tensors(direct, _reference(sharded))

    renamed = tmp_path / "renamed"
    shutil.copytree(demo_model_dir, renamed)
    from safetensors.torch import load_file, save_file

    state = load_file(renamed / "model.safetensors")
    state["model.extra.weight"] = torch.zeros(1)
    save_file(state, renamed / "model.safetensors", metadata={"format": "pt"})
    assert load_without_init(renamed, torch.float32, torch.device("cpu"), 1) is None

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert load_without_init(no_weights, torch.float32, torch.device("cpu"), 1) is None


def test_direct_and_from_pretrained_engines_decode_the_same(
    torch_engine: Any, demo_model_dir: Path, demo_settings: RuntimeSettings
) -> None:
    from runtime.torch_engine.engine import TorchEngine

    assert demo_settings.weight_loader == "direct"  # the session's engine
    reference = TorchEngine(demo_model_dir, dataclasses.replace(demo_settings, weight_loader="from_pretrained"))
    reference.load()
    requests = [*mixed_batch(6, max_tokens=12), greedy("chat", chat="hello there", max_tokens=12)]
    ours = [e for e in run_batch(torch_engine, requests) if isinstance(e, FinishEvent)]
    theirs = [e for e in run_batch(reference, requests) if isinstance(e, FinishEvent)]
    assert len(ours) == len(requests)
    assert ours == theirs


def test_a_float32_checkpoint_loads_as_bfloat16_like_from_pretrained(demo_model_dir: Path) -> None:
    from safetensors.torch import load_file

    from runtime.weights.fastload import load_without_init

    direct = load_without_init(demo_model_dir, torch.bfloat16, torch.device("cpu"), 2)
    assert direct is not None
    _assert_same_tensors(direct, _reference(demo_model_dir, torch.bfloat16))
    stored = load_file(demo_model_dir / "model.safetensors")  # today's path: load_file, then convert
    assert all(torch.equal(direct.state_dict()[name], t.to(torch.bfloat16)) for name, t in stored.items())


def _with_weights(demo_model_dir: Path, target: Path, rewrite: Any) -> Path:
    """A copy of the demo model whose model.safetensors ``rewrite(bytes) -> bytes`` has changed."""
    shutil.copytree(demo_model_dir, target)
    weights = target / "model.safetensors"
    weights.write_bytes(rewrite(weights.read_bytes()))
    return target


def test_an_unknown_dtype_falls_back_to_from_pretrained(demo_model_dir: Path, tmp_path: Path) -> None:
    from runtime.weights.fastload import load_without_init

    def unknown_dtype(data: bytes) -> bytes:  # same length, so the offsets still hold
        length = int.from_bytes(data[:8], "little")
        header = data[8 : 8 + length].replace(b'"F32"', b'"F3X"', 1)
        return data[:8] + header + data[8 + length :]

    model_dir = _with_weights(demo_model_dir, tmp_path / "unknown", unknown_dtype)
    assert load_without_init(model_dir, torch.float32, torch.device("cpu"), 2) is None


def test_a_truncated_checkpoint_fails_naming_the_file(
    demo_model_dir: Path, demo_settings: RuntimeSettings, tmp_path: Path
) -> None:
    from runtime.errors import CheckpointError, EngineError
    from runtime.torch_engine.engine import TorchEngine
    from runtime.weights.fastload import load_without_init

    model_dir = _with_weights(demo_model_dir, tmp_path / "truncated", lambda data: data[:-1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated"):
        load_without_init(model_dir, torch.float32, torch.device("cpu"), 2)
    with pytest.raises(EngineError, match=r"model\.safetensors is truncated"):
        TorchEngine(model_dir, demo_settings).load()


def test_model_code_is_imported_ahead_and_a_directory_without_a_model_is_left_to_the_load(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    # In a fresh interpreter: this one imported the model's code already (the fixture built the model with it).
    script = """
import sys
from pathlib import Path

from runtime.weights.fastload import import_model_code

MODULE = "transformers.models.llama.modeling_llama"
assert MODULE not in sys.modules, "imported before the call"
import_model_code(Path(sys.argv[2]))  # no config.json: nothing to import, and no error before the load reports it
assert MODULE not in sys.modules, "imported for a directory without a model"
import_model_code(Path(sys.argv[1]))
assert MODULE in sys.modules, "not imported by import_model_code"
"""
    argv = [sys.executable, "-c", script, str(demo_model_dir), str(tmp_path)]
    run = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
