r"""The torch engine's running batch: rows join between decoding steps, prefilled in chunks, and leave at once.

Each step is at most two forward passes: one decoding step for the rows already in (one new token each, all rows
together), and one prefill chunk for the group of rows joining (``chunk`` prompt columns, all of the group
together, left-padded like any batch). When a group's last chunk is done, its first tokens are sampled and its
cache is merged into the running one (``PaddedRows.absorb``): from the next step on it decodes with the others.
Rows that leave are dropped from the cache at once (``PaddedRows.keep``), so finished rows cost nothing.

Sampling stays per row (``runtime.torch_engine.sampling``: each request's own random stream and logits processors), so
neither
joining nor leaving changes what a seeded request draws.

A row with a LoRA adapter ``reserve``\s its adapter's device slot before it joins (``runtime.torch_engine.adapters``)
and releases it when it leaves; around each forward pass the rows' slots are set (``LoraLayers.rows``), so rows of
different adapters, and rows of none, share every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from runtime.engine.interface import NextToken, Reservation
from runtime.errors import AdapterInvalid
from runtime.output.completion import Completion
from runtime.torch_engine.adapters import AdapterKey, DeviceAdapters
from runtime.torch_engine.kvcache import PaddedRows, drop_columns
from runtime.torch_engine.sampling import RowSampler, choose
from wire import ErrorEvent

__all__ = ["TorchBatch", "TorchRow"]


@dataclass(eq=False)
class TorchRow:
    completion: Completion
    prompt_ids: list[int]
    sampler: RowSampler
    next_token: int = -1
    """The token chosen at the last step, fed to the model at the next."""
    slot: int = 0
    """Its LoRA adapter's slot on the device (0: none), from ``reserve`` until it leaves."""
    adapter: AdapterKey | None = None


