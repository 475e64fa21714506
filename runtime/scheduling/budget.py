"""How much the continuous scheduler lets into its running batch: rows, and KV-cache tokens.

The torch engine keeps the running batch's KV cache as one padded tensor per layer (``runtime.torch_engine.kvcache``):
rows
times the longest row's length. A row can grow to its prompt plus ``max_tokens``, so the most the cache can come
to hold is the number of rows times the longest such length among them. The scheduler admits a request only if
that worst case stays within the token budget, so the cache never outgrows it, whatever the rows generate.

The default budget on CPU is a fixed number: host memory is plentiful and the budget mostly bounds the step's
compute. On CUDA it is derived from the memory free after loading and warm-up: ``CUDA_CACHE_SHARE`` of it, divided
by the model's KV bytes per token (measured, not computed from the config). The rest is left for the activations
of a step (a prefill chunk of every joining row), the per-layer copy ``DynamicCache`` makes as it grows, and the
allocator's fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CPU_BATCH_TOKENS", "CUDA_CACHE_SHARE", "Budget", "cuda_batch_tokens"]

CPU_BATCH_TOKENS = 16384
CUDA_CACHE_SHARE = 0.7


@dataclass(frozen=True)
class Budget:
    """Most rows, and most KV-cache tokens counted as rows times the longest row's prompt + ``max_tokens``."""

    rows: int
    tokens: int

    def admits(self, rows: int, longest: int) -> bool:
        """Whether ``rows`` rows, the longest of which may reach ``longest`` tokens, fit."""
        return rows <= self.rows and rows * longest <= self.tokens


def cuda_batch_tokens(free_bytes: int, kv_bytes_per_token: int) -> int:
    """The default token budget on a GPU with ``free_bytes`` free, for a model whose KV cache takes
    ``kv_bytes_per_token`` per token (all layers, keys and values)."""
    return max(1, int(free_bytes * CUDA_CACHE_SHARE) // max(1, kv_bytes_per_token))
