"""Fixtures for the runtime's tests: one loaded demo-model engine per session, shared by every engine test."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.settings import RuntimeSettings
from tests.runtime.lora_support import MadeAdapter, make_adapters
from tests.runtime.support import RuntimeProcess


@pytest.fixture(scope="session")
def demo_settings(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RuntimeSettings:
    return RuntimeSettings(
        model_name="tiny-llama",
        source=str(demo_model_dir),
        cache_dir=tmp_path_factory.mktemp("weight-cache"),
        device="cpu",
    )


@pytest.fixture(scope="session")
def torch_engine(demo_model_dir: Path, demo_settings: RuntimeSettings) -> object:
    """A ``TorchEngine`` with the demo model loaded (typed ``object`` so collecting needs no torch import)."""
    from runtime.torch_engine.engine import TorchEngine

    engine = TorchEngine(demo_model_dir, demo_settings)
    engine.load()
    return engine


@pytest.fixture(scope="session")
def chunked_engine(demo_model_dir: Path, demo_settings: RuntimeSettings) -> object:
    """Like ``torch_engine``, but prefilling 4 prompt tokens per row per step, so that almost every prompt joins a
    running batch over several steps."""
    from runtime.torch_engine.engine import TorchEngine

    engine = TorchEngine(demo_model_dir, dataclasses.replace(demo_settings, prefill_chunk_tokens=4))
    engine.load()
    return engine


@pytest.fixture
def runtime_processes() -> Iterator[list[RuntimeProcess]]:
    """Runtime processes a test starts; each is stopped (SIGTERM, then SIGKILL) when the test ends."""
    started: list[RuntimeProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def lora_adapters(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, MadeAdapter]:
    """Three random LoRA adapters of the demo model (ranks 8, 16 and 64; different targets), made with peft, each
    with its merged model."""
    return make_adapters(demo_model_dir, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def merged_engines(lora_adapters: dict[str, MadeAdapter], demo_settings: RuntimeSettings) -> dict[str, object]:
    """A ``TorchEngine`` per adapter serving its merged model: the reference (typed ``object``, as above)."""
    from runtime.torch_engine.engine import TorchEngine

    engines: dict[str, object] = {}
    for name, adapter in lora_adapters.items():
        engine = TorchEngine(adapter.merged, dataclasses.replace(demo_settings, source=str(adapter.merged)))
        engine.load()
        engines[name] = engine
    return engines