class _Prefill:
    """A group of rows joining together: left-padded prompts, prefilled ``chunk`` columns per ``advance``."""

    def __init__(self, model: Any, rows: Sequence[TorchRow], pad_id: int, chunk: int) -> None:
        device = model.device
        self._config = model.config
        width = max(len(row.prompt_ids) for row in rows)
        self.rows = list(rows)
        self._chunk = chunk
        self._ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=device)
        self._mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
        self._mask = self._mask.to(device)
        self._positions = (self._mask.cumsum(dim=-1) - 1).clamp(min=0)
        self._cache = DynamicCache(config=model.config)
        self.done = 0

    @property
    def width(self) -> int:
        return int(self._ids.shape[1])

    def advance(self, model: Any) -> torch.Tensor | None:
        """Prefill the next chunk; the last prompt position's logits once the whole prompt is in, else None."""
        start, end = self.done, min(self.done + self._chunk, self.width)
        out = model(
            input_ids=self._ids[:, start:end],
            attention_mask=self._mask[:, :end],
            position_ids=self._positions[:, start:end],
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.done = end
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits if end == self.width else None

    def keep(self, indices: Sequence[int], *, trim: bool) -> None:
        """Keep only the rows at ``indices``; then (``trim``) cut the columns that are padding for all of them."""
        index = torch.tensor(list(indices), device=self._ids.device, dtype=torch.long)
        self._cache.batch_select_indices(index)
        self._ids, self._mask, self._positions = self._ids[index], self._mask[index], self._positions[index]
        self.rows = [self.rows[i] for i in indices]
        if trim:
            self._cut_left(self.width - max(len(row.prompt_ids) for row in self.rows))

    def _cut_left(self, columns: int) -> None:
        if columns <= 0:
            return
        self._ids, self._mask = self._ids[:, columns:], self._mask[:, columns:]
        self._positions = self._positions[:, columns:]
        if self.done > columns:
            drop_columns(self._cache, columns)
        else:  # everything prefilled so far was padding for the rows left
            self._cache = DynamicCache(config=self._config)
        self.done = max(0, self.done - columns)

    def prefilled(self) -> PaddedRows:
        lengths = [len(row.prompt_ids) for row in self.rows]
        return PaddedRows(self._cache, self._mask, self._positions[:, -1] + 1, lengths)


class TorchBatch:
    """``StepBatch`` of the torch engine. Tensors stay on the model's device; only chosen token ids come back."""

    def __init__(
        self,
        model: Any,
        pad_id: int,
        eos_ids: frozenset[int],
        chunk: int,
        reshape: bool = True,
        adapters: DeviceAdapters | None = None,
    ) -> None:
        """``reshape``: the cache is plain (``kvcache.plain_layers``), so groups may join running rows and padding
        columns may be cut; without, one group joins an empty batch and the cache only ever loses rows.
        ``adapters``: the engine's LoRA adapters (None: requests with one are refused)."""
        self._model = model
        self._adapters = adapters
        self._reshape = reshape
        self._pad_id = pad_id
        self._eos_ids = eos_ids
        self._chunk = chunk
        self._rows: list[TorchRow] = []  # decoding, in the order of self._running's rows
        self._running: PaddedRows | None = None
        self._joining: _Prefill | None = None

    @property
    def size(self) -> int:
        return len(self._rows) + (len(self._joining.rows) if self._joining else 0)

    @property
    def joining(self) -> bool:
        return self._joining is not None

    @property
    def cache_tokens(self) -> int:
        running = self._running.rows * self._running.width if self._running else 0
        return running + (len(self._joining.rows) * self._joining.done if self._joining else 0)

    def reserve(self, row: TorchRow, wake: Callable[[], None]) -> Reservation:
        ref = row.completion.request.adapter
        if ref is None:
            return "ready"
        request_id = row.completion.request.id
        if self._adapters is None:
            return ErrorEvent(id=request_id, code="adapter_invalid", message="this runtime serves no adapters")
        try:
            got = self._adapters.reserve(ref, wake)
        except AdapterInvalid as exc:
            return ErrorEvent(id=request_id, code="adapter_invalid", message=f"adapter {ref.name}: {exc}")
        if isinstance(got, str):
            return got
        row.slot, row.adapter = got, (ref.name, ref.source)
        return "ready"

    def join(self, rows: Sequence[TorchRow]) -> None:
        if self._joining is not None:
            raise ValueError("rows are still joining; join again once they are in")
        if self._rows and not self._reshape:
            raise ValueError("this model's cache cannot take rows into a running batch")
        if rows:
            self._joining = _Prefill(self._model, rows, self._pad_id, self._chunk)

    @torch.inference_mode()
    def leave(self, rows: Collection[TorchRow]) -> None:
        self._release(rows)  # first: whatever fails below, their adapters must not stay pinned
        gone = set(map(id, rows))
        if self._joining is not None and any(id(row) in gone for row in self._joining.rows):
            kept = [i for i, row in enumerate(self._joining.rows) if id(row) not in gone]
            if kept:
                self._joining.keep(kept, trim=self._reshape)
            else:
                self._joining = None
        if self._running is not None and any(id(row) in gone for row in self._rows):
            kept = [i for i, row in enumerate(self._rows) if id(row) not in gone]
            self._rows = [self._rows[i] for i in kept]
            if kept:
                self._running.keep(kept, trim=self._reshape)
            else:
                self._running = None  # frees the whole cache

    def _release(self, rows: Collection[TorchRow]) -> None:
        for row in rows:
            if row.adapter is not None and self._adapters is not None:
                self._adapters.release(row.adapter)
            row.slot, row.adapter = 0, None

    @torch.inference_mode()
    def step(self) -> list[NextToken[TorchRow]]:
        tokens: list[NextToken[TorchRow]] = []
        if self._running is not None:
            with self._lora(self._rows):
                logits = self._running.feed(self._model, [row.next_token for row in self._rows])
            tokens += self._choose(self._rows, logits)
        if self._joining is not None:
            with self._lora(self._joining.rows):
                first = self._joining.advance(self._model)
            if first is not None:
                tokens += self._choose(self._joining.rows, first)
                self._merge(self._joining)
        return tokens

    def _lora(self, rows: Sequence[TorchRow]) -> contextlib.AbstractContextManager[None]:
        """Around a forward pass of ``rows``: each row's LoRA adapter applies to it."""
        if self._adapters is None:
            return contextlib.nullcontext()
        return self._adapters.layers.rows([row.slot for row in rows])

    def _choose(self, rows: list[TorchRow], logits: torch.Tensor) -> list[NextToken[TorchRow]]:
        chosen = choose(logits, [row.sampler for row in rows])
        for row, choice in zip(rows, chosen, strict=True):
            row.next_token = choice.token
        return [
            NextToken(row, choice.token, choice.token in self._eos_ids, choice.logprob)
            for row, choice in zip(rows, chosen, strict=True)
        ]

    def _merge(self, group: _Prefill) -> None:
        prefilled = group.prefilled()
        if self._running is None:
            self._running = prefilled
        else:
            self._running.absorb(prefilled)
        self._rows += group.rows
        self._joining = None
