"""The runtime's own guards, in-process: its API needs the token shared with the gateway, and a body over the limit
gets 413 before it is read whole; the probes stay open."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from runtime.engine.echo import EchoEngine
from runtime.errors import SettingsError
from runtime.server.app import create_app
from runtime.settings import RuntimeSettings
from wire import BATCH_PATH, CANCEL_PATH, CLAIM_PATH, HEALTH_PATH, POOL_PARK_PATH, POOL_UNLOAD_PATH, READY_PATH

pytestmark = [pytest.mark.unit, pytest.mark.security]

TOKEN = "runtime-token-0123456789"
ARGS = ["--engine", "echo", "--model-name", "echo-model", "--max-body-bytes", "4096"]
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def runtime() -> AsyncIterator[httpx.AsyncClient]:
    settings = RuntimeSettings.from_args(ARGS, {"KALTSTART_RUNTIME_TOKEN": TOKEN})
    app = create_app(settings, loader=EchoEngine)
    async with app.router.lifespan_context(app):
        await app.state.readiness.decided.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
            yield client


def batch(prompt: str = "hello") -> dict[str, object]:
    return {"model": "echo-model", "requests": [{"id": "r0", "prompt": prompt}]}


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": TOKEN}, {"x-token": TOKEN}],
    ids=["none", "wrong", "no-scheme", "other-header"],
)
async def test_the_api_needs_the_token(runtime: httpx.AsyncClient, headers: dict[str, str]) -> None:
    pool_move = {"model": "echo-model"}
    calls: tuple[tuple[str, object], ...] = (
        (BATCH_PATH, batch()),
        (CANCEL_PATH, {"ids": ["r0"]}),
        (CLAIM_PATH, {"args": []}),
        (POOL_PARK_PATH, pool_move),
        (POOL_UNLOAD_PATH, pool_move),
    )
    for path, body in calls:
        refused = await runtime.post(path, json=body, headers=headers)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in refused.text
    answer = await runtime.post(BATCH_PATH, json=batch(), headers=AUTH)
    assert answer.status_code == 200
    assert (await runtime.post(POOL_PARK_PATH, json=pool_move, headers=AUTH)).status_code == 404  # not a pool
    assert json.loads(answer.text.splitlines()[-1])["type"] == "finish"


async def test_the_probes_need_no_token(runtime: httpx.AsyncClient) -> None:
    """A kubelet's httpGet probe cannot carry a secret."""
    assert (await runtime.get(HEALTH_PATH)).status_code == 200
    assert (await runtime.get(READY_PATH)).status_code == 200


async def test_a_body_over_the_limit_gets_413(runtime: httpx.AsyncClient) -> None:
    big = json.dumps(batch("x" * 5000)).encode()
    declared = await runtime.post(BATCH_PATH, content=big, headers=AUTH | {"content-type": "application/json"})
    assert declared.status_code == 413

    async def trickle() -> AsyncIterator[bytes]:  # no Content-Length: found while reading
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    streamed = await runtime.post(CANCEL_PATH, content=trickle(), headers=AUTH)
    assert streamed.status_code == 413
    assert (await runtime.post(BATCH_PATH, json=batch("x" * 3000), headers=AUTH)).status_code == 200


def test_the_token_comes_from_the_environment_only_and_is_never_shown() -> None:
    settings = RuntimeSettings.from_args(ARGS, {"KALTSTART_RUNTIME_TOKEN": TOKEN})
    assert settings.token == TOKEN
    assert TOKEN not in repr(settings)
    with pytest.raises(SettingsError):
        RuntimeSettings.from_args([*ARGS, "--token", TOKEN], {})
    with pytest.raises(SettingsError, match="16 characters"):
        RuntimeSettings.from_args(ARGS, {"KALTSTART_RUNTIME_TOKEN": "short"})
    assert RuntimeSettings.from_args(ARGS, {}).token is None
