"""``runtime.weights.demo_model``'s larger vocabularies: trained on pseudo-words, padded when training falls short."""

from __future__ import annotations

import pytest

from runtime.weights import demo_model

pytestmark = pytest.mark.unit


def test_a_larger_vocabulary_is_trained_to_its_size() -> None:
    tokenizer = demo_model._train_tokenizer(3000)
    assert len(tokenizer) == 3000
    assert not [token for token in tokenizer.get_added_vocab() if token.startswith("<|pad_")]


def test_a_vocabulary_training_cannot_reach_is_padded_with_generated_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_model, "_PSEUDO_WORDS", 1000)  # too few words for 6000 merges
    tokenizer = demo_model._train_tokenizer(6000)
    padded = [token for token in tokenizer.get_added_vocab() if token.startswith("<|pad_")]
    assert len(tokenizer) == 6000 and 0 < len(padded) < 6000
    # Padding tokens are whole tokens, not pieces of ordinary text.
    assert tokenizer.decode(tokenizer("the moon is pale")["input_ids"], skip_special_tokens=True) == "the moon is pale"


def test_the_default_vocabulary_is_unchanged() -> None:
    assert len(demo_model._train_tokenizer()) == demo_model.VOCAB_SIZE
