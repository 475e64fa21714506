"""Choosing the next token for every row of a batch at once: greedy, temperature, nucleus (top-p).

Randomness comes from one ``random.Random`` per request, seeded from the request's seed: each sampled row draws
exactly one uniform number per step and turns it into a token by inverting the (nucleus-truncated) distribution.
So a request's tokens depend only on its own seed and logits, never on which requests share its batch or how many
random numbers they consumed, and the device's random state is never touched.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wire import SamplingParams

__all__ = ["RowSampler", "choose_tokens"]


@dataclass
class RowSampler:
    """One request's sampling state: its parameters and its own random stream."""

    temperature: float
    top_p: float
    rng: random.Random

    @classmethod
    def for_params(cls, params: SamplingParams) -> RowSampler:
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(64)
        return cls(temperature=params.temperature, top_p=params.top_p, rng=random.Random(seed))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def choose_tokens(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> list[int]:
    """``logits`` is ``[rows, vocab]`` for the last position; returns one token id per row."""
    chosen = logits.argmax(dim=-1)
    sampled = [i for i, s in enumerate(samplers) if not s.greedy]
    if sampled:
        rows = torch.tensor(sampled, device=logits.device)
        chosen[rows] = _sample(logits[rows], [samplers[i] for i in sampled])
    return [int(t) for t in chosen.tolist()]


def _sample(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> torch.Tensor:
    device = logits.device
    temperatures = torch.tensor([s.temperature for s in samplers], device=device, dtype=torch.float32)
    top_ps = torch.tensor([s.top_p for s in samplers], device=device, dtype=torch.float32)
    uniforms = torch.tensor([s.rng.random() for s in samplers], device=device, dtype=torch.float32)
    probs = torch.softmax(logits.float() / temperatures[:, None], dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is below top_p.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    kept = torch.where(mass_before < top_ps[:, None], sorted_probs, torch.zeros_like(sorted_probs))
    cdf = kept.cumsum(dim=-1)
    targets = (uniforms * cdf[:, -1])[:, None]
    # Rounding can put the target at the very top of the cdf; never step past the last kept token.
    last_kept = (kept > 0).sum(dim=-1, keepdim=True).clamp(min=1) - 1
    positions = torch.minimum(torch.searchsorted(cdf, targets, right=True), last_kept)
    return order.gather(dim=-1, index=positions).squeeze(-1)
