"""Several choices for one client request: ``n`` per prompt, and several prompts (``/v1/completions``).

Each choice is a request of its own on the queue (its own id, dispatched, batched and cancelled like any other; its
prompt stored once for all its choices, see ``gateway.queue.stream``), so continuous batching, redelivery and
cancellation need nothing new; the gateway merges their answers into one
response. Choices are in OpenAI's order: prompt by prompt, ``n`` per prompt, index ``prompt * n + choice``. Choice
``j`` of every prompt samples with the request's seed mixed with ``j`` (choice 0 with the seed itself), so a seeded
request is reproducible, and a single-choice request is the very request it was before choices existed. Usage
counts each prompt's tokens once and every choice's completion tokens, as OpenAI does.

A request may ask for at most its model's ``max-batch-size`` choices (a 400 beyond): more could never run together.
If one choice fails, the request fails and its other choices are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

import wire
from gateway.api.admission import Admission, Delta, Ticket
from gateway.api.auth import Grant
from gateway.api.schemas import MAX_SEED, ChatCompletionRequest, CompletionRequest
from gateway.errors import InvalidRequest, RequestError

__all__ = ["Choices", "choice_seed", "fan_out", "merged_usage", "submit"]

Item = tuple[int, Delta | wire.FinishEvent]
T = TypeVar("T")


def choice_seed(seed: int, choice: int) -> int:
    """The seed of choice ``choice`` of a prompt: the request's own for choice 0, a mix of both for the others."""
    if choice == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{choice}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) % (MAX_SEED + 1)


def fan_out(
    parsed: CompletionRequest | ChatCompletionRequest,
    request_id: str,
    default_max_tokens: int,
    *,
    client_id: str | None = None,
    traceparent: str | None = None,
) -> list[wire.GenerationRequest]:
    """One wire request per choice, in OpenAI's order. A seed is fixed here when the client gave none, so that a
    redelivered request samples exactly what it sampled before. Each carries the client's request id
    (``client_id``, ``gateway.api.requestids``) and the ``traceparent`` of its HTTP request's span."""
    seed = parsed.seed if parsed.seed is not None else secrets.randbelow(MAX_SEED)
    n = parsed.choices_per_prompt
    params = [parsed.sampling_params(default_max_tokens, choice_seed(seed, j)) for j in range(n)]
    inputs = parsed.inputs()
    total = len(inputs) * n
    return [
        wire.GenerationRequest(
            id=request_id if total == 1 else f"{request_id}-{i * n + j}",
            params=params[j],
            stream=parsed.streaming,
            request_id=client_id,
            traceparent=traceparent,
            **prompt,
        )
        for i, prompt in enumerate(inputs)
        for j in range(n)
    ]


async def submit(
    gateway: Admission, model: str, requests: Sequence[wire.GenerationRequest], n: int, grant: Grant | None = None
) -> Choices:
    """Queue every choice, all or none, charged to ``grant``'s key."""
    limit = gateway.catalog.get(model).max_batch_size
    if len(requests) > limit:
        param = "n" if len(requests) == n else "prompt"
        raise InvalidRequest(
            f"This request asks for {len(requests)} choices (prompts x n); model '{model}' serves at most {limit} "
            "per request (its max-batch-size).",
            param=param,
        )
    return Choices(await gateway.submit_all(model, requests, n, grant), n)


class Choices:
    """The tickets of one client request, one per choice, in OpenAI's order; ``n`` per prompt."""

    def __init__(self, tickets: list[Ticket], n: int) -> None:
        self.tickets = tickets
        self._n = n

    @property
    def id(self) -> str:
        return self.tickets[0].id

    async def dispatched(self) -> None:
        """Wait until every choice was taken by a replica (503 + Retry-After if one was not in time)."""
        await _all([ticket.dispatched() for ticket in self.tickets])

    async def results(self) -> list[wire.FinishEvent]:
        return await _all([ticket.result() for ticket in self.tickets])

    async def stream(self) -> AsyncIterator[Item]:
        """``(choice index, new text or its finished result)`` as they come, from every choice; the first error of
        any choice ends it."""
        if len(self.tickets) == 1:
            async for only in self.tickets[0].stream():
                yield 0, only
            return
        queue: asyncio.Queue[Item | RequestError] = asyncio.Queue()
        pumps = [asyncio.create_task(_pump(index, t, queue)) for index, t in enumerate(self.tickets)]
        try:
            finished = 0
            while finished < len(pumps):
                got = await queue.get()
                if isinstance(got, RequestError):
                    raise got
                finished += isinstance(got[1], wire.FinishEvent)
                yield got
        finally:
            for pump in pumps:
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pumps, return_exceptions=True)

    def usage(self, results: Sequence[wire.FinishEvent]) -> wire.Usage:
        return merged_usage(results, self._n)

    def waited_ms(self) -> tuple[float | None, float | None]:
        """How long the request waited in the queue, and of that for a cold start (ms): its slowest choice's, once
        every choice was dispatched; (None, None) before."""
        queue = [t.queue_ms for t in self.tickets]
        cold = [t.cold_start_ms for t in self.tickets]
        if any(q is None for q in queue):
            return None, None
        return max(q for q in queue if q is not None), max(c or 0.0 for c in cold)

    async def close(self) -> None:
        for ticket in self.tickets:
            await ticket.close()


def merged_usage(results: Sequence[wire.FinishEvent], n: int) -> wire.Usage:
    """The usage of a request whose choices (``n`` per prompt, in order) ended with ``results``: each prompt's tokens
    once (its first choice's count), every choice's completion tokens."""
    prompt = sum(result.usage.prompt_tokens for result in results[::n])
    completion = sum(result.usage.completion_tokens for result in results)
    return wire.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def _all(work: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Every result, in order; the first failure is raised as it is, and the rest of the work cancelled."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and (failure := task.exception()) is not None:
                raise failure
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(index: int, ticket: Ticket, queue: asyncio.Queue[Item | RequestError]) -> None:
    try:
        async for item in ticket.stream():
            queue.put_nowait((index, item))
    except RequestError as exc:
        queue.put_nowait(exc)
