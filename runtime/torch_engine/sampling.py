"""Choosing the next token for every row of a batch at once: logits processors, greedy, temperature, nucleus (top-p),
and the log-probabilities of the choice.

Each row has its own ``RowSampler``. A step, for all rows together:

1. **process**: a row's *logits processors* change its logits in turn (``Penalties``: OpenAI's frequency and presence
   penalties over the tokens the row generated; ``LogitBias``). Any per-row rule can join that list by being a
   ``LogitsProcessor``. Last, the rows with a ``grammar`` (``runtime.torch_engine.grammar``) have the logits of the
   tokens it
   does not allow next set to ``-inf``, all such rows at once. Rows without processors or grammar keep their logits
   exactly as they are;
2. **choose**: greedy rows take the argmax of their processed logits; the others sample from
   ``softmax(processed / temperature)``, cut to the nucleus;
3. **score**: rows that asked for ``logprobs`` get ``log_softmax(processed)`` of the chosen token and the top ``k``:
   the distribution after penalties and bias, before temperature and top-p (so the numbers do not depend on the
   temperature, and greedy rows have them too). Tokens a grammar masked out are never among the top ``k``: a
   row may have fewer alternatives than it asked for, never one with a log-probability of ``-inf``;
4. **accept**: each processor hears the token chosen for its row (penalties count it), and so does the grammar.

Randomness comes from one ``random.Random`` per request, seeded from the request's seed: each sampled row draws
exactly one uniform number per step and turns it into a token by inverting the (nucleus-truncated) distribution.
So a request's tokens depend only on its own seed and logits, never on which requests share its batch or how many
random numbers they consumed, and the device's random state is never touched. A batch whose rows set none of the
new parameters takes exactly the path it always took.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from runtime.output.logprobs import Logprob
from runtime.torch_engine.grammar import GrammarMask, apply_masks
from wire import SamplingParams

__all__ = ["Chosen", "LogitBias", "LogitsProcessor", "Penalties", "RowSampler", "choose", "choose_tokens"]


class LogitsProcessor(Protocol):
    """A per-row rule that changes the row's next-token logits before the choice."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` is the row's ``[vocab]`` float32 logits; return the changed ones (a new tensor or the same)."""
        ...

    def accept(self, token: int) -> None:
        """The token chosen for the row at this step."""
        ...


class Penalties:
    """OpenAI's penalties: ``logit[j] -= count[j] * frequency + (count[j] > 0) * presence``, where ``count[j]`` is
    how often the row generated token ``j`` so far (the prompt does not count)."""

    def __init__(self, frequency: float, presence: float) -> None:
        self.frequency = frequency
        self.presence = presence
        self._counts: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self._counts is None:
            self._counts = torch.zeros_like(logits)
        return logits - self._counts * self.frequency - (self._counts > 0).to(logits.dtype) * self.presence

    def accept(self, token: int) -> None:
        if self._counts is not None:
            self._counts[token] += 1


class LogitBias:
    """OpenAI's ``logit_bias``: a fixed number added to some tokens' logits (-100 bans a token, +100 forces it, in
    effect: logits of real models lie well within that range)."""

    def __init__(self, bias: Mapping[int, float]) -> None:
        self._ids = list(bias)
        self._values = [float(value) for value in bias.values()]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor(self._ids, device=logits.device, dtype=torch.long)
        values = torch.tensor(self._values, device=logits.device, dtype=logits.dtype)
        return logits.index_add(0, ids, values)

    def accept(self, token: int) -> None:
        return None


def logits_processors(params: SamplingParams) -> list[LogitsProcessor]:
    """The processors a request's parameters ask for, in the order they apply."""
    processors: list[LogitsProcessor] = []
    if params.frequency_penalty or params.presence_penalty:
        processors.append(Penalties(params.frequency_penalty, params.presence_penalty))
    if params.logit_bias:
        processors.append(LogitBias(params.logit_bias))
    return processors


@dataclass
class RowSampler:
    """One request's sampling state: its parameters, its logits processors, its grammar (if its output must follow
    one) and its own random stream. ``logprobs``: how many alternatives to report per token (None: none)."""

    temperature: float
    top_p: float
    rng: random.Random
    logprobs: int | None = None
    processors: list[LogitsProcessor] = field(default_factory=list)
    grammar: GrammarMask | None = None

    @classmethod
    def for_params(cls, params: SamplingParams) -> RowSampler:
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(64)
        return cls(
            temperature=params.temperature,
            top_p=params.top_p,
            rng=random.Random(seed),
            logprobs=params.logprobs,
            processors=logits_processors(params),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Chosen:
    """A row's next token, and its scores if the row asked for them."""

    token: int
    logprob: Logprob | None = None


def choose(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> list[Chosen]:
    """``logits`` is ``[rows, vocab]`` for the last position; returns each row's choice, in row order."""
    processed = _process(logits, samplers)
    chosen = processed.argmax(dim=-1)
    sampled = [i for i, s in enumerate(samplers) if not s.greedy]
    if sampled:
        rows = torch.tensor(sampled, device=logits.device)
        chosen[rows] = _sample(processed[rows], [samplers[i] for i in sampled])
    tokens = [int(t) for t in chosen.tolist()]
    scores = _scores(processed, samplers, tokens)
    for sampler, token in zip(samplers, tokens, strict=True):
        for processor in sampler.processors:
            processor.accept(token)
        if sampler.grammar is not None:
            sampler.grammar.accept(token)
    return [Chosen(token, scores.get(i)) for i, token in enumerate(tokens)]


def choose_tokens(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> list[int]:
    """``choose``, the tokens only."""
    return [chosen.token for chosen in choose(logits, samplers)]


def _process(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> torch.Tensor:
    """The logits after each row's processors and grammar: ``logits`` itself when no row has any; else a float32
    copy (exact for every row: widening a float is exact) whose rows with processors or a grammar are changed."""
    changing = [i for i, s in enumerate(samplers) if s.processors]
    constrained = [i for i, s in enumerate(samplers) if s.grammar is not None]
    if not changing and not constrained:
        return logits
    processed = logits.to(torch.float32, copy=True)
    for i in changing:
        row = processed[i]
        for processor in samplers[i].processors:
            row = processor(row)
        processed[i] = row
    if constrained:
        apply_masks(processed, constrained, [mask for i in constrained if (mask := samplers[i].grammar) is not None])
    return processed


def _scores(processed: torch.Tensor, samplers: Sequence[RowSampler], tokens: list[int]) -> dict[int, Logprob]:
    """Log-probabilities of the chosen tokens and the top ``k``, for the rows that asked, by row index."""
    asking = [i for i, s in enumerate(samplers) if s.logprobs is not None]
    if not asking:
        return {}
    rows = torch.tensor(asking, device=processed.device)
    logprobs = torch.log_softmax(processed[rows].float(), dim=-1)
    picked = torch.tensor([tokens[i] for i in asking], device=processed.device)
    chosen = logprobs.gather(1, picked[:, None]).squeeze(1).tolist()
    k = max(samplers[i].logprobs or 0 for i in asking)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0].long())
    values, ids = top_values.tolist(), top_ids.tolist()
    scores = {}
    for n, i in enumerate(asking):
        wanted = samplers[i].logprobs or 0
        top = tuple((t, v) for t, v in zip(ids[n][:wanted], values[n][:wanted], strict=True) if v != -math.inf)
        scores[i] = Logprob(chosen[n], top)
    return scores


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
