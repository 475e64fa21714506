"""Batched generation with a Hugging Face causal language model, one forward pass per step for the whole batch.

This module loads the model and turns requests into rows (tokenizing, checking the context); the decoding loop
is ``runtime.torch_engine.batch``. Prompts are left-padded to a common length; the attention mask hides the padding and
position ids count only real tokens (``cumsum(mask) - 1``), so each row computes what it would alone. A
``DynamicCache`` keeps keys and values between steps. Rows join a running batch between steps (the continuous
scheduler) and leave it when they finish or are cancelled on their own (``POST /v1/cancel``): they are dropped from
the cache, mask and positions, so a batch costs what its still-running requests cost. Sampling (penalties, bias,
log-probabilities) and stop handling are per request (see ``sampling`` and ``completion``); chat messages become a
prompt in ``chat``, an echoed prompt's log-probabilities come from ``scoring``. Tool calls are parsed out of the text
in the model's format (``toolcalls``, ``--tool-parser``), and a request whose output must follow a grammar (a
forced tool call, ``response_format``) gets the grammar's mask in its sampler (``grammar``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as transformers_logging

from runtime.cancellation import Cancellation
from runtime.engine.interface import BatchEvent, LoadReport, too_long
from runtime.engine.stepping import run_to_completion
from runtime.errors import EngineError, EngineNotLoaded, PromptRejected
from runtime.output.completion import Completion, EchoedPrompt
from runtime.output.logprobs import Vocabulary, token_bytes_table
from runtime.output.toolcalls import ToolFormat, format_for_template
from runtime.scheduling.budget import CPU_BATCH_TOKENS, cuda_batch_tokens
from runtime.settings import RuntimeSettings
from runtime.torch_engine.adapters import DeviceAdapters
from runtime.torch_engine.batch import TorchBatch, TorchRow
from runtime.torch_engine.chat import chat_prompt
from runtime.torch_engine.grammar import Grammars, grammar_text
from runtime.torch_engine.kvcache import plain_layers
from runtime.torch_engine.parking import ParkedWeights, parameter_bytes, park
from runtime.torch_engine.prompt_logprobs import prompt_logprobs
from runtime.torch_engine.sampling import RowSampler
from runtime.weights.fastload import checkpoint_bytes, load_without_init
from wire import ErrorEvent, GenerationRequest, SamplingParams

__all__ = ["TorchEngine"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FALLBACK_CONTEXT = 2048


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
        self._unmergeable: str | None = None  # a cache layer type rows cannot join, if the model has one
        self._bytes_table: list[bytes] | None = None
        self._tool_format: ToolFormat | None = None
        self._grammars: Grammars | None = None
        self._parked: ParkedWeights | None = None
        self._adapters: DeviceAdapters | None = None

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
            with ThreadPoolExecutor(1, thread_name_prefix="tokenizer") as pool:
                tokenizer = pool.submit(AutoTokenizer.from_pretrained, self._model_dir)  # alongside the weights
                self._model = self._load_model()
                self._tokenizer = tokenizer.result()
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load the model in {self._model_dir}: {exc}") from exc
        self._eos_ids = _eos_ids(self._model, self._tokenizer)
        self._pad_id = _pad_id(self._tokenizer, self._eos_ids)
        self._context_length = _context_length(self._model.config, self._settings.max_context_tokens)
        self._unmergeable = plain_layers(DynamicCache(config=self._model.config))
        template = self._tokenizer.chat_template
        self._tool_format = format_for_template(self._settings.tool_parser, template if template else None)
        self._grammars = Grammars(self._tokenizer, self._vocabulary_size, self._eos_ids)
        self._adapters = self._device_adapters()
        log.info("tool-call format: %s", self._tool_format.name if self._tool_format else "none")
        size = sum(p.stat().st_size for p in self._model_dir.glob("*.safetensors"))
        return LoadReport(time.monotonic() - started, size, str(self._device), str(self._dtype).split(".")[-1])

    def _device_adapters(self) -> DeviceAdapters | None:
        settings = self._settings
        if settings.max_adapters == 0:
            return None
        return DeviceAdapters(
            self._model,
            cache_dir=settings.cache_dir,
            cache_verify=settings.cache_verify,
            max_adapters=settings.max_adapters,
            max_rank=settings.max_adapter_rank,
            max_bytes=settings.adapter_bytes,
            base_names=(*settings.served_names, settings.source or ""),
        )

    @property
    def adapters(self) -> DeviceAdapters | None:
        """The LoRA adapters of this base model (None: ``--max-adapters 0``, or not loaded yet)."""
        return self._adapters

    def loaded_adapters(self) -> tuple[str, ...]:
        return self._adapters.loaded if self._adapters is not None else ()

    def weight_bytes(self) -> int:
        """The loaded parameters' bytes; before loading, the checkpoint's tensors at the dtype served."""
        if self._model is not None:
            return self._parked.nbytes if self._parked is not None else parameter_bytes(self._model)
        return checkpoint_bytes(self._model_dir, self._dtype)

    def device_memory_bytes(self) -> int:
        if self._device.type == "cuda":
            return int(torch.cuda.mem_get_info(self._device)[1])
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    def park(self) -> int:
        """The weights into host memory (``runtime.torch_engine.parking``); the model must not run until woken."""
        if self._model is None:
            raise EngineNotLoaded("load() first")
        if self._parked is None:
            self._parked = park(self._model, self._device)
        return self._parked.nbytes

    def wake(self) -> int:
        """The parked weights back onto the device."""
        if self._parked is None:
            return 0
        moved = self._parked.wake(self._device)
        self._parked = None
        return moved

    def _load_model(self) -> Any:
        """The weights on the device: built on ``meta`` and filled from the safetensors (``runtime.weights.fastload``),
        or with ``from_pretrained`` for a checkpoint that path cannot take or when ``--weight-loader`` asks."""
        if self._settings.weight_loader == "direct":
            model = load_without_init(self._model_dir, self._dtype, self._device, self._settings.weight_read_threads)
            if model is not None:
                return model
        # device_map= would load straight onto the GPU but needs accelerate, which we do not depend on.
        loaded: Any = AutoModelForCausalLM.from_pretrained(self._model_dir, dtype=self._dtype, use_safetensors=True)
        return loaded.to(self._device).eval()

    def warmup(self) -> None:
        """Take the paths the first real requests take, so that they do not pay for first-call set-up (lazy
        imports, kernel and allocator set-up): a greedy row, then a sampled one joining it mid-flight, as under
        the continuous scheduler. Measured on the demo model (2 cores): after a greedy one-row warm-up the first
        real request's first token took 1.2 s and the second's 0.5 s; after this one, 0.05 s and 0.02 s."""
        greedy = GenerationRequest(id="warmup-1", prompt="Hello", params=SamplingParams(max_tokens=3, temperature=0))
        sampled = GenerationRequest(
            id="warmup-2", prompt="Hello there", params=SamplingParams(max_tokens=2, temperature=0.7, seed=0)
        )
        try:
            batch = self.step_batch(running_joins=True)
        except EngineError:  # this model's cache cannot take joins: warm the one-batch-at-a-time path
            for _ in self.generate([greedy, sampled], Cancellation()):
                pass
            return
        for request in (greedy, sampled):
            row = self.prepare(request)
            assert isinstance(row, TorchRow), row
            batch.join([row])
            batch.step()
        for _ in range(greedy.params.max_tokens):
            batch.step()

    def generate(self, requests: Sequence[GenerationRequest], cancellation: Cancellation) -> Iterator[BatchEvent]:
        if self._model is None:
            raise EngineNotLoaded("load() first")
        return run_to_completion(self, requests, cancellation)

    def prepare(self, request: GenerationRequest) -> TorchRow | ErrorEvent:
        try:
            prompt_ids = self._prompt_ids(request)
            self._check_token_ids(request)
            tools = self._tools_for(request)
            sampler = self._sampler(request)
        except TemplateError as exc:
            return ErrorEvent(id=request.id, code="invalid_request", message=f"chat template: {exc}")
        except PromptRejected as exc:
            return ErrorEvent(id=request.id, code="invalid_request", message=str(exc))
        if not prompt_ids:
            return ErrorEvent(id=request.id, code="invalid_request", message="the prompt is empty")
        if request.adapter is not None and request.echo and request.params.logprobs is not None:
            message = "echo with logprobs is not supported with an adapter (the prompt is scored by the base model)"
            return ErrorEvent(id=request.id, code="invalid_request", message=message)
        if error := too_long(request, len(prompt_ids), self._context_length):
            return error
        vocabulary = Vocabulary(self._token_bytes)
        echo = self._echo(request, prompt_ids, vocabulary) if request.echo else None
        completion = Completion(request, len(prompt_ids), self._decode, vocabulary=vocabulary, echo=echo, tools=tools)
        return TorchRow(completion, prompt_ids, sampler)

    def _tools_for(self, request: GenerationRequest) -> ToolFormat | None:
        """The format to parse tool calls in, for a request that may call tools."""
        if not request.calls_tools:
            return None
        if self._tool_format is None:
            raise PromptRejected(
                "this model has no tool-call format (the runtime's --tool-parser), so it cannot call tools"
            )
        return self._tool_format

    def _sampler(self, request: GenerationRequest) -> RowSampler:
        """The row's sampler; with a grammar's mask when its output must follow one."""
        sampler = RowSampler.for_params(request.params)
        grammar = grammar_text(request, self._tool_format)
        if grammar is not None:
            assert self._grammars is not None
            sampler.grammar = self._grammars.mask(grammar)
        return sampler

    def _check_token_ids(self, request: GenerationRequest) -> None:
        """Token ids a client wrote itself (a token prompt, ``logit_bias``) must be in the model's vocabulary."""
        size = self._vocabulary_size
        if outside := [i for i in request.prompt_token_ids or () if i >= size]:
            raise PromptRejected(f"prompt token id {outside[0]} is outside this model's vocabulary of {size} tokens")
        if outside := [i for i in request.params.logit_bias if i >= size]:
            raise PromptRejected(f"logit_bias names token id {outside[0]}, outside this model's vocabulary of {size}")

    def _echo(self, request: GenerationRequest, prompt_ids: list[int], vocabulary: Vocabulary) -> EchoedPrompt:
        """The prompt as an ``echo`` request's output starts with it: its text, and (``logprobs``) its entries."""
        text = request.prompt if request.prompt is not None else self._decode(prompt_ids)
        k = request.params.logprobs
        if k is None:
            return EchoedPrompt(text)
        scores = prompt_logprobs(self._model, prompt_ids, k, self._settings.prefill_chunk_tokens)
        return EchoedPrompt(text, vocabulary.entries(prompt_ids, scores))

    @property
    def _vocabulary_size(self) -> int:
        embeddings = self._model.get_output_embeddings()
        return int(embeddings.weight.shape[0]) if embeddings is not None else len(self._tokenizer)

    def _token_bytes(self, token_id: int) -> bytes:
        """Each token's bytes, from a table made the first time one is asked for (a request with ``logprobs``)."""
        if self._bytes_table is None:
            self._bytes_table = token_bytes_table(self._tokenizer, self._vocabulary_size)
        return self._bytes_table[token_id]

    def step_batch(self, *, running_joins: bool = True) -> TorchBatch:
        if self._model is None:
            raise EngineNotLoaded("load() first")
        if running_joins and self._unmergeable is not None:
            raise EngineError(f"rows cannot join a running batch of a model with {self._unmergeable} cache layers")
        reshape = self._unmergeable is None
        chunk = self._settings.prefill_chunk_tokens
        return TorchBatch(self._model, self._pad_id, self._eos_ids, chunk, reshape, self._adapters)

    def default_batch_tokens(self) -> int:
        """``CPU_BATCH_TOKENS`` on CPU; on CUDA, what ``cuda_batch_tokens`` makes of the memory free now."""
        if self._device.type != "cuda":
            return CPU_BATCH_TOKENS
        free, _ = torch.cuda.mem_get_info(self._device)
        free += torch.cuda.memory_reserved(self._device) - torch.cuda.memory_allocated(self._device)
        per_token = self.kv_bytes_per_token()
        tokens = cuda_batch_tokens(free, per_token)
        log.info("KV-cache budget: %d tokens of %d bytes in %.2f GB free", tokens, per_token, free / 1e9)
        return tokens

    @torch.inference_mode()
    def kv_bytes_per_token(self) -> int:
        """Bytes the KV cache takes per token, all layers, keys and values: measured with a one-token forward."""
        if self._model is None:
            raise EngineNotLoaded("load() first")
        cache = DynamicCache(config=self._model.config)
        self._model(input_ids=torch.tensor([[self._pad_id]], device=self._device), cache=cache, use_cache=True)
        held = [getattr(layer, name, None) for layer in cache.layers for name in ("keys", "values")]
        return sum(int(t.nbytes) for t in held if isinstance(t, torch.Tensor))

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        if request.prompt is not None:
            return list(self._tokenizer(request.prompt)["input_ids"])
        # A chat template writes the special tokens (BOS) itself; adding them again would double BOS.
        text, special = chat_prompt(self._tokenizer, request.messages or (), request.tools)
        return list(self._tokenizer(text, add_special_tokens=special)["input_ids"])

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))


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
