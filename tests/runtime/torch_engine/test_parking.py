"""Parking a loaded model's weights in a host copy and waking them: the same output, the device copy given back."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.settings import RuntimeSettings
from tests.runtime.support import alone, greedy

pytestmark = pytest.mark.unit


def test_a_woken_model_answers_exactly_as_before_it_was_parked(
    demo_model_dir: Path, demo_settings: RuntimeSettings
) -> None:
    from runtime.torch_engine.engine import TorchEngine

    engine = TorchEngine(demo_model_dir, demo_settings)
    estimated = engine.weight_bytes()
    engine.load()
    assert engine.weight_bytes() == estimated, "the checkpoint's estimate is the measured size"
    request = greedy("r", prompt="the gateway keeps every request in a queue", max_tokens=16)
    before = alone(engine, request)
    device_weights = [p.data for p in engine._model.parameters()]

    assert engine.park() == estimated
    assert all(p.numel() == 0 for p in engine._model.parameters()), "parked weights left the device"
    assert engine._parked is not None
    host = [copy for _, copy in engine._parked.copies]
    assert all(h.data_ptr() != d.data_ptr() for h, d in zip(host, device_weights, strict=True))
    assert engine.weight_bytes() == estimated

    assert engine.wake() == estimated
    assert engine._parked is None
    assert alone(engine, request).text == before.text
