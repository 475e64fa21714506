"""A LoRA adapter behind a real gateway on the local backend: a model of its own (listed with its base as
``parent``, grantable to an API key on its own), served by its base's runtime process, which its first request
scales up from zero. The echo engine ignores adapters; that outputs follow the adapter is the runtime's to show."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from gateway.settings import Adapter
from tests.harness import model, run_gateway
from tests.integration.conftest import assert_openai_error

pytestmark = pytest.mark.integration

BOT_KEY, ALL_KEY = "sk-bot-0000000000", "sk-everything-00"


async def test_an_adapter_is_listed_granted_and_served_by_its_base_scaled_from_zero(
    redis_url: str, cache_dir: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(f"{BOT_KEY} support-bot\n{ALL_KEY}\n")
    base = model("qwen", "unused", engine="echo")
    lora = dataclasses.replace(base.settings, name="support-bot", adapter=Adapter("qwen", "org/support-lora"))
    async with (
        run_gateway([base], redis_url, cache_dir, adapters=(lora,), api_keys_file=keys) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        everything, bot = {"authorization": f"Bearer {ALL_KEY}"}, {"authorization": f"Bearer {BOT_KEY}"}
        listed = (await client.get("/v1/models", headers=everything)).json()["data"]
        assert [(m["id"], m.get("parent")) for m in listed] == [("qwen", None), ("support-bot", "qwen")]
        assert (await client.get("/v1/models/support-bot", headers=everything)).json()["parent"] == "qwen"
        assert [m["id"] for m in (await client.get("/v1/models", headers=bot)).json()["data"]] == ["support-bot"]

        body = {"prompt": "hello there", "max_tokens": 2}
        denied = await client.post("/v1/completions", json=body | {"model": "qwen"}, headers=bot)
        assert assert_openai_error(denied, 404, "invalid_request_error")["code"] == "model_not_found"
        assert gw.backend.replicas("qwen").desired == 0

        answer = await client.post("/v1/completions", json=body | {"model": "support-bot"}, headers=bot)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "support-bot" and answer.json()["choices"][0]["text"] == "hello there"
        assert gw.backend.replicas("qwen").desired == 1
        # On the request path (not at the autoscaler's next pass): the adapter's name scales its base's replicas.
        assert gw.metric("kaltstart_scale_writes_total", model="support-bot", direction="up") == 1
        assert gw.metric("kaltstart_requests_total", model="support-bot", status="200") == 1
        assert gw.metric("kaltstart_batches_total", model="support-bot") == 1
