"""A padded KV cache that rows can join and leave: the tensors behind the torch engine's continuous batching.

A ``DynamicCache`` holds, per layer, keys and values of shape ``[rows, kv_heads, width, head_dim]``. Rows are
right-aligned: every row's latest token sits in the last column, and a row shorter than the widest one has
padding on its left, hidden by the attention mask (``PaddedRows.mask``) and skipped by the position ids (each row
keeps its own next position). Then:

- **joining**: two sets of rows (the running ones and a freshly prefilled group) are left-padded to the same width
  and concatenated along the row dimension;
- **leaving**: a row is dropped with ``batch_select_indices``, and the columns that were padding for every row
  still there are cut off, so the width is always the longest row's length, not the longest since the batch
  began.

Each row attends to exactly its own tokens at its own positions, whatever joins or leaves, so it computes what it
would alone (up to floating-point rounding, which depends on the shapes of the matrix products).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = ["PaddedRows", "drop_columns", "plain_layers"]


def plain_layers(cache: DynamicCache) -> str | None:
    """None if every layer of ``cache`` is a plain ``DynamicLayer`` (full attention, one tensor per key and value,
    which is what padding and concatenating assume), else the first other layer type's name. Sliding-window,
    quantised and linear-attention layers keep their state differently."""
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            return type(layer).__name__
    return None


class PaddedRows:
    """The KV cache, attention mask and next positions of a set of right-aligned rows. ``lengths`` are the real
    (unpadded) tokens each row has in the cache; the width is their maximum."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, next_positions: torch.Tensor, lengths: list[int]):
        self.cache = cache
        self.mask = mask
        self.next_positions = next_positions
        self.lengths = lengths

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def feed(self, model: Any, tokens: Sequence[int]) -> torch.Tensor:
        """One decoding step: each row's new token goes in at its next position; the last position's logits."""
        device = self.mask.device
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        out = model(
            input_ids=torch.tensor([[t] for t in tokens], device=device),
            attention_mask=self.mask,
            position_ids=self.next_positions[:, None],
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.next_positions = self.next_positions + 1
        self.lengths = [n + 1 for n in self.lengths]
        return out.logits[:, -1, :]  # type: ignore[no-any-return]

    def keep(self, indices: Sequence[int], *, trim: bool = True) -> None:
        """Keep only the rows at ``indices`` (in that order), then (``trim``) cut the columns that are padding
        for all."""
        if len(indices) == self.rows:
            return
        index = torch.tensor(list(indices), device=self.mask.device, dtype=torch.long)
        self.cache.batch_select_indices(index)
        self.mask, self.next_positions = self.mask[index], self.next_positions[index]
        self.lengths = [self.lengths[i] for i in indices]
        if trim:
            self.trim()

    def trim(self) -> None:
        """Cut the columns on the left that are padding for every row."""
        self._cut_left(self.width - max(self.lengths, default=0))

    def absorb(self, other: PaddedRows) -> None:
        """Append ``other``'s rows after these, padding the narrower set on the left to the common width."""
        width = max(self.width, other.width)
        self._pad_left(width - self.width)
        other._pad_left(width - other.width)
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            assert mine.keys is not None and mine.values is not None, "a set of rows always has a filled cache"
            assert theirs.keys is not None and theirs.values is not None, "a set of rows always has a filled cache"
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self.mask = torch.cat([self.mask, other.mask], dim=0)
        self.next_positions = torch.cat([self.next_positions, other.next_positions], dim=0)
        self.lengths = self.lengths + other.lengths

    def _pad_left(self, columns: int) -> None:
        if columns <= 0:
            return
        _each_tensor(self.cache, lambda t: torch.nn.functional.pad(t, (0, 0, columns, 0)))
        self.mask = torch.nn.functional.pad(self.mask, (columns, 0))

    def _cut_left(self, columns: int) -> None:
        if columns <= 0:
            return
        drop_columns(self.cache, columns)
        self.mask = self.mask[:, columns:]


def drop_columns(cache: DynamicCache, columns: int) -> None:
    """Cut the first ``columns`` token columns (the oldest) of every layer."""
    _each_tensor(cache, lambda t: t[:, :, columns:, :])


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, which ``plain_layers`` has checked are all ``DynamicLayer``."""
    return cast("list[DynamicLayer]", cache.layers)


def _each_tensor(cache: DynamicCache, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace every layer's keys and values by ``change`` of them."""
    for layer in _layers(cache):
        if layer.keys is not None and layer.values is not None:
            layer.keys, layer.values = change(layer.keys), change(layer.values)
