"""The continuous scheduler's budget: rows, and KV-cache tokens counted as rows times the longest row."""

from __future__ import annotations

import pytest

from runtime.engine.echo import EchoEngine
from runtime.scheduling.budget import CPU_BATCH_TOKENS, CUDA_CACHE_SHARE, Budget, cuda_batch_tokens

pytestmark = pytest.mark.unit


def test_the_padded_worst_case_must_fit() -> None:
    budget = Budget(rows=4, tokens=1000)
    assert budget.admits(rows=4, longest=250)
    assert not budget.admits(rows=4, longest=251), "four rows padded to 251 tokens each"
    assert budget.admits(rows=1, longest=1000)
    assert not budget.admits(rows=5, longest=1)


def test_the_cuda_default_is_a_share_of_free_memory_over_the_kv_bytes_per_token() -> None:
    # Qwen2.5-0.5B in bfloat16: 24 layers x 2 KV heads x 64 dims x (keys + values) x 2 bytes = 12288 bytes a token.
    assert cuda_batch_tokens(free_bytes=40 * 2**30, kv_bytes_per_token=12288) == int(40 * 2**30 * 0.7) // 12288
    assert CUDA_CACHE_SHARE == 0.7
    assert cuda_batch_tokens(free_bytes=0, kv_bytes_per_token=12288) == 1, "never zero: one short request still runs"


def test_the_defaults_on_cpu(torch_engine: object) -> None:
    assert torch_engine.default_batch_tokens() == CPU_BATCH_TOKENS == 16384  # type: ignore[attr-defined]
    # The demo model: 4 layers x 2 KV heads x 32 dims x (keys + values) x 4 bytes (float32).
    assert torch_engine.kv_bytes_per_token() == 4 * 2 * 32 * 2 * 4  # type: ignore[attr-defined]
    assert EchoEngine().default_batch_tokens() > EchoEngine().context_length
