from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import LocalGateway, model, run_gateway


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One node-local cache for the whole session, as on a real node."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
async def warm_gateway(redis_server: str, demo_model_dir: Path, cache_dir: Path) -> AsyncIterator[LocalGateway]:
    """A gateway whose tiny model stays up for a whole test module (long idle timeout)."""
    tiny = model("tiny", demo_model_dir, idle_timeout="600s", max_batch_delay="50ms")
    async with run_gateway([tiny], redis_server, cache_dir) as gateway:
        yield gateway


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=120) as c:
        yield c


def completion(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0} | extra


def chat(content: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    return {"model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0} | extra


def sse_events(body: str) -> list[Any]:
    """Parse an SSE body into its JSON payloads, with the final ``[DONE]`` kept as a string."""
    events: list[Any] = []
    for block in body.strip().split("\n\n"):
        assert block.startswith("data: "), block
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["message"]
    body: dict[str, Any] = error
    return body
