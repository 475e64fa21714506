"""Next-token choice: greedy, temperature, nucleus, and per-request random streams."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from runtime.sampling import RowSampler, choose_tokens
from wire import SamplingParams

pytestmark = pytest.mark.unit

LOGITS = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))


def sampler(temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> RowSampler:
    return RowSampler.for_params(SamplingParams(temperature=temperature, top_p=top_p, seed=seed))


def draw(row: RowSampler, times: int) -> Counter[int]:
    return Counter(choose_tokens(LOGITS[None, :], [row])[0] for _ in range(times))


def test_temperature_zero_is_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, 0.0, 0.0]])
    assert choose_tokens(logits, [sampler(0.0), sampler(0.0)]) == [1, 0]


def test_sampling_follows_the_distribution() -> None:
    counts = draw(sampler(seed=3), 4000)
    for token, probability in enumerate([0.5, 0.3, 0.15, 0.05]):
        assert counts[token] / 4000 == pytest.approx(probability, abs=0.03)


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    assert set(draw(sampler(top_p=0.75, seed=1), 500)) == {0, 1}
    assert set(draw(sampler(top_p=0.79, seed=1), 500)) == {0, 1}
    assert set(draw(sampler(top_p=0.81, seed=1), 500)) == {0, 1, 2}
    assert set(draw(sampler(top_p=0.01, seed=1), 100)) == {0}


def test_low_temperature_sharpens() -> None:
    assert draw(sampler(temperature=0.05, seed=2), 300)[0] == 300


def test_same_seed_same_tokens_whatever_the_batch() -> None:
    alone = [choose_tokens(LOGITS[None, :], [row])[0] for row in [sampler(seed=42)] for _ in range(50)]
    row, mate_a, mate_b = sampler(seed=42), sampler(seed=1), sampler(0.0)
    together = [choose_tokens(LOGITS.repeat(3, 1), [mate_a, row, mate_b])[1] for _ in range(50)]
    assert together == alone


def test_missing_seed_draws_a_fresh_one() -> None:
    rows = [RowSampler.for_params(SamplingParams(seed=None)) for _ in range(2)]
    assert rows[0].rng.random() != rows[1].rng.random()


def test_a_uniform_at_the_top_never_picks_a_token_outside_the_nucleus() -> None:
    row = RowSampler(temperature=1.0, top_p=0.5, rng=random.Random(0))
    row.rng.random = lambda: 1.0 - 2.0**-53  # type: ignore[method-assign]
    assert choose_tokens(LOGITS[None, :], [row]) == [0]
