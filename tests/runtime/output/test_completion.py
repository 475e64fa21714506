"""Stop sequences, streaming deltas, log-probability entries, echo and finish reasons, fed one token at a time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from runtime.output.completion import Completion, EchoedPrompt, IncrementalText, holdback_start
from runtime.output.logprobs import Logprob, Vocabulary
from wire import FinishEvent, GenerationRequest, SamplingParams, TokenEvent, TokenLogprob, TopLogprob

pytestmark = pytest.mark.unit


def chars(ids: Sequence[int]) -> str:
    """A toy tokenizer: token id i is the character chr(i)."""
    return "".join(chr(i) for i in ids)


def request(*, stream: bool = True, max_tokens: int = 50, stop: tuple[str, ...] = ()) -> GenerationRequest:
    return GenerationRequest(id="r", prompt="p", params=SamplingParams(max_tokens=max_tokens, stop=stop), stream=stream)


def feed(completion: Completion, text: str) -> list[TokenEvent | FinishEvent]:
    events: list[TokenEvent | FinishEvent] = []
    for char in text:
        if completion.finished:
            break
        events.extend(completion.push(ord(char)))
    return events


def deltas(events: Sequence[TokenEvent | FinishEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TokenEvent)]


def finish(events: Sequence[TokenEvent | FinishEvent]) -> FinishEvent:
    assert isinstance(events[-1], FinishEvent)
    return events[-1]


def test_stop_sequence_is_cut_and_never_streamed() -> None:
    completion = Completion(request(stop=("STOP",)), prompt_tokens=3, decode=chars)
    events = feed(completion, "hello STOP and more")
    done = finish(events)
    assert done.text == "hello "
    assert done.finish_reason == "stop"
    assert "".join(deltas(events)) == "hello "
    assert done.usage.completion_tokens == len("hello STOP")
    assert done.usage.prompt_tokens == 3


def test_partial_stop_is_held_back_then_released() -> None:
    completion = Completion(request(stop=("STOP",)), prompt_tokens=1, decode=chars)
    events = feed(completion, "aST")
    assert deltas(events) == ["a"]
    events += feed(completion, "Ub")
    assert deltas(events) == ["a", "STU", "b"]


def test_earliest_of_several_stops_wins() -> None:
    completion = Completion(request(stop=("xyz", "y")), prompt_tokens=1, decode=chars)
    assert finish(feed(completion, "abxyz")).text == "abx"


def test_max_tokens_gives_length_and_flushes_the_held_back_tail() -> None:
    completion = Completion(request(max_tokens=4, stop=("cdX",)), prompt_tokens=1, decode=chars)
    events = feed(completion, "abcdef")
    done = finish(events)
    assert (done.text, done.finish_reason) == ("abcd", "length")
    assert "".join(deltas(events)) == "abcd"
    assert done.usage.completion_tokens == 4


def test_end_of_sequence_stops_and_counts_but_adds_no_text() -> None:
    completion = Completion(request(), prompt_tokens=2, decode=chars)
    events = feed(completion, "ab")
    events += completion.push(0, end_of_sequence=True)
    done = finish(events)
    assert (done.text, done.finish_reason, done.usage.completion_tokens) == ("ab", "stop", 3)
    assert completion.finished
    with pytest.raises(ValueError, match="already finished"):
        completion.push(1)


def test_non_streaming_request_emits_only_the_finish() -> None:
    completion = Completion(request(stream=False, max_tokens=3), prompt_tokens=1, decode=chars)
    events = feed(completion, "abcdef")
    assert events == [finish(events)]
    assert finish(events).text == "abc"


def test_holdback_start() -> None:
    assert holdback_start("hello", ()) == 5
    assert holdback_start("hello\ufffd", ()) == 5
    assert holdback_start("hello\ufffd\ufffd", ("x",)) == 5
    assert holdback_start("hel", ("lo",)) == 2
    assert holdback_start("hello", ("lo!", "o")) == 3
    assert holdback_start("ab", ("abc",)) == 0


def test_split_utf8_character_is_held_back_with_the_real_tokenizer(demo_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    text = "caf\u00e9 \u00fcber \U0001f600!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(token_ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(token_ids)))

    completion = Completion(request(max_tokens=len(ids)), prompt_tokens=1, decode=decode)
    events: list[TokenEvent | FinishEvent] = []
    for token_id in ids:
        events.extend(completion.push(token_id))
    assert not any("\ufffd" in delta for delta in deltas(events))
    assert "".join(deltas(events)) == finish(events).text == text
    assert len(deltas(events)) > 3


SENTENCEPIECE_PIECES = {1: "\u2581Hello", 2: "\u2581world", 3: "!", 4: "\u2581", 5: "again"}


def sentencepiece_like(ids: Sequence[int]) -> str:
    """Decodes like a SentencePiece tokenizer: a word-start marker becomes a space, but not at the very start."""
    return "".join(SENTENCEPIECE_PIECES[i] for i in ids).replace("\u2581", " ").removeprefix(" ")


@pytest.mark.parametrize("ids", [[1, 2, 3, 4, 5, 2], [4, 4, 1, 3, 3], [2]])
def test_incremental_text_matches_a_full_decode_for_sentencepiece(ids: list[int]) -> None:
    text = IncrementalText(sentencepiece_like)
    for end in range(1, len(ids) + 1):
        assert text.append(ids[end - 1]) == sentencepiece_like(ids[:end])


def test_incremental_text_matches_a_full_decode_with_the_real_tokenizer(demo_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)

    def decode(token_ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(token_ids), skip_special_tokens=True))

    sample = "Caf\u00e9s \u00fcber alles \U0001f600\U0001f680 na\u00efve \u4e2d\u6587 text, and\n\nnew lines. "
    ids = tokenizer(sample * 3, add_special_tokens=False)["input_ids"]
    text = IncrementalText(decode)
    for end in range(1, len(ids) + 1):
        so_far = text.append(ids[end - 1])
        assert so_far.rstrip("\ufffd") == decode(ids[:end]).rstrip("\ufffd")
    assert text.text == sample * 3


def test_incremental_text_recovers_when_earlier_text_changes() -> None:
    def merging(ids: Sequence[int]) -> str:
        """Token 9 rewrites the text before it, as a clean-up rule might."""
        text = "".join(chr(96 + i) for i in ids if i != 9)
        return text.upper() if 9 in ids else text

    text = IncrementalText(merging)
    assert [text.append(i) for i in (1, 2, 9, 3)] == ["a", "ab", "AB", "ABC"]


# Log-probability entries and echo.

CHARS = Vocabulary(lambda i: chr(i).encode())


def scored(completion: Completion, text: str) -> list[TokenEvent | FinishEvent]:
    """Feed ``text`` one character at a time, each with a made-up log-probability."""
    events: list[TokenEvent | FinishEvent] = []
    for char in text:
        if completion.finished:
            break
        events.extend(completion.push(ord(char), logprob=Logprob(-0.5, ((ord(char), -0.5),))))
    return events


def logprob_request(**fields: Any) -> GenerationRequest:
    stream, stop, echo = fields.pop("stream", True), fields.pop("stop", ()), fields.pop("echo", False)
    params = SamplingParams(max_tokens=fields.pop("max_tokens", 50), stop=stop, logprobs=1)
    return GenerationRequest(id="r", prompt="Hi", params=params, stream=stream, echo=echo)


def streamed_entries(events: Sequence[TokenEvent | FinishEvent]) -> list[str]:
    return [entry.token for e in events if isinstance(e, TokenEvent) for entry in e.logprobs]


@pytest.mark.parametrize("stream", [False, True])
def test_entries_line_up_with_the_tokens_of_the_text(stream: bool) -> None:
    completion = Completion(logprob_request(stream=stream, max_tokens=5), 1, chars, vocabulary=CHARS)
    done = finish(scored(completion, "hello world"))
    assert done.logprobs is not None
    assert [e.token for e in done.logprobs] == list("hello")
    assert done.logprobs[0] == TokenLogprob(
        token="h", bytes=(104,), logprob=-0.5, top_logprobs=(TopLogprob(token="h", bytes=(104,), logprob=-0.5),)
    )


def test_streamed_entries_never_come_before_their_text_and_add_up() -> None:
    completion = Completion(logprob_request(stop=("STOP",)), 1, chars, vocabulary=CHARS)
    events = scored(completion, "go ST then STOP more")
    sent = covered = ""
    for event in events[:-1]:
        assert isinstance(event, TokenEvent)
        sent += event.text
        covered += "".join(entry.token for entry in event.logprobs)
        assert sent.startswith(covered)
    done = finish(events)
    assert done.logprobs is not None
    assert streamed_entries(events) == [e.token for e in done.logprobs] == list("go ST then ")


def test_a_token_whose_text_lies_beyond_the_stop_is_not_an_entry() -> None:
    """``b`` then ``\\n`` is held back (it may start the stop); the next ``\\n`` is sent as text, but its own token
    waits, and the stop then cuts it off: no entry was sent for it."""
    completion = Completion(logprob_request(stop=("\nY",)), 1, chars, vocabulary=CHARS)
    events = scored(completion, "ab\n\nY")
    done = finish(events)
    assert done.text == "ab\n"
    assert done.logprobs is not None
    assert streamed_entries(events) == [e.token for e in done.logprobs] == ["a", "b", "\n"]


def test_an_end_of_sequence_token_is_not_an_entry() -> None:
    completion = Completion(logprob_request(stream=False), 1, chars, vocabulary=CHARS)
    scored(completion, "ok")
    done = finish(completion.push(0, end_of_sequence=True, logprob=Logprob(-0.1)))
    assert done.logprobs is not None and [e.token for e in done.logprobs] == ["o", "k"]
    assert done.usage.completion_tokens == 3


def test_no_entries_unless_asked_for() -> None:
    completion = Completion(request(max_tokens=2), 1, chars, vocabulary=CHARS)
    events = scored(completion, "ab")
    assert finish(events).logprobs is None
    assert streamed_entries(events) == []


@pytest.mark.parametrize("stream", [False, True])
def test_echo_puts_the_prompt_and_its_entries_first(stream: bool) -> None:
    prompt_entries = CHARS.entries([ord("H"), ord("i")], [Logprob(None), Logprob(-3.0)])
    echo = EchoedPrompt("Hi", prompt_entries)
    completion = Completion(
        logprob_request(stream=stream, echo=True, max_tokens=3), 2, chars, vocabulary=CHARS, echo=echo
    )
    events = scored(completion, "abc")
    done = finish(events)
    assert done.text == "Hiabc"
    assert done.logprobs is not None
    assert [(e.token, e.logprob) for e in done.logprobs[:3]] == [("H", None), ("i", -3.0), ("a", -0.5)]
    assert done.usage.prompt_tokens == 2 and done.usage.completion_tokens == 3
    if stream:
        first = events[0]
        assert isinstance(first, TokenEvent) and first.text.startswith("Hi")
        assert "".join(deltas(events)) == "Hiabc"
        assert streamed_entries(events) == list("Hiabc")
