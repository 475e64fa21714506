"""Clients that misbehave at the HTTP level: too many or too large headers, headers or bodies trickled, idle
sockets, loosely typed fields. Each gets a clear 4xx (or a closed socket) and never holds a slot or a replica."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.harness import LocalGateway, model, run_gateway
from tests.integration.conftest import assert_openai_error

pytestmark = pytest.mark.faults

#: Short deadlines, so that each case ends quickly; the defaults are in docs/configuration.md.
FAST: dict[str, Any] = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "keep_alive_s": 1.0, "max_header_count": 50}

#: uvicorn's own idle keep-alive (``uvicorn.Config``'s ``timeout_keep_alive`` default).
UVICORN_KEEP_ALIVE_S = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default


@pytest.fixture
async def gw(redis_url: str, cache_dir: Path) -> AsyncIterator[LocalGateway]:
    async with run_gateway([model("echo", "unused", engine="echo")], redis_url, cache_dir, **FAST) as gateway:
        yield gateway


async def _raw(gw: LocalGateway, data: bytes, timeout_s: float = 10) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            return await reader.read()  # everything up to the server's close
    finally:
        writer.close()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_too_many_headers_get_431(gw: LocalGateway) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(5000))
    response = await _raw(gw, b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
    assert _status(response) == 431 and b"headers_too_large" in response


async def test_one_huge_header_gets_431(gw: LocalGateway) -> None:
    response = await _raw(gw, b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 2_000_000 + b"\r\n\r\n")
    assert _status(response) == 431


async def test_trickled_headers_and_silent_sockets_are_cut_off(gw: LocalGateway) -> None:
    assert _status(await _raw(gw, b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")) == 408  # never finished
    assert _status(await _raw(gw, b"")) == 408  # connected, said nothing


async def test_a_trickled_body_gets_408_and_starts_nothing(gw: LocalGateway) -> None:
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    response = await _raw(gw, head + b'{"model": "echo"')
    assert _status(response) == 408
    assert gw.backend.replicas("echo").desired == 0


async def test_an_idle_keep_alive_socket_is_closed(gw: LocalGateway) -> None:
    # keep_alive_s (1 s here) is shorter than uvicorn's own default (5 s): the socket must close well before that,
    # which it does only if the gateway's server config carries the setting.
    assert FAST["keep_alive_s"] < UVICORN_KEEP_ALIVE_S
    started = time.monotonic()
    response = await _raw(gw, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", timeout_s=UVICORN_KEEP_ALIVE_S - 2)
    assert _status(response) == 200
    assert time.monotonic() - started >= FAST["keep_alive_s"] * 0.9  # kept open while idle, not closed at once


async def test_fields_are_not_coerced(gw: LocalGateway) -> None:
    async with httpx.AsyncClient() as client:
        for field, value in (("stream", "yes"), ("max_tokens", "5"), ("max_tokens", 5.5), ("temperature", "0")):
            body = {"model": "echo", "prompt": "hi", field: value}
            response = await client.post(gw.url + "/v1/completions", json=body)
            assert assert_openai_error(response, 400, "invalid_request_error")["param"] == field
    assert gw.backend.replicas("echo").desired == 0


async def test_max_tokens_beyond_a_known_context_is_refused_before_any_scaling(redis_url: str, cache_dir: Path) -> None:
    echo = model("echo", "unused", engine="echo", args=("--max-context-tokens", "64"), idle_timeout="1s")
    async with run_gateway([echo], redis_url, cache_dir, scale_interval_s=0.2) as gw, httpx.AsyncClient() as client:
        url = gw.url + "/v1/completions"
        assert (await client.post(url, json={"model": "echo", "prompt": "hi", "max_tokens": 2})).status_code == 200
        await gw.wait_for(lambda: gw.backend.replicas("echo").desired == 0, timeout_s=30)  # back at zero...
        huge = await client.post(url, json={"model": "echo", "prompt": "hi", "max_tokens": 10**9})
        assert assert_openai_error(huge, 400, "invalid_request_error")["param"] == "max_tokens"
        assert gw.backend.replicas("echo").desired == 0  # ...and it stays there
