"""LoRA adapters on the demo model (issue #29): rows with different adapters, and rows with none, decode in one
batch and each generates what peft's merged model of its adapter generates alone; adapters load on first use while
other rows decode, are never evicted under running rows, and a bad one fails its own requests only."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from runtime.scheduling.budget import Budget
from runtime.scheduling.continuous import ContinuousScheduler
from runtime.settings import RuntimeSettings
from tests.runtime.lora_support import MadeAdapter, broken_copy
from tests.runtime.support import (
    WORDS,
    alone,
    errors,
    finishes,
    greedy,
    read_events,
    read_until,
    run_batch,
    streamed_text,
    tokens_of,
)
from wire import AdapterRef, BatchEvent, GenerationRequest

pytestmark = pytest.mark.unit

ROOMY = Budget(rows=16, tokens=16384)


@pytest.fixture
def make_engine(demo_model_dir: Path, demo_settings: RuntimeSettings, tmp_path: Path) -> Iterator[Any]:
    """Fresh demo-model engines (no adapter loaded yet), with settings changed as asked; closed at the end."""
    from runtime.torch_engine.engine import TorchEngine

    made: list[Any] = []

    def build(**changes: Any) -> Any:
        settings = dataclasses.replace(demo_settings, cache_dir=tmp_path / "cache", **changes)
        engine = TorchEngine(demo_model_dir, settings)
        engine.load()
        made.append(engine)
        return engine

    yield build
    for engine in made:
        if engine.adapters is not None:
            engine.adapters.close()


def with_adapter(request: GenerationRequest, adapter: AdapterRef | None) -> GenerationRequest:
    return request.model_copy(update={"adapter": adapter})


def mixed(adapters: dict[str, MadeAdapter], names: Sequence[str | None], max_tokens: int = 16) -> list[Any]:
    """One request per name (None: the base model), prompts of different lengths."""
    return [
        with_adapter(
            greedy(f"r{i}-{name}", prompt=" ".join(WORDS[: 2 + i * 3]), max_tokens=max_tokens),
            adapters[name].ref if name else None,
        )
        for i, name in enumerate(names)
    ]


def reference(request: GenerationRequest, base: Any, merged: dict[str, Any]) -> str:
    """What the request generates alone on its adapter's merged model (or the base model)."""
    engine = merged[request.adapter.name] if request.adapter else base
    return alone(engine, with_adapter(request, None)).text


async def run_continuously(engine: Any, *batches: Sequence[GenerationRequest]) -> list[BatchEvent]:
    scheduler = ContinuousScheduler(engine, ROOMY)
    try:
        streams = [scheduler.submit(batch).lines() for batch in batches]
        return [event for lines in streams for event in await read_events(lines)]
    finally:
        scheduler.close()


def assert_each_as_merged_alone(
    events: list[BatchEvent], requests: Sequence[GenerationRequest], base: Any, merged: dict[str, Any]
) -> None:
    done = finishes(events)
    assert not errors(events), errors(events)
    for request in requests:
        assert done[request.id].text == reference(request, base, merged), request.id


@pytest.mark.parametrize("scheduler", ["static", "continuous"])
async def test_each_adapter_in_a_mixed_batch_generates_what_its_merged_model_does_alone(
    make_engine: Any, lora_adapters: dict[str, MadeAdapter], merged_engines: dict[str, Any], scheduler: str
) -> None:
    engine = make_engine(prefill_chunk_tokens=4)  # prompts are prefilled over several steps, joining ones too
    requests = mixed(lora_adapters, [None, "attn16", "all64", "mlp8", "mlp8", "attn16", None, "all64"])
    if scheduler == "static":
        events = run_batch(engine, requests)
    else:
        events = await run_continuously(engine, requests[:4], requests[4:])
    assert_each_as_merged_alone(events, requests, engine, merged_engines)
    base_texts = [reference(with_adapter(r, None), engine, merged_engines) for r in requests if r.adapter]
    adapted = [finishes(events)[r.id].text for r in requests if r.adapter]
    assert all(a != b for a, b in zip(adapted, base_texts, strict=True)), "every adapter must change the output"
    assert set(engine.loaded_adapters()) == {"attn16", "all64", "mlp8"}


