"""A tiny random-weight Llama with a locally trained byte-level BPE tokenizer, for tests and local demos.

It goes through the same code path as a real model: ``save_pretrained`` writes safetensors weights, a
``tokenizer.json`` and a chat template, and the runtime loads it with ``AutoModelForCausalLM`` and
``AutoTokenizer``. Nothing is downloaded.

Random weights with the usual small initialisation give nearly flat logits, so greedy decoding would flip on the
last bit of a float between a batched and an unbatched run. A wide ``initializer_range`` makes the logits peaked,
so greedy decoding is stable, and the special tokens' output rows are zeroed so random text never ends early.

    python -m runtime.weights.demo_model --out .demo-model/tiny-llama

``--vocab-size N`` (above ``VOCAB_SIZE``) builds the same model with a real-size vocabulary (``bench structured
--vocab-size 32000``: a grammar's mask cost grows with the vocabulary). The small corpus above yields about a
thousand merges, so the tokenizer is also trained on seeded pseudo-words (``_pseudo_words``: syllables strung
together), which gives BPE enough distinct pairs for 32k real merges in about 2 s; should training still fall short
of N, the rest are generated added tokens (``<|pad_N|>``). ``tokenizer_build.json`` says which (trained, padded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BUILD_REPORT", "REQUIRED_FILES", "build", "is_complete", "main"]

SEED = 1234
VOCAB_SIZE = 1024
INITIALIZER_RANGE = 0.5
#: Written beside a model built with ``--vocab-size``: ``{"vocab_size", "trained", "padded", "corpus"}``.
BUILD_REPORT = "tokenizer_build.json"
_PSEUDO_WORDS = 300_000

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|developer|>")

#: ``{{ bos_token }}``, the tools (if any) in a system block, then one block per message, then the assistant's header
#: when a reply is wanted. Tools, tool calls and tool results are written as Hermes and Qwen write them
#: (``<tools>``, ``<tool_call>``, ``<tool_response>``), so the runtime's ``hermes`` tool-call format applies. No
#: instructions: the model is random, and its context of 512 tokens is short.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>"
    "{{ eos_token }}\n{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['role'] == 'tool' %}<tool_response>\n{{ message['content'] }}\n</tool_response>"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    '<tool_call>\n{"name": "{{ call.function.name }}", "arguments": '
    "{% if call.function.arguments is string %}{{ call.function.arguments }}"
    "{% else %}{{ call.function.arguments | tojson }}{% endif %}}\n</tool_call>"
    "{% endfor %}"
    "{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

_CORPUS = """\
The gateway keeps every request in a queue until a runtime is ready to take it. When no one has asked for a model
in a while, the runtime goes away and the graphics card is free for someone else. When the next request arrives,
the gateway asks for a new replica, waits for it to load its weights, and then sends the queued requests over in
batches. Nothing is lost while the model is cold; the caller only waits a little longer.

Once upon a time there was a small town by the sea. Every morning the fishermen went out in their boats, and every
evening they came back with nets full of silver fish. The children ran down to the harbour to watch them, and the
old baker gave them warm bread with butter and honey. On Sundays the whole town sat together in the square, talked
about the weather, the prices at the market, and the strange ship that had been seen far out on the horizon.

A language model reads a sequence of tokens and predicts the next one. It does this again and again, each time
adding the token it chose to the end of the sequence. Greedy decoding always takes the most likely token; sampling
draws one at random, with a temperature that makes the choice bolder or more careful, and a nucleus that cuts off
the long tail of unlikely words. A stop sequence ends the answer early, and a limit on the number of new tokens
makes sure that it ends at all.

How are you today? I am fine, thank you. What would you like to know? Tell me about the weather in the mountains.
It is cold at night and warm in the afternoon, and the wind comes from the west. Can you write a short poem about
the moon? The moon is pale, the night is long, the river hums a quiet song. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100.
Punctuation matters too: commas, full stops. Questions? Exclamations! Quotes "like this" and 'like that'; (yes).

