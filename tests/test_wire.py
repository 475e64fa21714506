"""The wire format is written down once (wire/) and published as docs/wire-format.schema.json; both sides use
the same models. These checks keep the published schema and the models in step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import wire

pytestmark = pytest.mark.unit

SCHEMA = Path(__file__).parent.parent / "docs" / "wire-format.schema.json"


def test_published_schema_matches_the_models() -> None:
    assert json.loads(SCHEMA.read_text()) == json.loads(json.dumps(wire.json_schema())), (
        "regenerate with: python -m wire > docs/wire-format.schema.json"
    )


def test_request_needs_exactly_one_of_prompt_and_messages() -> None:
    with pytest.raises(ValidationError):
        wire.GenerationRequest(id="a")
    with pytest.raises(ValidationError):
        wire.GenerationRequest(id="a", prompt="x", messages=(wire.ChatMessage(role="user", content="y"),))
    with pytest.raises(ValidationError):
        wire.GenerationRequest(id="a", messages=())


def test_batch_ids_are_unique() -> None:
    one = wire.GenerationRequest(id="a", prompt="x")
    with pytest.raises(ValidationError):
        wire.BatchRequest(model="m", requests=(one, one))


def test_events_round_trip_through_ndjson() -> None:
    usage = wire.Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    events = [
        wire.TokenEvent(id="a", text="he"),
        wire.FinishEvent(id="a", text="hello", finish_reason="stop", usage=usage),
        wire.ErrorEvent(id="b", code="invalid_request", message="prompt too long"),
        wire.ErrorEvent(id="c", code="cancelled", message="the request was cancelled"),
    ]
    lines = [e.model_dump_json() for e in events]
    assert [wire.BatchEventAdapter.validate_json(line) for line in lines] == events


def test_cancel_request_bounds() -> None:
    assert wire.CancelRequest.model_validate_json('{"ids": ["a", "b"]}').ids == ("a", "b")
    wire.CancelRequest(ids=tuple(f"r{i}" for i in range(wire.MAX_CANCEL_IDS)))
    for bad in ((), ("",), ("x" * (wire.MAX_REQUEST_ID_LENGTH + 1),), tuple(map(str, range(wire.MAX_CANCEL_IDS + 1)))):
        with pytest.raises(ValidationError):
            wire.CancelRequest(ids=bad)


def test_cancel_response_round_trips() -> None:
    response = wire.CancelResponse(cancelled=("a",))
    assert wire.CancelResponse.model_validate_json(response.model_dump_json()) == response
    assert json.loads(wire.CancelResponse(cancelled=()).model_dump_json()) == {"cancelled": []}


def test_ready_body_of_a_replica_without_a_scheduler_report_still_parses() -> None:
    before = '{"status": "ready", "model": "m", "max_batch_size": 8, "context_length": 512}'
    old = wire.ReadyBody.model_validate_json(before)
    assert (old.scheduler, old.max_batch_tokens, old.free_rows) == ("static", 0, 0)
    new = wire.ReadyBody(
        model="m", max_batch_size=8, context_length=512, scheduler="continuous", max_batch_tokens=16384, free_rows=5
    )
    assert wire.ReadyBody.model_validate_json(new.model_dump_json()) == new
    with pytest.raises(ValidationError):
        wire.ReadyBody(model="m", max_batch_size=8, context_length=512, scheduler="dynamic")
    assert wire.FREE_ROWS_HEADER == "x-kaltstart-free-rows"


def test_ready_body_startup_timings_are_optional_and_round_trip() -> None:
    old = wire.ReadyBody.model_validate_json(
        '{"status": "ready", "model": "m", "max_batch_size": 8, "context_length": 1}'
    )
    assert old.startup is None
    timings = wire.StartupTimings(process_s=0.4, cache_s=0.0, imports_s=2.9, load_s=0.1, warmup_s=0.1, total_s=3.5)
    new = wire.ReadyBody(model="m", max_batch_size=8, context_length=512, startup=timings)
    assert wire.ReadyBody.model_validate_json(new.model_dump_json()) == new
    unknown = wire.StartupTimings.model_validate_json(
        '{"cache_s": 0, "imports_s": 0, "load_s": 0, "warmup_s": 0, "total_s": 0}'
    )
    assert unknown.process_s is None
    with pytest.raises(ValidationError):
        wire.StartupTimings(cache_s=-1.0, imports_s=0, load_s=0, warmup_s=0, total_s=0)


def test_exactly_one_prompt_kind_and_echo_only_for_plain_prompts() -> None:
    wire.GenerationRequest(id="a", prompt_token_ids=(1, 2), echo=True)
    chat = (wire.ChatMessage(role="user", content="y"),)
    for bad in (
        {"prompt": "x", "prompt_token_ids": (1,)},
        {"prompt_token_ids": ()},
        {"prompt_token_ids": (-1,)},
        {"messages": chat, "echo": True},
    ):
        with pytest.raises(ValidationError):
            wire.GenerationRequest(id="a", **bad)


def test_null_content_only_with_tool_calls() -> None:
    call = wire.ToolCall(id="c", function=wire.FunctionCall(name="f", arguments="{}"))
    wire.ChatMessage(role="assistant", content=None, tool_calls=(call,))
    with pytest.raises(ValidationError):
        wire.ChatMessage(role="assistant", content=None)
    with pytest.raises(ValidationError):
        wire.ChatMessage(role="user", content="x", tool_calls=(call,))


def test_sampling_parameter_bounds() -> None:
    params = wire.SamplingParams.model_validate_json('{"logit_bias": {"7": -100, "9": 100}, "logprobs": 20}')
    assert params.logit_bias == {7: -100.0, 9: 100.0}
    for bad in (
        {"logprobs": wire.MAX_LOGPROBS + 1},
        {"presence_penalty": 2.1},
        {"frequency_penalty": -2.1},
        {"logit_bias": {1: 100.5}},
        {"logit_bias": {-1: 1.0}},
        {"logit_bias": {i: 1.0 for i in range(wire.MAX_LOGIT_BIAS + 1)}},
        {"stop": ("x" * (wire.MAX_STOP_LENGTH + 1),)},  # the runtime scans each one's prefixes on every step
    ):
        with pytest.raises(ValidationError):
            wire.SamplingParams(**bad)


def test_a_request_without_new_fields_reads_as_it_did_before_they_existed() -> None:
    """A peer that predates logprobs, penalties, bias, echo, token prompts and tool turns forbids unknown fields:
    what does not use them must not mention them."""
    request = wire.GenerationRequest(
        id="a", messages=(wire.ChatMessage(role="user", content="hi"),), params=wire.SamplingParams(seed=1)
    )
    assert json.loads(request.model_dump_json()) == {
        "id": "a",
        "prompt": None,
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "stop": [], "seed": 1},
        "stream": False,
    }
    usage = wire.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    finish = wire.FinishEvent(id="a", text="x", finish_reason="stop", usage=usage)
    for old in (finish, wire.TokenEvent(id="a", text="x")):
        assert "logprobs" not in old.model_dump_json() and "tool_calls" not in old.model_dump_json()
    used = request.model_copy(update={"params": wire.SamplingParams(seed=1, logprobs=0)})
    assert json.loads(used.model_dump_json())["params"]["logprobs"] == 0
    assert wire.GenerationRequest.model_validate_json(used.model_dump_json()) == used


def test_logprob_entries_round_trip() -> None:
    top = (wire.TopLogprob(token="a", bytes=(97,), logprob=-0.1),)
    entries = (
        wire.TokenLogprob(token="x", bytes=(120,), logprob=None),
        wire.TokenLogprob(token="a", bytes=(97,), logprob=-0.1, top_logprobs=top),
    )
    usage = wire.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    finish = wire.FinishEvent(id="a", text="xa", finish_reason="length", usage=usage, logprobs=entries)
    token = wire.TokenEvent(id="a", text="xa", logprobs=entries)
    for event in (finish, token):
        assert wire.BatchEventAdapter.validate_json(event.model_dump_json()) == event


HI = (wire.ChatMessage(role="user", content="hi"),)
WEATHER = wire.Tool(function=wire.FunctionDefinition(name="weather", parameters={"type": "object"}))


def test_tools_and_structured_output_round_trip() -> None:
    request = wire.GenerationRequest(
        id="a",
        messages=HI,
        tools=(WEATHER,),
        tool_choice=wire.ForcedTool(name="weather"),
        parallel_tool_calls=False,
        response_format=wire.ResponseFormat(type="json_schema", json_schema={"type": "object"}),
    )
    assert wire.GenerationRequest.model_validate_json(request.model_dump_json()) == request
    assert request.calls_tools and not request.model_copy(update={"tool_choice": "none"}).calls_tools
    call = wire.ToolCall(id="call_1", function=wire.FunctionCall(name="weather", arguments="{}"))
    usage = wire.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    events = [
        wire.TokenEvent(id="a", text="", tool_calls=(call,)),
        wire.FinishEvent(id="a", text="", finish_reason="tool_calls", usage=usage, tool_calls=(call,)),
    ]
    assert [wire.BatchEventAdapter.validate_json(e.model_dump_json()) for e in events] == events


@pytest.mark.parametrize(
    "fields",
    [
        {"tool_choice": "required"},
        {"tools": (WEATHER,), "tool_choice": wire.ForcedTool(name="clock")},
        {"tools": (WEATHER, WEATHER)},
        {"response_format": {"type": "json_schema"}},
        {"response_format": {"type": "json_object", "json_schema": {"type": "object"}}},
        {"tools": ({"function": {"name": "has space"}},)},
    ],
)
def test_tool_choice_and_formats_that_cannot_be_met_are_invalid(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        wire.GenerationRequest(id="a", messages=HI, **fields)


def test_tools_and_formats_are_for_chat_only() -> None:
    with pytest.raises(ValidationError, match="chat messages only"):
        wire.GenerationRequest(id="a", prompt="hi", tools=(WEATHER,))


def test_a_ready_report_names_its_aliases_only_when_it_has_some() -> None:
    """``models`` came later: a replica serving one name answers exactly as before, so gateways that predate the
    field (their models forbid unknown fields) still read its report."""
    one = wire.ReadyBody(model="a", max_batch_size=1, context_length=8)
    assert "models" not in json.loads(one.model_dump_json())
    assert one.serves("a") and not one.serves("b")
    two = one.model_copy(update={"models": ("a", "b")})
    assert json.loads(two.model_dump_json())["models"] == ["a", "b"]
    assert two.serves("b")


def test_a_ready_report_carries_a_pool_only_when_the_replica_is_one() -> None:
    """``pool`` came later: a replica that is no pool answers exactly as before."""
    one = wire.ReadyBody(model="a", max_batch_size=1, context_length=8)
    assert "pool" not in json.loads(one.model_dump_json())
    models = {
        "a": wire.PoolModel(state="active", weight_bytes=10, open_requests=1, loads=1),
        "b": wire.PoolModel(state="parked", weight_bytes=10, parks=1),
    }
    report = wire.PoolReport(
        device_bytes=10, device_budget_bytes=15, host_bytes=10, host_budget_bytes=20, models=models
    )
    pooled = one.model_copy(update={"models": ("a", "b"), "pool": report})
    assert wire.ReadyBody.model_validate_json(pooled.model_dump_json()) == pooled
    with pytest.raises(ValidationError):
        wire.PoolModel.model_validate({"state": "asleep", "weight_bytes": 1})


def test_a_pool_models_seconds_per_move_are_sent_only_once_it_moved() -> None:
    """The seconds came after the counts: at 0 they are left out, so a gateway that predates them reads the report."""
    unmoved = json.loads(wire.PoolModel(state="absent", weight_bytes=10).model_dump_json())
    assert set(unmoved) == {"state", "weight_bytes", "open_requests", "loads", "wakes", "parks", "unloads"}
    moved = wire.PoolModel(state="active", weight_bytes=10, loads=1, load_s=0.25)
    assert json.loads(moved.model_dump_json())["load_s"] == 0.25
    assert wire.PoolModel.model_validate_json(moved.model_dump_json()) == moved


def test_a_pool_replicas_residency_travels_in_batch_answer_headers() -> None:
    models = {
        "a": wire.PoolModel(state="active", weight_bytes=10),
        "b": wire.PoolModel(state="parked", weight_bytes=10),
        "c": wire.PoolModel(state="absent", weight_bytes=10),
    }
    report = wire.PoolReport(
        device_bytes=10, device_budget_bytes=15, host_bytes=10, host_budget_bytes=20, models=models
    )
    residency = wire.Residency.of(report)
    assert residency == wire.Residency(active=("a",), parked=("b",), free_device_bytes=5)
    assert [residency.state(m) for m in ("a", "b", "c", "z")] == ["active", "parked", "absent", "absent"]
    headers = residency.headers()
    assert wire.Residency.from_headers(headers) == residency
    assert wire.Residency.from_headers({wire.FREE_ROWS_HEADER: "3"}) is None  # not a pool
    too_many = ",".join(f"m{i}" for i in range(wire.MAX_ANNOUNCED_MODELS + 1))
    for bad in ({wire.POOL_FREE_BYTES_HEADER: "many"}, {wire.POOL_ACTIVE_HEADER: too_many}):
        assert wire.Residency.from_headers(headers | bad) is None  # unreadable: the gateway keeps what it knew


def test_a_request_names_its_adapter_only_when_it_has_one() -> None:
    """``adapter`` came later: a request for the base model is sent exactly as before, so a runtime that predates
    the field still reads it; one with an adapter round-trips, its source bounded."""
    plain = wire.GenerationRequest(id="a", prompt="hi")
    assert "adapter" not in json.loads(plain.model_dump_json())
    ref = wire.AdapterRef(name="support-bot", source="org/support-lora@v2")
    tuned = plain.model_copy(update={"id": "b", "adapter": ref})
    assert json.loads(tuned.model_dump_json())["adapter"] == {"name": "support-bot", "source": "org/support-lora@v2"}
    batch = wire.BatchRequest(model="qwen", requests=(plain, tuned))
    assert wire.BatchRequest.model_validate_json(batch.model_dump_json()) == batch
    for bad in ({"name": "x", "source": ""}, {"name": "x", "source": "s" * 1025}, {"name": "", "source": "s"}):
        with pytest.raises(ValidationError):
            wire.AdapterRef.model_validate(bad)


def test_a_ready_report_lists_its_loaded_adapters_only_when_it_has_some() -> None:
    one = wire.ReadyBody(model="a", max_batch_size=1, context_length=8)
    assert "adapters" not in json.loads(one.model_dump_json())
    loaded = one.model_copy(update={"adapters": ("support-bot", "legal")})
    assert wire.ReadyBody.model_validate_json(loaded.model_dump_json()) == loaded
    assert wire.ADAPTERS_HEADER == "x-kaltstart-adapters"


def test_an_unusable_adapter_ends_its_request_with_its_own_error_code() -> None:
    line = '{"type":"error","id":"x","code":"adapter_invalid","message":"adapter legal: no adapter_config.json"}'
    event = wire.BatchEventAdapter.validate_json(line)
    assert isinstance(event, wire.ErrorEvent) and event.code == "adapter_invalid"
