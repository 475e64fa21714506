"""Next-token choice: greedy, temperature, nucleus, per-request random streams, logits processors (penalties,
bias) and log-probabilities."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from runtime.torch_engine.sampling import Penalties, RowSampler, choose, choose_tokens
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


# Logits processors and log-probabilities.

VOCAB = 6


def params_sampler(seed: int = 0, **params: object) -> RowSampler:
    return RowSampler.for_params(SamplingParams(seed=seed, **params))


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_rows_without_new_parameters_choose_exactly_as_before() -> None:
    plain = [sampler(0.0), sampler(1.0, seed=5), sampler(0.7, top_p=0.8, seed=6)]
    fancy = [
        params_sampler(temperature=0.0, logprobs=2, presence_penalty=1.0),
        params_sampler(seed=9, logit_bias={1: 5.0}, frequency_penalty=0.5),
    ]
    twins = [sampler(0.0), sampler(1.0, seed=5), sampler(0.7, top_p=0.8, seed=6)]
    for step in range(30):
        logits = random_logits(5, seed=step)
        alone = choose_tokens(logits[:3], plain)
        mixed = choose(
            torch.cat([logits[3:4], logits[:1], logits[4:5], logits[1:3]]), [fancy[0], twins[0], fancy[1], *twins[1:]]
        )
        assert [mixed[1].token, mixed[3].token, mixed[4].token] == alone
        assert mixed[1].logprob is None and mixed[0].logprob is not None


def test_a_bias_of_100_forces_its_token_and_minus_100_bans_it() -> None:
    forced = params_sampler(seed=1, logit_bias={3: 100.0})
    banned = params_sampler(seed=1, logit_bias={0: -100.0, 1: -100.0})
    greedy_forced = params_sampler(temperature=0.0, logit_bias={3: 100.0})
    for step in range(50):
        logits = random_logits(3, seed=step)
        tokens = choose_tokens(logits, [forced, banned, greedy_forced])
        assert tokens[0] == 3 and tokens[2] == 3
        assert tokens[1] not in (0, 1)


def test_penalties_follow_openai_semantics() -> None:
    penalties = Penalties(frequency=0.5, presence=1.0)
    logits = torch.zeros(VOCAB)
    assert torch.equal(penalties(logits), logits)  # nothing generated yet
    for token in (2, 2, 4):
        penalties.accept(token)
    expected = torch.tensor([0.0, 0.0, -(2 * 0.5 + 1.0), 0.0, -(1 * 0.5 + 1.0), 0.0])
    assert torch.allclose(penalties(logits), expected)


def test_a_frequency_penalty_changes_the_sampled_distribution() -> None:
    """Greedy repeats its top token; a frequency penalty pushes a token down each time it comes, a presence
    penalty once."""
    logits = torch.tensor([[3.0, 2.0, 1.5, 0.0, -1.0, -2.0]])
    plain, penalised = params_sampler(temperature=0.0), params_sampler(temperature=0.0, frequency_penalty=2.0)
    assert [choose_tokens(logits, [plain])[0] for _ in range(5)] == [0, 0, 0, 0, 0]
    assert [choose_tokens(logits, [penalised])[0] for _ in range(5)] == [0, 1, 2, 0, 1]
    presence = params_sampler(temperature=0.0, presence_penalty=2.0)  # once per token, however often it came
    assert [choose_tokens(logits, [presence])[0] for _ in range(5)] == [0, 1, 2, 0, 0]


def test_a_negative_presence_penalty_makes_a_sampled_row_repeat_itself() -> None:
    flat = torch.zeros(1, VOCAB)
    row = params_sampler(seed=4, presence_penalty=-2.0, frequency_penalty=-2.0)
    tokens = [choose_tokens(flat, [row])[0] for _ in range(40)]
    assert Counter(tokens).most_common(1)[0][1] > 30


def test_logprobs_are_of_the_processed_distribution_with_the_top_k() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05, 1e-9, 1e-9]]))
    (greedy,) = choose(logits, [params_sampler(temperature=0.0, logprobs=3)])
    assert greedy.token == 0 and greedy.logprob is not None
    assert greedy.logprob.logprob == pytest.approx(math.log(0.5), abs=1e-5)
    assert [token for token, _ in greedy.logprob.top] == [0, 1, 2]
    assert sum(math.exp(lp) for _, lp in greedy.logprob.top) == pytest.approx(0.95, abs=1e-5)
    biased = params_sampler(temperature=1.0, seed=2, logprobs=0, logit_bias={3: 100.0})
    (forced,) = choose(logits, [biased])
    assert forced.token == 3 and forced.logprob is not None
    assert forced.logprob.logprob == pytest.approx(0.0, abs=1e-4) and forced.logprob.top == ()


def test_logprobs_do_not_depend_on_the_temperature() -> None:
    logits = random_logits(1)
    cold = choose(logits, [params_sampler(temperature=0.0, logprobs=VOCAB)])[0].logprob
    hot = choose(logits, [params_sampler(temperature=1.9, seed=3, logprobs=VOCAB)])[0].logprob
    assert cold is not None and hot is not None
    assert dict(cold.top) == pytest.approx(dict(hot.top))
    assert sum(math.exp(lp) for _, lp in cold.top) == pytest.approx(1.0, abs=1e-5)


def test_logprobs_after_a_penalty_are_of_the_penalised_distribution() -> None:
    logits = random_logits(1, seed=7)
    row = params_sampler(seed=1, logprobs=VOCAB, presence_penalty=1.5, frequency_penalty=0.25)
    first = choose(logits, [row])[0]
    second = choose(logits, [row])[0]
    assert first.logprob is not None and second.logprob is not None
    penalised = logits[0].clone()
    penalised[first.token] -= 1.5 + 0.25
    expected = torch.log_softmax(penalised, dim=-1).tolist()
    assert dict(second.logprob.top) == pytest.approx(dict(enumerate(expected)), abs=1e-5)
    assert second.logprob.logprob == pytest.approx(expected[second.token], abs=1e-5)


def test_plain_rows_choose_what_they_chose_before_logits_processors_existed() -> None:
    """Tokens recorded with the sampler as it was before penalties, bias and logprobs (commit 0d212af); a row that
    sets none of them must still get them, alone or beside a row that sets them all."""
    before = [[45, 9, 16, 32], [44, 41, 42, 6], [27, 14, 48, 6], [30, 34, 30, 32]]
    before += [[49, 31, 48, 11], [16, 28, 43, 41], [10, 18, 30, 24], [35, 40, 48, 24]]
    settings = [(0.0, 1.0, 0), (1.0, 1.0, 1), (0.7, 0.9, 2), (1.5, 0.5, 3)]
    rows = [RowSampler.for_params(SamplingParams(temperature=t, top_p=p, seed=s)) for t, p, s in settings]
    mate = params_sampler(seed=5, logprobs=3, presence_penalty=1.0, frequency_penalty=1.0, logit_bias={7: 5.0})
    for step, expected in enumerate(before):
        logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(step)) * 2
        assert choose_tokens(torch.cat([logits, logits[:1]]), [*rows, mate])[:4] == expected
