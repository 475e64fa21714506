"""Batched generation with a Hugging Face causal language model, one forward pass per step for the whole batch.

Prompts are left-padded to a common length; the attention mask hides the padding and position ids count only real
tokens (``cumsum(mask) - 1``), so each row computes what it would alone. A ``DynamicCache`` keeps keys and values
between steps. When a row finishes, or is cancelled on its own (``POST /v1/cancel``), it is dropped from the batch
(cache, mask and positions), so a batch costs what its still-running requests cost. Sampling and stop handling are
per request (see ``sampling`` and ``completion``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as transformers_logging

from runtime.cancellation import Cancellation
from runtime.completion import Completion
from runtime.engine import BatchEvent, LoadReport, too_long
from runtime.errors import EngineError, EngineNotLoaded
from runtime.sampling import RowSampler, choose_tokens
from runtime.settings import RuntimeSettings
from wire import ErrorEvent, GenerationRequest, SamplingParams

__all__ = ["TorchEngine"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FALLBACK_CONTEXT = 2048


@dataclass
class _Row:
    completion: Completion
    prompt_ids: list[int]
    sampler: RowSampler


class TorchEngine:
    def __init__(self, model_dir: Path, settings: RuntimeSettings) -> None:
        self._model_dir = model_dir
        self._settings = settings
        self._device = _pick_device(settings.device)
        self._dtype = _pick_dtype(settings.dtype, self._device)
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: frozenset[int] = frozenset()
        self._pad_id = 0
        self._context_length = 0

    @property
    def context_length(self) -> int:
        if self._model is None:
            raise EngineNotLoaded("load() first")
        return self._context_length

    @property
    def tokenizer(self) -> Any:
        """The loaded Hugging Face tokenizer."""
        if self._tokenizer is None:
            raise EngineNotLoaded("load() first")
        return self._tokenizer

    def load(self) -> LoadReport:
        # A tqdm bar per load clutters the log; prepare_engine logs one line with size and rate instead.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        started = time.monotonic()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self._model_dir)
            # device_map= would load straight onto the GPU but needs accelerate, which we do not depend on.
            model: Any = AutoModelForCausalLM.from_pretrained(self._model_dir, dtype=self._dtype, use_safetensors=True)
            self._model = model.to(self._device).eval()
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load the model in {self._model_dir}: {exc}") from exc
        self._eos_ids = _eos_ids(self._model, self._tokenizer)
        self._pad_id = _pad_id(self._tokenizer, self._eos_ids)
        self._context_length = _context_length(self._model.config, self._settings.max_context_tokens)
        size = sum(p.stat().st_size for p in self._model_dir.glob("*.safetensors"))
        return LoadReport(time.monotonic() - started, size, str(self._device), str(self._dtype).split(".")[-1])

    def warmup(self) -> None:
        request = GenerationRequest(id="warmup", prompt="Hello", params=SamplingParams(max_tokens=2, temperature=0))
        for _ in self.generate([request], Cancellation()):
            pass

    def generate(self, requests: Sequence[GenerationRequest], cancellation: Cancellation) -> Iterator[BatchEvent]:
        if self._model is None:
            raise EngineNotLoaded("load() first")
        rows: list[_Row] = []
        for request in requests:
            row_or_error = self._admit(request)
            if isinstance(row_or_error, ErrorEvent):
                yield row_or_error
            else:
                rows.append(row_or_error)
        if rows:
            yield from _Batch(self._model, rows, self._pad_id, self._eos_ids).run(cancellation)

    def _admit(self, request: GenerationRequest) -> _Row | ErrorEvent:
        try:
            prompt_ids = self._prompt_ids(request)
        except TemplateError as exc:
            return ErrorEvent(id=request.id, code="invalid_request", message=f"chat template: {exc}")
        if not prompt_ids:
            return ErrorEvent(id=request.id, code="invalid_request", message="the prompt is empty")
        if error := too_long(request, len(prompt_ids), self._context_length):
            return error
        completion = Completion(request, len(prompt_ids), self._decode)
        return _Row(completion, prompt_ids, RowSampler.for_params(request.params))

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt is not None:
            return list(self._tokenizer(request.prompt)["input_ids"])
        messages = [{"role": m.role, "content": m.content} for m in request.messages or ()]
        if self._tokenizer.chat_template:
            text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            # The template writes the special tokens (BOS) itself; adding them again would double BOS.
            return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        plain = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return list(self._tokenizer(plain)["input_ids"])

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))


class _Batch:
    """One batch's decoding loop. Tensors stay on the model's device; only the chosen token ids come back."""

    def __init__(self, model: Any, rows: list[_Row], pad_id: int, eos_ids: frozenset[int]) -> None:
        self._model = model
        self._device: torch.device = model.device
        self._rows = rows
        self._pad_id = pad_id
        self._eos_ids = eos_ids
        self._cache = DynamicCache(config=model.config)
        self._mask = torch.empty(0)
        self._next_positions = torch.empty(0)

    def run(self, cancellation: Cancellation) -> Iterator[BatchEvent]:
        logits = self._prefill()
        while not cancellation.batch:
            tokens = self._choose(logits)
            events, still_running = self._advance(tokens, cancellation)
            yield from events
            if not still_running or cancellation.batch:
                return
            logits = self._step(tokens, still_running)

    @torch.inference_mode()
    def _prefill(self) -> torch.Tensor:
        width = max(len(row.prompt_ids) for row in self._rows)
        padded = [[self._pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in self._rows]
        masks = [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in self._rows]
        self._mask = torch.tensor(masks, device=self._device)
        positions = (self._mask.cumsum(dim=-1) - 1).clamp(min=0)
        self._next_positions = positions[:, -1] + 1
        return self._forward(torch.tensor(padded, device=self._device), positions)

    @torch.inference_mode()
    def _choose(self, logits: torch.Tensor) -> list[int]:
        return choose_tokens(logits, [row.sampler for row in self._rows])

    def _advance(self, tokens: list[int], cancellation: Cancellation) -> tuple[list[BatchEvent], list[int]]:
        """Hand each row its token, or end it if it was cancelled since the last step (its token is dropped
        unseen); return the events and the indices of rows that go on."""
        events: list[BatchEvent] = []
        still_running: list[int] = []
        for index, (row, token) in enumerate(zip(self._rows, tokens, strict=True)):
            if cancellation.request(row.completion.request.id):
                events.append(row.completion.cancel())
            else:
                events.extend(row.completion.push(token, end_of_sequence=token in self._eos_ids))
            if not row.completion.finished:
                still_running.append(index)
        return events, still_running

    @torch.inference_mode()
    def _step(self, tokens: list[int], still_running: list[int]) -> torch.Tensor:
        """Drop finished rows from the batch, then one forward pass with each running row's new token."""
        if len(still_running) < len(self._rows):
            keep = torch.tensor(still_running, device=self._device)
            self._cache.batch_select_indices(keep)
            self._mask, self._next_positions = self._mask[keep], self._next_positions[keep]
            self._rows = [self._rows[i] for i in still_running]
        new_tokens = torch.tensor([[tokens[i]] for i in still_running], device=self._device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(still_running), 1))], dim=1)
        logits = self._forward(new_tokens, self._next_positions[:, None])
        self._next_positions = self._next_positions + 1
        return logits

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self._model(
            input_ids=input_ids,
            attention_mask=self._mask,
            position_ids=positions,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]  # type: ignore[no-any-return]


def _pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(setting)


def _pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the tokenizer and the generation config (Llama 3 lists several)."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    return frozenset(ids)


def _pad_id(tokenizer: Any, eos_ids: frozenset[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(eos_ids) if eos_ids else 0


def _context_length(config: Any, cap: int | None) -> int:
    native = getattr(config, "max_position_embeddings", None) or _FALLBACK_CONTEXT
    return min(int(native), cap) if cap else int(native)
