"""A LoRA adapter's dispatcher, against a real Redis and a fake runtime (``fakes``): its requests, queued under the
adapter's own name, go to its base's replicas as the base's batches, each row naming the adapter; what the replica
says it holds is learned; an adapter the replica cannot use fails its requests with 400, not retried."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

import wire
from gateway.dispatch.loop import Dispatcher
from gateway.metrics import Metrics
from gateway.queue.stream import QueuedRequest, RequestQueue
from gateway.relay.messages import Failed, Finished
from gateway.relay.transport import ReplySender
from gateway.replicas.client import HttpxRuntimeClient
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.settings import Adapter
from tests.gateway.dispatch.fakes import CHANNEL, MODEL, R1, R2, SETTINGS, Answer, Event, Runtime, ndjson

pytestmark = pytest.mark.integration

LORA = "support-bot"
SOURCE = "org/support-lora@v2"
ADAPTER_SETTINGS = dataclasses.replace(SETTINGS, name=LORA, adapter=Adapter(base=MODEL, source=SOURCE))


def finish_all(batch: wire.BatchRequest) -> list[Event]:
    usage = wire.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    return [wire.FinishEvent(id=r.id, text="ok", finish_reason="stop", usage=usage) for r in batch.requests]


def holding(*adapters: str) -> Answer:
    """Answers with every row finished, saying it holds ``adapters`` loaded once the batch was taken."""

    def answer(batch: wire.BatchRequest) -> httpx.Response:
        headers = {"content-type": wire.NDJSON, wire.ADAPTERS_HEADER: ",".join(adapters)}
        return httpx.Response(200, content=ndjson(finish_all(batch)), headers=headers)

    return answer


@dataclasses.dataclass
class AdapterRig:
    queue: RequestQueue
    endpoints: ReadyEndpoints
    runtime: Runtime
    dispatcher: Dispatcher
    metrics: Metrics

    async def enqueue(self, request_id: str) -> None:
        request = wire.GenerationRequest(id=request_id, prompt="hi")
        await self.queue.enqueue(LORA, QueuedRequest(request=request, reply_to=CHANNEL, accepted_at=time.time()))


@pytest.fixture
async def rig(redis: Redis) -> AsyncIterator[AdapterRig]:
    queue = RequestQueue(redis=redis, max_queue_per_model=100)
    await queue.prepare(LORA)
    runtime = Runtime(holding(LORA))
    client = httpx.AsyncClient(transport=httpx.MockTransport(runtime.handle))
    endpoints = ReadyEndpoints()
    endpoints.set(MODEL, [R1])  # the base's replica; the adapter has none of its own
    endpoints.alias(LORA, MODEL)
    metrics = Metrics()
    dispatcher = Dispatcher(
        settings=ADAPTER_SETTINGS,
        queue=queue,
        sender=ReplySender(redis),
        endpoints=endpoints,
        client=HttpxRuntimeClient(client),
        consumer="c1",
        metrics=metrics,
        max_attempts=2,
    )
    yield AdapterRig(queue, endpoints, runtime, dispatcher, metrics)
    await client.aclose()


async def test_an_adapters_requests_go_to_its_base_replica_as_the_base_batch_naming_the_adapter(
    rig: AdapterRig,
) -> None:
    await rig.enqueue("a")
    await rig.enqueue("b")
    await rig.dispatcher.step()
    await rig.dispatcher.drain(5)
    ((url, batch),) = rig.runtime.batches
    assert url == R1 and batch.model == MODEL  # the base's name: the runtime serves the base
    ref = wire.AdapterRef(name=LORA, source=SOURCE)
    assert [(r.id, r.adapter) for r in batch.requests] == [("a", ref), ("b", ref)]
    assert isinstance(await rig.queue.final_reply(LORA, "a"), Finished)  # settled under the adapter's own name
    assert rig.metrics.registry.get_sample_value("kaltstart_batches_total", {"model": LORA}) == 1
    assert rig.endpoints.adapters.holds(R1, LORA)  # learned from the answer's header
    assert dict(rig.endpoints.adapters.counts()) == {R1: 1}


async def test_a_base_models_batch_names_no_adapter(redis: Redis) -> None:
    queue = RequestQueue(redis=redis, max_queue_per_model=100)
    await queue.prepare(MODEL)
    runtime = Runtime(holding())
    async with httpx.AsyncClient(transport=httpx.MockTransport(runtime.handle)) as client:
        endpoints = ReadyEndpoints()
        endpoints.set(MODEL, [R1])
        dispatcher = Dispatcher(
            settings=SETTINGS, queue=queue, sender=ReplySender(redis), endpoints=endpoints,
            client=HttpxRuntimeClient(client), consumer="c1", metrics=Metrics(), max_attempts=2,
        )  # fmt: skip
        request = wire.GenerationRequest(id="a", prompt="hi")
        await queue.enqueue(MODEL, QueuedRequest(request=request, reply_to=CHANNEL, accepted_at=time.time()))
        await dispatcher.step()
        await dispatcher.drain(5)
    ((_, batch),) = runtime.batches
    assert batch.model == MODEL and batch.requests[0].adapter is None
    assert "adapter" not in batch.model_dump_json()


async def test_the_dispatcher_prefers_the_base_replica_that_said_it_holds_the_adapter(rig: AdapterRig) -> None:
    rig.endpoints.set(MODEL, [R1, R2])
    rig.endpoints.adapters.learn(R2, [LORA])
    rig.endpoints.adapters.learn(R1, ["other"])
    await rig.enqueue("a")
    await rig.dispatcher.step()
    await rig.dispatcher.drain(5)
    assert [url for url, _ in rig.runtime.batches] == [R2]


async def test_an_adapter_the_replica_cannot_use_fails_its_request_with_400_not_retried(rig: AdapterRig) -> None:
    def refused(batch: wire.BatchRequest) -> httpx.Response:
        events = [
            wire.ErrorEvent(id=r.id, code="adapter_invalid", message="no adapter_config.json") for r in batch.requests
        ]
        return httpx.Response(200, content=ndjson(events), headers={"content-type": wire.NDJSON})

    rig.runtime.answer = refused
    await rig.enqueue("a")
    await rig.dispatcher.step()
    await rig.dispatcher.drain(5)
    final = await rig.queue.final_reply(LORA, "a")
    assert isinstance(final, Failed) and (final.status, final.message) == (400, "no adapter_config.json")
    assert len(rig.runtime.batches) == 1
