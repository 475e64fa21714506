"""The echo engine: the prompt's words back, with the same stop and streaming rules as the torch engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runtime.cancellation import Cancellation, cancelled_event
from runtime.engine.echo import EchoEngine
from runtime.engine.interface import BatchEvent
from tests.runtime.support import REPO_ROOT, errors, finishes, run_batch, streamed_text, tokens_of
from wire import ChatMessage, FunctionDefinition, GenerationRequest, ResponseFormat, SamplingParams, TokenEvent, Tool

pytestmark = pytest.mark.unit


def echo(request_id: str, prompt: str, stream: bool = False, **params: object) -> GenerationRequest:
    return GenerationRequest(id=request_id, prompt=prompt, stream=stream, params=SamplingParams.model_validate(params))


def test_echoes_words_up_to_max_tokens() -> None:
    engine = EchoEngine()
    done = finishes(run_batch(engine, [echo("a", "one two three four", max_tokens=2), echo("b", "one two")]))
    assert (done["a"].text, done["a"].finish_reason, done["a"].usage.completion_tokens) == ("one two", "length", 2)
    assert (done["b"].text, done["b"].finish_reason, done["b"].usage.completion_tokens) == ("one two", "stop", 3)
    assert done["b"].usage.prompt_tokens == 2


def test_streams_and_stops_like_the_torch_engine() -> None:
    request = echo("s", "alpha beta gamma delta", stream=True, stop=["gam"])
    events = run_batch(EchoEngine(), [request])
    assert streamed_text(events, "s") == finishes(events)["s"].text == "alpha beta "


def test_chat_messages_are_echoed() -> None:
    request = GenerationRequest(id="c", messages=(ChatMessage(role="user", content="hi there"),))
    assert finishes(run_batch(EchoEngine(), [request]))["c"].text == "hi there"


def test_tools_and_structured_output_are_refused() -> None:
    hi = (ChatMessage(role="user", content="hi"),)
    tool = Tool(function=FunctionDefinition(name="f"))
    json_answer = ResponseFormat(type="json_object")
    requests = [
        GenerationRequest(id="t", messages=hi, tools=(tool,)),
        GenerationRequest(id="j", messages=hi, response_format=json_answer),
    ]
    found = errors(run_batch(EchoEngine(), requests))
    assert {i: e.code for i, e in found.items()} == {"t": "invalid_request", "j": "invalid_request"}


def test_context_limit_applies() -> None:
    events = run_batch(
        EchoEngine(max_context_tokens=10), [echo("x", "a b c", max_tokens=8), echo("y", "a", max_tokens=9)]
    )
    assert set(errors(events)) == {"x"}
    assert set(finishes(events)) == {"y"}


def test_echo_server_never_imports_torch() -> None:
    code = (
        "import sys, runtime.server.app, runtime.engine.echo, runtime.weights.cache; sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=False).returncode == 0


def test_a_cancelled_request_stops_at_the_next_step_and_the_rest_go_on() -> None:
    words = " ".join(f"w{i}" for i in range(50))
    requests = [echo("a", words, stream=True, max_tokens=50), echo("b", words, stream=True, max_tokens=50)]
    cancellation = Cancellation(r.id for r in requests)
    cancellation.start()
    seen: list[BatchEvent] = []
    for event in EchoEngine().generate(requests, cancellation):
        seen.append(event)
        if isinstance(event, TokenEvent) and event.id == "a" and event.text == " w2":
            cancellation.cancel(["a"])
    own = [e for e in seen if e.id == "a"]
    assert own[-1] == cancelled_event("a")
    assert tokens_of(own, "a") == 3, "nothing after the step during which it was cancelled"
    assert finishes(seen)["b"].text == words


def test_a_request_cancelled_before_its_batch_generates_nothing() -> None:
    requests = [echo("a", "one two", stream=True), echo("b", "one two", stream=True)]
    cancellation = Cancellation(["a", "b"])
    cancellation.cancel(["a", "b"])
    assert list(EchoEngine().generate(requests, cancellation)) == [cancelled_event("a"), cancelled_event("b")]