async def test_an_adapter_loads_on_first_request_while_another_adapters_rows_decode(
    make_engine: Any, lora_adapters: dict[str, MadeAdapter], merged_engines: dict[str, Any]
) -> None:
    """The first batch's adapter loads with nothing running (the scheduler must wake when the load ends); the second
    batch's while the first batch's row decodes, which goes on undisturbed."""
    engine = make_engine()
    long = with_adapter(greedy("long", prompt="a queue", max_tokens=400, stream=True), lora_adapters["attn16"].ref)
    late = mixed(lora_adapters, ["all64", "mlp8", None])
    scheduler = ContinuousScheduler(engine, ROOMY)
    try:
        first = scheduler.submit([long]).lines()
        events = await read_until(first, lambda ev: tokens_of(ev, "long") >= 3)
        assert engine.loaded_adapters() == ("attn16",)
        late_events = await read_events(scheduler.submit(late).lines())
        assert "long" not in finishes(events), "the first row must still be decoding"
        assert scheduler.cancel(["long"]) == ("long",)
        events += await read_events(first)
    finally:
        scheduler.close()
    assert_each_as_merged_alone(late_events, late, engine, merged_engines)
    streamed = streamed_text(events, "long")
    assert len(streamed) > 0 and reference(long, engine, merged_engines).startswith(streamed)
    assert set(engine.loaded_adapters()) == {"attn16", "all64", "mlp8"}


@pytest.mark.parametrize("scheduler", ["static", "continuous"])
async def test_an_adapter_with_rows_in_flight_is_never_evicted(
    make_engine: Any, lora_adapters: dict[str, MadeAdapter], merged_engines: dict[str, Any], scheduler: str
) -> None:
    """Two slots, three adapters: the third waits until a slot's rows are done, then takes that slot, while the
    longest-running adapter (the least recently used one) keeps its own."""
    engine = make_engine(max_adapters=2)
    requests = mixed(lora_adapters, ["attn16", "all64", "mlp8", None, "all64"], max_tokens=12)
    requests[0] = requests[0].model_copy(update={"params": requests[0].params.model_copy(update={"max_tokens": 60})})
    events = run_batch(engine, requests) if scheduler == "static" else await run_continuously(engine, requests)
    assert_each_as_merged_alone(events, requests, engine, merged_engines)
    assert len(engine.loaded_adapters()) == 2


@pytest.mark.parametrize("scheduler", ["static", "continuous"])
async def test_a_bad_adapter_fails_its_own_requests_and_no_others(
    make_engine: Any,
    lora_adapters: dict[str, MadeAdapter],
    merged_engines: dict[str, Any],
    tmp_path: Path,
    scheduler: str,
) -> None:
    engine = make_engine(max_adapter_rank=32)
    good = mixed(lora_adapters, ["attn16", None, "mlp8"])
    bad = {
        "rank": broken_copy(lora_adapters["attn16"], tmp_path, "rank"),
        "missing": broken_copy(lora_adapters["mlp8"], tmp_path, "missing"),
        "shape": broken_copy(lora_adapters["attn16"], tmp_path, "shape"),
        "too-high": lora_adapters["all64"].ref,  # rank 64 > --max-adapter-rank 32
        "nowhere": AdapterRef(name="nowhere", source=str(tmp_path / "no-such-adapter")),
    }
    failing = [with_adapter(greedy(f"bad-{how}", prompt="a queue"), ref) for how, ref in bad.items()]
    requests = [good[0], *failing[:3], good[1], *failing[3:], good[2]]
    events = run_batch(engine, requests) if scheduler == "static" else await run_continuously(engine, requests)
    failed = errors(events)
    assert set(failed) == {r.id for r in failing}
    assert {e.code for e in failed.values()} == {"adapter_invalid"}
    assert "rank 16 in the weights, 32 in adapter_config.json" in failed["bad-rank"].message
    assert "no adapter_model.safetensors" in failed["bad-missing"].message
    assert "do not fit the base's" in failed["bad-shape"].message
    assert "above this runtime's --max-adapter-rank 32" in failed["bad-too-high"].message
    assert "cannot fetch its files" in failed["bad-nowhere"].message
    done = finishes(events)
    for request in good:
        assert done[request.id].text == reference(request, engine, merged_engines)
    assert set(engine.loaded_adapters()) == {"attn16", "mlp8"}


def test_a_runtime_without_adapter_slots_refuses_adapter_requests(
    make_engine: Any, lora_adapters: dict[str, MadeAdapter]
) -> None:
    engine = make_engine(max_adapters=0)
    requests = mixed(lora_adapters, ["attn16", None])
    events = run_batch(engine, requests)
    assert errors(events)[requests[0].id].code == "adapter_invalid"
    assert requests[1].id in finishes(events)