The library opens at nine o'clock and closes at six. Students bring their laptops, read quietly, and borrow books
about history, chemistry, geography and music. A librarian with round glasses helps them find journals, maps and
newspapers from the last century. Outside, a gardener waters the roses, trims the hedges and sweeps the yellow
leaves from the path, while pigeons wait for crumbs beside the fountain.

Recipe for a simple soup: chop two onions, three carrots and a handful of celery. Melt butter in a large pot, add
the vegetables and cook them gently for ten minutes. Pour in a litre of stock, season with salt, pepper and thyme,
and simmer for half an hour. Blend until smooth, taste, and serve it hot with fresh bread and a little cream.
"""


def is_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` already holds every file of a saved demo model."""
    return all((out_dir / name).is_file() for name in REQUIRED_FILES)


def build(out_dir: Path, vocab_size: int = VOCAB_SIZE, seed: int = SEED) -> Path:
    """Write the demo model (``vocab_size`` tokens, weights drawn with ``seed``: another seed, another model of the
    same shape and tokenizer) into ``out_dir`` unless it is already there; return ``out_dir``.

    The model is built in a sibling temporary directory and renamed into place, so a crash never leaves a
    half-written model behind that later looks complete.
    """
    if is_complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_model(staging, vocab_size, seed)
        for path in [staging, *staging.iterdir()]:  # mkdtemp and safetensors create owner-only files
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write_model(directory: Path, vocab_size: int, seed: int = SEED) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    tokenizer = _train_tokenizer(vocab_size)
    silenced = _unprintable_ids(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=INITIALIZER_RANGE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A zero output row gives a logit of 0, far below the peaked maximum: random text never emits these.
        model.lm_head.weight[silenced] = 0.0
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if vocab_size != VOCAB_SIZE:
        padded = sum(token.startswith("<|pad_") for token in tokenizer.get_added_vocab())
        report = {"vocab_size": len(tokenizer), "trained": len(tokenizer) - padded, "padded": padded,
                  "corpus": f"the demo corpus and {_PSEUDO_WORDS} seeded pseudo-words"}  # fmt: skip
        (directory / BUILD_REPORT).write_text(json.dumps(report, indent=2))


def _unprintable_ids(tokenizer: Any) -> list[int]:
    """Special tokens, and byte tokens that decode to control characters or half a UTF-8 character: random
    weights that never emit them produce readable (if meaningless) text."""
    silenced = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id in tokenizer.all_special_ids or any(_unprintable(c) for c in text):
            silenced.append(token_id)
    return silenced


def _unprintable(char: str) -> bool:
    return char == "\ufffd" or (unicodedata.category(char).startswith("C") and char != "\n")


def _pseudo_words(count: int) -> list[str]:
    """``count`` seeded words of one to four consonant-vowel syllables, in chunks of 1000 (the training corpus for
    a real-size vocabulary: enough distinct pairs that BPE learns tens of thousands of merges)."""
    import random

    rng = random.Random(SEED)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    words = [" " + "".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(count)]
    return ["".join(words[i : i + 1000]) for i in range(0, count, 1000)]


def _train_tokenizer(vocab_size: int = VOCAB_SIZE) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    extra = _pseudo_words(_PSEUDO_WORDS) if vocab_size > VOCAB_SIZE else []
    tokenizer.train_from_iterator([_CORPUS] * 20 + extra, trainer=trainer)
    missing = vocab_size - tokenizer.get_vocab_size()
    if missing > 0:  # training fell short: generated tokens make up the rest
        tokenizer.add_tokens([f"<|pad_{n}|>" for n in range(missing)])
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        padding_side="left",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.weights.demo_model", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the model into")
    parser.add_argument(
        "--vocab-size", type=int, default=VOCAB_SIZE, help=f"tokens in the vocabulary. Default {VOCAB_SIZE}"
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the random weights. Default {SEED}")
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    if is_complete(out_dir):
        print(f"demo model already complete in {out_dir}, nothing to do")
        return 0
    started = time.monotonic()
    build(out_dir, args.vocab_size, args.seed)
    size = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    print(f"built demo model in {out_dir} ({size / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
