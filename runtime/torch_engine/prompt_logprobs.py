"""The log-probabilities of a prompt's own tokens, for ``echo`` with ``logprobs``.

One extra forward pass over the prompt, alone and in chunks (its cache thrown away after): the running batch
computes only the last position's logits, and keeping every position's for a whole group of rows would cost
``rows x prompt x vocabulary`` floats and change the shapes, so the rounding, of everyone else's step. Echo with
logprobs (scoring a text) is rare and pays for its own pass. These are the model's own log-probabilities: no
penalty or bias applies to a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from runtime.output.logprobs import Logprob

__all__ = ["prompt_logprobs"]


@torch.inference_mode()
def prompt_logprobs(model: Any, prompt_ids: Sequence[int], k: int, chunk: int) -> list[Logprob]:
    """Each prompt token's log-probability given the tokens before it, with the ``k`` most likely tokens at its
    position; the first token's is None (nothing comes before it)."""
    ids = torch.tensor([list(prompt_ids)], device=model.device)
    cache = DynamicCache(config=model.config)
    scores = [Logprob(None)]
    last = len(prompt_ids) - 1  # the positions whose logits predict the next prompt token
    for start in range(0, last, chunk):
        end = min(start + chunk, last)
        positions = torch.arange(start, end, device=model.device)[None, :]
        out = model(input_ids=ids[:, start:end], position_ids=positions, cache=cache, use_cache=True)
        logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
        targets = ids[0, start + 1 : end + 1]
        chosen = logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
        top_values, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0].long())
        for logprob, values, top in zip(chosen, top_values.tolist(), top_ids.tolist(), strict=True):
            scores.append(Logprob(logprob, tuple(zip(top, values, strict=True))))
    return scores
