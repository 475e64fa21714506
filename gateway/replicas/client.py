"""The dispatcher's HTTP client to runtime replicas: the small interface it needs (``RuntimeClient``), and two
implementations.

- ``AiohttpRuntimeClient``, the one the gateway runs: with httpx 0.28 the runtime client was the largest single
  cost of the gateway's request path, and aiohttp costs far less CPU per request (the figures: docs/architecture.md,
  "The hot path, profiled"). Its ``chunks`` are what each read of the socket brought, which is what a token flush
  (``gateway.relay.buffer``) is made of.
- ``HttpxRuntimeClient``, over any ``httpx.AsyncClient``: tests give it an ``httpx.MockTransport`` as a fake
  runtime.

Errors are converted here, where they enter: ``RuntimeUnreachable`` (the connection was refused: the request never
reached the replica) and ``RuntimeFailed`` (anything else that broke the exchange: a reset, a timeout, a
truncated answer).

Every call carries the token runtimes share with the gateway (``KALTSTART_RUNTIME_TOKEN``), when one is set:
``runtime_headers`` builds the headers once, here, for every call to a runtime (the local backend's claims and
probes use it too).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Protocol

import aiohttp
import httpx

__all__ = [
    "AiohttpRuntimeClient",
    "BatchAnswer",
    "HttpxRuntimeClient",
    "RuntimeClient",
    "RuntimeFailed",
    "RuntimeUnreachable",
    "runtime_headers",
]

_JSON = {"content-type": "application/json"}


def runtime_headers(token: str | None) -> dict[str, str]:
    """The headers of every call to a runtime: ``Authorization: Bearer <token>`` when there is a token."""
    return {"authorization": f"Bearer {token}"} if token else {}


class RuntimeFailed(Exception):
    """The exchange with a runtime replica broke after the connection was made (or timed out)."""


class RuntimeUnreachable(RuntimeFailed):
    """No connection to the runtime replica: what was to be sent never reached it."""


class BatchAnswer(Protocol):
    status: int
    #: The answer's headers (case-insensitive).
    headers: Mapping[str, str]

    async def text(self) -> str: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, one chunk per read; raises ``RuntimeFailed`` if the answer breaks off."""
        ...


class RuntimeClient(Protocol):
    async def get(self, url: str) -> bytes:
        """The body of ``GET url``, whatever its status."""
        ...

    async def post(self, url: str, body: str) -> None:
        """``POST url`` a JSON body; a status of 400 or more raises ``RuntimeFailed``."""
        ...

    def stream(self, url: str, body: str) -> contextlib.AbstractAsyncContextManager[BatchAnswer]:
        """``POST url`` a JSON body and read the answer as it streams."""
        ...

    async def aclose(self) -> None: ...


class _AiohttpAnswer:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def text(self) -> str:
        with _aiohttp_errors():
            return (await self._response.read()).decode(errors="replace")

    async def chunks(self) -> AsyncIterator[bytes]:
        with _aiohttp_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk


class AiohttpRuntimeClient:
    """``read_timeout_s``: the longest gap between two reads of an answer (a batch's first token can take a while
    on a big prompt; a request's own deadline is enforced by its ticket). At most ``max_connections`` at once.
    ``token``: the runtimes' shared token, sent on every call."""

    def __init__(
        self, *, connect_timeout_s: float, read_timeout_s: float, max_connections: int, token: str | None = None
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s)
        self._max_connections = max_connections
        self._headers = runtime_headers(token)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # made in the running loop, on first use
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, headers=self._headers)
        return self._session

    async def get(self, url: str) -> bytes:
        with _aiohttp_errors():
            async with self._open().get(url) as response:
                return await response.read()

    async def post(self, url: str, body: str) -> None:
        with _aiohttp_errors():
            async with self._open().post(url, data=body, headers=_JSON) as response:
                await response.read()
                response.raise_for_status()

    @contextlib.asynccontextmanager
    async def stream(self, url: str, body: str) -> AsyncIterator[BatchAnswer]:
        with _aiohttp_errors():
            response = await self._open().post(url, data=body, headers=_JSON)
        try:
            yield _AiohttpAnswer(response)
        finally:
            response.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


@contextlib.contextmanager
def _aiohttp_errors() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        raise RuntimeUnreachable(str(exc)) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RuntimeFailed(repr(exc)) from exc


class _HttpxAnswer:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def text(self) -> str:
        with _httpx_errors():
            return (await self._response.aread()).decode(errors="replace")

    async def chunks(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for chunk in self._response.aiter_bytes():
                yield chunk


class HttpxRuntimeClient:
    def __init__(self, client: httpx.AsyncClient, token: str | None = None) -> None:
        self._client = client
        client.headers.update(runtime_headers(token))

    async def get(self, url: str) -> bytes:
        with _httpx_errors():
            return (await self._client.get(url)).content

    async def post(self, url: str, body: str) -> None:
        with _httpx_errors():
            (await self._client.post(url, content=body, headers=_JSON)).raise_for_status()

    @contextlib.asynccontextmanager
    async def stream(self, url: str, body: str) -> AsyncIterator[BatchAnswer]:
        with _httpx_errors():
            request = self._client.build_request("POST", url, content=body, headers=_JSON)
            response = await self._client.send(request, stream=True)
        try:
            yield _HttpxAnswer(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except httpx.ConnectError as exc:
        raise RuntimeUnreachable(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise RuntimeFailed(repr(exc)) from exc
