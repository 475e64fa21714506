"""Token ids into the text and bytes that log-probability entries carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.output.logprobs import Logprob, Vocabulary, token_bytes_table, token_text
from wire import TokenLogprob, TopLogprob

pytestmark = pytest.mark.unit


def test_token_text_escapes_partial_characters() -> None:
    assert token_text(b" caf\xc3\xa9") == " café"
    assert token_text(b"\xe2\x80") == "bytes:\\xe2\\x80"
    assert token_text(b"") == ""


def test_byte_level_tokens_add_up_to_the_text(demo_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    table = token_bytes_table(tokenizer, len(tokenizer) + 3)
    assert len(table) == len(tokenizer) + 3 and table[-1] == b""
    text = "Caf\u00e9 \u00fcber \U0001f600 \u2014 the \u201cquick\u201d fox\n42"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and table[ids[0]] == b"", "special tokens add no text"
    assert b"".join(table[i] for i in ids).decode() == text


def test_sentencepiece_pieces_and_byte_fallback() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<0xC3>": 1, "<0xA9>": 2, "\u2581": 3, "h": 4, "i": 5, "\u2581h": 6, "\u2581hi": 7}
    model = models.BPE(vocab, [("\u2581", "h"), ("\u2581h", "i")], unk_token="<unk>", byte_fallback=True)
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")  # type: ignore[no-untyped-call]
    table = token_bytes_table(tokenizer, len(vocab))
    ids = tokenizer("hi \u00e9", add_special_tokens=False)["input_ids"]
    assert [table[i] for i in ids] == [b" hi", b" ", b"\xc3", b"\xa9"]
    assert [token_text(table[i]) for i in ids] == [" hi", " ", "bytes:\\xc3", "bytes:\\xa9"]


def test_entries_carry_text_bytes_and_alternatives() -> None:
    words = {1: b"a", 2: b" b"}
    vocabulary = Vocabulary(words.__getitem__)
    assert vocabulary.entry(2, Logprob(-0.5, ((2, -0.5), (1, -1.0)))) == TokenLogprob(
        token=" b",
        bytes=(32, 98),
        logprob=-0.5,
        top_logprobs=(
            TopLogprob(token=" b", bytes=(32, 98), logprob=-0.5),
            TopLogprob(token="a", bytes=(97,), logprob=-1.0),
        ),
    )
    assert vocabulary.entries([1], [Logprob(None)]) == (TokenLogprob(token="a", bytes=(97,), logprob=None),)
