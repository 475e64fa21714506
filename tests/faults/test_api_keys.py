"""API keys: a request without a valid key is refused with 401 before its body is read, never queued and never
scales anything; per-key models; the key file is re-read when it changes; operations endpoints stay open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from tests.faults.conftest import assert_nothing_left
from tests.harness import model, run_gateway
from tests.integration.conftest import assert_openai_error

pytestmark = pytest.mark.faults

KEY = "sk-test-0123456789"


async def test_requests_without_a_valid_key_start_nothing(redis_url: str, cache_dir: Path) -> None:
    echo = model("echo", "unused", engine="echo")
    async with run_gateway([echo], redis_url, cache_dir, api_keys=(KEY,)) as gw, httpx.AsyncClient() as client:
        body = {"model": "echo", "prompt": "hi", "max_tokens": 2}
        url = gw.url + "/v1/completions"
        for headers in ({}, {"authorization": "Bearer sk-wrong-0123456789"}, {"authorization": KEY}):
            response = await client.post(url, json=body, headers=headers)
            assert assert_openai_error(response, 401, "invalid_request_error")["code"] == "invalid_api_key"
        assert (await client.get(gw.url + "/v1/models")).status_code == 401
        assert gw.backend.replicas("echo").desired == 0  # nothing was scaled...
        await assert_nothing_left(redis_url, "echo")  # ...nor queued
        assert (await client.get(gw.url + "/healthz")).status_code == 200

        sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY)
        answer = await sdk.completions.create(model="echo", prompt="hello there", max_tokens=2)
        assert answer.choices[0].text == "hello there"
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-wrong-0123456789").models.list()


async def test_key_file_limits_models_and_is_reloaded(redis_url: str, cache_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("# team a may use echo only\nsk-team-a-000000 echo\n")
    models = [model("echo", "unused", engine="echo"), model("other", "unused", engine="echo")]
    async with (
        run_gateway(models, redis_url, cache_dir, api_keys_file=keys) as gw,
        httpx.AsyncClient() as client,
    ):

        def ask(key: str, name: str) -> httpx.Request:
            body = {"model": name, "prompt": "hi", "max_tokens": 2}
            return client.build_request(
                "POST", gw.url + "/v1/completions", json=body, headers={"authorization": f"Bearer {key}"}
            )

        assert (await client.send(ask("sk-team-a-000000", "echo"))).status_code == 200
        denied = await client.send(ask("sk-team-a-000000", "other"))
        assert assert_openai_error(denied, 404, "invalid_request_error")["code"] == "model_not_found"
        assert gw.backend.replicas("other").desired == 0
        listed = await client.get(gw.url + "/v1/models", headers={"authorization": "Bearer sk-team-a-000000"})
        assert [m["id"] for m in listed.json()["data"]] == ["echo"]
        assert (await client.send(ask("sk-team-b-000000", "other"))).status_code == 401

        keys.write_text("sk-team-b-000000\n")  # rotated: team a's key is gone, team b's may use every model
        async with asyncio.timeout(10):  # the file is looked at about once a second: ask until it was re-read
            while (await client.send(ask("sk-team-b-000000", "other"))).status_code != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert (await client.send(ask("sk-team-a-000000", "echo"))).status_code == 401


async def test_a_request_without_a_key_is_refused_before_its_body_is_read(redis_url: str, cache_dir: Path) -> None:
    echo = model("echo", "unused", engine="echo")
    async with run_gateway([echo], redis_url, cache_dir, api_keys=(KEY,), body_timeout_s=60) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            # Headers that announce 100 MB, and then nothing: reading the body would wait out the body deadline.
            writer.write(
                b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 100000000\r\n\r\n"
            )
            await writer.drain()
            async with asyncio.timeout(10):  # well before the body deadline
                head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
        assert head.split(b" ", 2)[1] == b"401"
        assert gw.backend.replicas("echo").desired == 0


async def test_a_model_is_shown_only_to_keys_that_may_use_it(redis_url: str, cache_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("sk-team-a-000000 echo\nsk-everything-0\n")
    models = [model("echo", "unused", engine="echo"), model("other", "unused", engine="echo")]
    async with (
        run_gateway(models, redis_url, cache_dir, api_keys_file=keys) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):

        async def card(key: str, name: str) -> httpx.Response:
            return await client.get(f"/v1/models/{name}", headers={"authorization": f"Bearer {key}"})

        shown = await card("sk-team-a-000000", "echo")
        assert shown.status_code == 200 and shown.json()["id"] == "echo" and shown.json()["object"] == "model"
        hidden = await card("sk-team-a-000000", "other")  # exists, but not for this key: as if it did not
        assert assert_openai_error(hidden, 404, "invalid_request_error")["code"] == "model_not_found"
        assert (await card("sk-everything-0", "other")).json()["id"] == "other"
        unknown = await card("sk-everything-0", "nonexistent")
        assert assert_openai_error(unknown, 404, "invalid_request_error")["code"] == "model_not_found"
        assert (await client.get("/v1/models/echo")).status_code == 401
        assert gw.backend.replicas("echo").desired == gw.backend.replicas("other").desired == 0
